"""``segutils grade ASSIGNMENT --cell GRADE_ID``: regrade one test cell for every student, after changing it.

1. the assignment is generated again from its source, so the gradebook holds the cell's new test (nbgrader
   puts the gradebook's copy of every test cell into each submission before running it);
2. every student's grades and comments are saved;
3. every submission is graded again, as ``segutils grade --force`` does (sandboxed, in parallel);
4. every grade but the automatic score of ``GRADE_ID`` is put back as it was: other cells' scores, manual
   scores and extra credit (of ``GRADE_ID`` too), and every comment written by hand; then nbgrader's late
   penalty is assigned again from the scores put back (same timestamps, same plugin: nbgrader caps a penalty
   at the score, so it depends on it);
5. the students whose total changed are listed, with the old and the new total.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

_GRADE_FIELDS = ("auto_score", "manual_score", "extra_credit", "needs_manual_grade")


@dataclass
class RegradeSummary:
    """What ``--cell`` changed."""

    cell: str
    students: int = 0
    changed: dict[str, tuple[float, float]] = field(default_factory=dict)  # student -> (old, new) total
    batch: Any = None


def test_cells(source_dir: Path) -> dict[str, str]:
    """``grade_id -> notebook name`` of the autograded test cells of the assignment's source notebooks."""
    import nbformat
    from nbgrader import utils

    cells = {}
    for path in sorted(Path(source_dir).glob("*.ipynb")):
        for cell in nbformat.read(path, as_version=4).cells:
            if cell.cell_type == "code" and utils.is_grade(cell) and not utils.is_solution(cell):
                cells[cell.metadata.nbgrader["grade_id"]] = path.stem
    return cells


def _snapshot(db_url: str, course_id: str, assignment: str) -> tuple[dict, dict, dict]:
    """Grades, comments and totals (after the late penalty) of every submission of ``assignment``."""
    from nbgrader.api import Gradebook

    grades, comments, totals = {}, {}, {}
    with Gradebook(db_url, course_id) as gb:
        for submission in gb.find_assignment(assignment).submissions:
            student = submission.student.id
            totals[student] = max(0.0, float(submission.score or 0.0) - float(submission.late_submission_penalty or 0))
            for notebook in submission.notebooks:
                for grade in notebook.grades:
                    grades[student, notebook.name, grade.name] = {f: getattr(grade, f) for f in _GRADE_FIELDS}
                for comment in notebook.comments:
                    comments[student, notebook.name, comment.name] = comment.manual_comment
    return grades, comments, totals


def _restore(db_url: str, course_id: str, assignment: str, cell: str, grades: dict, comments: dict) -> None:
    from nbgrader.api import Gradebook

    with Gradebook(db_url, course_id) as gb:
        for submission in gb.find_assignment(assignment).submissions:
            student = submission.student.id
            for notebook in submission.notebooks:
                for grade in notebook.grades:
                    saved = grades.get((student, notebook.name, grade.name))
                    if saved is None:
                        continue
                    keep = ("manual_score", "extra_credit") if grade.name == cell else _GRADE_FIELDS
                    for name in keep:
                        setattr(grade, name, saved[name])
                    if grade.name == cell and saved["manual_score"] is not None:
                        grade.needs_manual_grade = saved["needs_manual_grade"]
                for comment in notebook.comments:
                    key = (student, notebook.name, comment.name)
                    if key in comments:
                        comment.manual_comment = comments[key]
        gb.db.commit()


def _reassign_late_penalties(course: Path, cfg: Any, db_url: str, course_id: str, assignment: str) -> None:
    """nbgrader's late penalty again, from the scores put back (a plugin's penalty may depend on the score,
    and nbgrader caps it at the score: the batch computed it from the cells' scores before the restore)."""
    import nbformat
    from nbgrader.api import Gradebook
    from nbgrader.preprocessors import AssignLatePenalties

    from segutils.grading.batch import _course_modules
    from segutils.grading.runner import _importable

    with Gradebook(db_url, course_id) as gb:
        pairs = [(s.student.id, nb.name) for s in gb.find_assignment(assignment).submissions for nb in s.notebooks]
    with _importable(course, _course_modules(course)):
        for student, notebook in pairs:
            resources = {
                "nbgrader": {"notebook": notebook, "assignment": assignment, "student": student, "db_url": db_url}
            }
            AssignLatePenalties(config=cfg).preprocess(nbformat.v4.new_notebook(), resources)


def regrade_cell(options: Any, cell: str) -> RegradeSummary:
    """Regrade test cell ``cell`` of ``options.assignment`` for every student (see the module docstring).

    Args:
        options: the batch's :class:`~segutils.grading.batch.BatchOptions`.
        cell: the ``grade_id`` of an autograded test cell of the assignment's source.
    """
    from nbgrader.converters import GenerateAssignment
    from nbgrader.coursedir import CourseDirectory

    from segutils.grading.batch import (
        GradingError,
        _ensure_path,
        _export_csv,
        default_db_url,
        grade_assignment,
        with_busy_timeout,
    )
    from segutils.grading.runner import load_course_config

    course = Path(options.course).resolve()
    cfg = load_course_config(course / "nbgrader_config.py")
    cfg.CourseDirectory.root = str(course)
    layout = CourseDirectory(config=cfg)
    db_url = with_busy_timeout(options.db_url or default_db_url(course, cfg))
    source_dir = course / layout.source_directory / options.assignment
    cells = test_cells(source_dir)
    if cell not in cells:
        raise GradingError(
            f"--cell {cell}: not an autograded test cell of {source_dir} "
            f"(test cells: {', '.join(sorted(cells)) or 'none'})"
        )
    if options.students:
        raise GradingError("--cell regrades every student: leave out --student")
    _ensure_path()
    cfg.CourseDirectory.db_url = db_url
    coursedir = CourseDirectory(config=cfg)
    coursedir.assignment_id = options.assignment
    generate = GenerateAssignment(coursedir=coursedir, config=cfg)
    generate.force = True
    generate.start()

    grades, comments, before = _snapshot(db_url, layout.course_id, options.assignment)
    summary = RegradeSummary(cell=cell, students=len(before))
    summary.batch = grade_assignment(replace(options, force=True))
    _restore(db_url, layout.course_id, options.assignment, cell, grades, comments)
    _reassign_late_penalties(course, cfg, db_url, layout.course_id, options.assignment)
    _export_csv(course, db_url, layout)  # grades.csv again, with the grades put back
    _, _, after = _snapshot(db_url, layout.course_id, options.assignment)
    summary.changed = {s: (before.get(s, 0.0), after[s]) for s in sorted(after) if before.get(s) != after[s]}
    return summary
