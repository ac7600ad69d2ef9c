"""What ``segutils grade`` does after a batch: ``--cell`` regrades, ``--release-feedback``, ``--export``.

:func:`run_batch` is the batch as the command line runs it (:func:`~segutils.grading.batch.grade_assignment`, or
:func:`~segutils.grading.regrade.regrade_cell` with ``--cell``); :func:`after_batch` then writes the feedback
pages again under the release policy and exports the gradebook, and returns the lines to print.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

#: ``--release-feedback`` policies (see :mod:`segutils.grading.feedback_timing`, which imports nbgrader).
MODES = ("after-deadline", "now", "never")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The options of this module on the ``grade`` parser."""
    from segutils.grading.export import FORMATS  # no heavy import: the parser is built for every command

    parser.add_argument(
        "--cell",
        metavar="GRADE_ID",
        default=None,
        help="regrade only this test cell, for every student (after changing its test): other "
        "cells' grades, manual grades and comments are kept; lists whose totals changed",
    )
    parser.add_argument(
        "--release-feedback",
        choices=MODES,
        default=None,
        help="hidden tests' results in the feedback: 'now' (names and messages, never the source), "
        "'after-deadline' (visible tests only until the gradebook's due date), 'never'",
    )
    parser.add_argument(
        "--export",
        choices=FORMATS,
        action="append",
        default=[],
        help="also write the gradebook for a learning platform: reports/grades-FORMAT.csv (repeatable)",
    )


def run_batch(options: Any, args: argparse.Namespace) -> tuple[Any, list[str]]:
    """The batch's summary, and the lines a ``--cell`` regrade adds."""
    from segutils.grading.batch import grade_assignment

    if not getattr(args, "cell", None):
        return grade_assignment(options), []
    from segutils.grading.regrade import regrade_cell

    regraded = regrade_cell(options, args.cell)
    lines = [
        f"  regraded cell {regraded.cell} for {regraded.students} students; totals changed: {len(regraded.changed)}"
    ]
    lines += [f"    {student}: {old:g} -> {new:g}" for student, (old, new) in regraded.changed.items()]
    return regraded.batch, lines


def after_batch(options: Any, args: argparse.Namespace) -> list[str]:
    """Feedback under ``--release-feedback`` and the ``--export`` files; the lines to print.

    Raises:
        GradingError: the release policy cannot be applied (``after-deadline`` without a due date).
    """
    from segutils.grading.batch import GradingError, default_db_url, with_busy_timeout
    from segutils.grading.runner import load_course_config

    lines: list[str] = []
    if not (getattr(args, "release_feedback", None) or getattr(args, "export", None)):
        return lines
    course = Path(options.course).resolve()
    cfg = load_course_config(course / "nbgrader_config.py")
    cfg.CourseDirectory.root = str(course)
    db_url = with_busy_timeout(options.db_url or default_db_url(course, cfg))
    if args.release_feedback:
        from segutils.grading.feedback_timing import regenerate_feedback

        try:
            lines.append(
                "  "
                + regenerate_feedback(
                    course,
                    cfg,
                    db_url,
                    options.assignment,
                    args.release_feedback,
                    students=list(options.students) or None,
                )
            )
        except ValueError as error:
            raise GradingError(str(error)) from None
    for fmt in dict.fromkeys(args.export):
        from nbgrader.coursedir import CourseDirectory

        from segutils.grading.export import export

        path, notes = export(fmt, db_url, course, CourseDirectory(config=cfg).course_id)
        lines.append(f"  export ({fmt}): {path}")
        lines += [f"    {note}" for note in notes] if fmt == args.export[0] else []
    return lines
