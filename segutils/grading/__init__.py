"""Instructor autograding on nbgrader's data model: ``segutils grade ASSIGNMENT``.

nbgrader's own converters and gradebook do the grading; this subpackage adds what a real class
needs around them:

- :mod:`~segutils.grading.importer`: submissions from a learning platform (``<student>.ipynb`` or
  ``<student>.zip``) into nbgrader's ``submitted/<student>/<assignment>/`` layout, zips unpacked safely.
- :mod:`~segutils.grading.sandbox`: the bubblewrap command and resource limits a notebook runs under.
- :mod:`~segutils.grading.execute`: the notebook executor that runs *inside* the sandbox.
- :mod:`~segutils.grading.guard`: in-kernel integrity checks around every graded test cell.
- :mod:`~segutils.grading.preprocessors`: nbgrader preprocessors: cell-structure restoration
  (tamper protection), the sandboxed ``Execute`` replacement, hidden-test redaction in feedback.
- :mod:`~segutils.grading.runner`: one student's grading job (nbgrader ``Autograde`` + ``GenerateFeedback``).
- :mod:`~segutils.grading.pool` / :mod:`~segutils.grading.cluster`: local worker slots; Dask.
- :mod:`~segutils.grading.jobserver`: the preloaded process of a local slot that forks each student's job.
- :mod:`~segutils.grading.state`: what was graded, from which submission (re-runs skip it).
- :mod:`~segutils.grading.batch`: the whole command: import, schedule, persist, export, report.
- :mod:`~segutils.grading.report`: the summary HTML with plots.
- :mod:`~segutils.grading.post`: what follows a batch: ``--cell`` (:mod:`~segutils.grading.regrade`),
  ``--release-feedback`` (:mod:`~segutils.grading.feedback_timing`), ``--export`` (:mod:`~segutils.grading.export`).
- :mod:`~segutils.grading.course_identity`: the course's addresses (``course.toml``) filled into the releases.
- :mod:`~segutils.grading.cli`: ``add_grade_parser`` for the ``segutils`` command line.

Heavy dependencies (nbgrader, nbclient, dask, matplotlib) are imported where they are used.
"""
