"""nbgrader configuration of the course (nbgrader 0.9.6).

The course directory is the folder holding this file, so a copy of it with ``solutions/``
next to it is a complete course (the assignment tests grade in such temporary copies):

- ``solutions/<id>/<id>.ipynb``: instructor notebooks (solutions and hidden tests);
- ``assignments/<id>/<id>.ipynb``: the student releases, written by ``make assignments``;
- ``submitted/``, ``autograded/``, ``feedback/``, ``gradebook.db``: grading work areas, never committed.

nbgrader shells out to ``alembic`` when it creates the gradebook, so run it with the
environment's ``bin/`` first on ``PATH`` (the Makefile does).
"""

import os

c = get_config()  # noqa: F821 (injected by traitlets when it loads this file)

c.CourseDirectory.root = os.path.dirname(os.path.abspath(__file__))
c.CourseDirectory.source_directory = "solutions"
c.CourseDirectory.release_directory = "assignments"
# Data files next to a notebook (none yet) are released too; checkpoints and caches never.
c.CourseDirectory.ignore = [".ipynb_checkpoints", "*.pyc", "__pycache__", "feedback", ".pytest_cache"]

# Per cell: long enough for the longest training cell (a4 trains for at most ~90 s on a
# CPU), short enough that an infinite loop costs a student five minutes, not the queue.
c.Execute.timeout = 300

# A test cell scores 0 as soon as anything reaches stderr. Python and PyTorch warnings
# (printed as "file.py:12: UserWarning: ...") are not failures: drop those outputs before
# grading. Anything else on stderr still costs the cell its points.
c.IgnorePattern.enabled = True
c.IgnorePattern.pattern = r"(?m)^.*:\d+: \w*Warning: "

# A student who deletes a graded or read-only cell gets it back instead of losing it.
c.OverwriteCells.add_missing_cells = True

# Keep feedback readable when a student prints in a loop or recurses forever.
c.LimitOutput.max_lines = 200
c.LimitOutput.max_traceback = 60

# Releases must be reproducible: the stub students see in every solution cell.
c.ClearSolutions.code_stub = {"python": "# YOUR CODE HERE\nraise NotImplementedError()"}
c.ClearSolutions.enforce_metadata = True

# The course's addresses and name (course.toml, see segutils.course) fill the {{ repo_url }}-style tokens
# of the sources in the releases; first, so that the locked cells nbgrader stores are the filled ones.
from nbgrader.converters import GenerateAssignment  # noqa: E402

c.GenerateAssignment.preprocessors = [
    "segutils.grading.course_identity.FillCourseIdentity",
    *GenerateAssignment.class_traits()["preprocessors"].default(),
]
