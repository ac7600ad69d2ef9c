"""``segutils grade``: the command-line entry of the grading subpackage.

``segutils/cli.py`` registers it with ``add_grade_parser(commands)``; nothing heavy is imported
until the command runs.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from segutils.grading.runner import TWO_PROCESS_DEFAULT  # standard library imports only

_GIB = 1 << 30


def _checked(convert, expected_kind: str, expected_value: str, accept):
    """An argparse ``type``: ``convert(text)``, refused with a message unless ``accept(value)``."""

    def parse(text: str):
        try:
            value = convert(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected {expected_kind}, got {text!r}") from None
        if not accept(value):
            raise argparse.ArgumentTypeError(f"expected {expected_value}, got {value}")
        return value

    return parse


_positive_int = _checked(int, "a positive integer", "a positive integer", lambda v: v >= 1)
_nonnegative_int = _checked(int, "an integer >= 0", "an integer >= 0", lambda v: v >= 0)
_positive_float = _checked(float, "a number of seconds", "a positive number of seconds", lambda v: v > 0)


def add_grade_parser(commands: argparse._SubParsersAction) -> argparse.ArgumentParser:
    """Register the ``grade`` subcommand on ``commands`` (the ``segutils`` subparsers)."""
    parser = commands.add_parser(
        "grade",
        help="autograde every submission of an assignment (nbgrader, sandboxed, in parallel)",
        description="Autograde ASSIGNMENT with nbgrader: every student in parallel, each notebook in a bubblewrap "
        "sandbox; writes the gradebook, autograded/ and feedback/ per student, grades.csv and "
        "reports/ASSIGNMENT/report.html. Re-running skips unchanged submissions.",
    )
    parser.add_argument("assignment", help="assignment id (solutions/ASSIGNMENT/ in the course)")
    parser.add_argument("--course-dir", type=Path, default=Path("."), help="the nbgrader course directory (default: .)")
    parser.add_argument(
        "--submissions",
        type=Path,
        default=None,
        help="folder of submissions: nbgrader's STUDENT/ASSIGNMENT/ layout or STUDENT.ipynb / "
        "STUDENT.zip files (default: the course's submitted/)",
    )
    parser.add_argument(
        "--workers",
        type=_positive_int,
        default=None,
        help="students graded at once on this machine (default: one per GPU used, else one per CPU core)",
    )
    parser.add_argument(
        "--db",
        dest="db_url",
        default=None,
        help="gradebook SQLAlchemy URL (default: the course's, sqlite:///COURSE/gradebook.db); "
        "PostgreSQL when workers are on several machines",
    )
    parser.add_argument(
        "--scheduler", default=None, help="Dask scheduler address (tcp://host:8786): grade on its workers"
    )
    sandbox = parser.add_mutually_exclusive_group()
    sandbox.add_argument(
        "--sandbox",
        dest="sandbox",
        action="store_true",
        default=True,
        help="run each notebook in a bubblewrap sandbox (default)",
    )
    sandbox.add_argument(
        "--no-sandbox",
        dest="sandbox",
        action="store_false",
        help="run student code with your own rights (only for trusted notebooks)",
    )
    parser.add_argument(
        "--timeout",
        type=_positive_float,
        default=None,
        help="seconds one cell may run (default: the course's Execute.timeout)",
    )
    parser.add_argument(
        "--notebook-timeout", type=_positive_float, default=None, help="seconds a whole notebook may run (default 1800)"
    )
    parser.add_argument("--memory", type=_positive_float, default=None, help="GiB of memory per process (default 4)")
    parser.add_argument(
        "--tmp-size",
        type=_positive_int,
        default=None,
        metavar="MIB",
        help="MiB of the sandbox's writable /tmp, held in memory (default 1024)",
    )
    parser.add_argument(
        "--shm-size",
        type=_positive_int,
        default=None,
        metavar="MIB",
        help="MiB of the sandbox's /dev/shm, held in memory (default 64)",
    )
    parser.add_argument(
        "--max-cells",
        type=_positive_int,
        default=None,
        help="reject notebooks with more cells than this (default 2000)",
    )
    parser.add_argument(
        "--max-depth",
        type=_positive_int,
        default=None,
        help="reject notebooks whose JSON nests deeper than this (default 100)",
    )
    parser.add_argument(
        "--redact-hidden",
        action="store_true",
        help="keep the hidden tests' source out of the feedback (pass/fail and messages stay)",
    )
    mode = parser.add_mutually_exclusive_group()
    default = " (the default unless the course config's c.SandboxedExecute.two_process says otherwise)"
    mode.add_argument(
        "--two-process",
        dest="two_process",
        action="store_true",
        default=None,
        help="run the tests in a grader process of their own, never in the student's kernel"
        + (default if TWO_PROCESS_DEFAULT else " (see the grading appendix)"),
    )
    mode.add_argument(
        "--in-process",
        "--no-two-process",
        dest="two_process",
        action="store_false",
        help="run the tests in the student's kernel, watched by the in-process guard"
        + ("" if TWO_PROCESS_DEFAULT else default),
    )
    parser.add_argument("--force", action="store_true", help="regrade students whose submission did not change")
    parser.add_argument(
        "--student",
        action="append",
        default=[],
        metavar="ID",
        help="grade only this student (repeatable); the others' grades are not touched",
    )
    parser.add_argument(
        "--gpus",
        type=_nonnegative_int,
        default=None,
        help="GPUs to use, one per worker (default: all NVIDIA GPUs found; 0: CPU only)",
    )
    parser.add_argument("--no-progress", dest="progress", action="store_false", help="no progress bar")
    from segutils.grading.post import add_arguments

    add_arguments(parser)  # --cell, --release-feedback, --export
    parser.set_defaults(run=run_grade)
    return parser


def run_grade(args: argparse.Namespace) -> int:
    """Run ``segutils grade``; returns the exit code (0 ok, 1 some students failed, 2 could not start, 130 Ctrl-C)."""
    # jsonschema's optional rfc3987_syntax plug-in builds a grammar at import (seconds) and nbformat never
    # uses it: the command does without (see segutils.grading.sandbox.bootstrap_command).
    sys.modules.setdefault("rfc3987_syntax", None)  # type: ignore[assignment]
    from segutils.grading.batch import BatchOptions, GradingError
    from segutils.grading.report import printable

    limits: dict = {}
    if args.memory:
        limits["memory_bytes"] = int(args.memory * _GIB)
    if args.notebook_timeout:
        limits["notebook_timeout"] = float(args.notebook_timeout)
    if args.tmp_size:
        limits["tmp_bytes"] = args.tmp_size << 20
    if args.shm_size:
        limits["shm_bytes"] = args.shm_size << 20
    caps = {name: value for name, value in (("max_cells", args.max_cells), ("max_depth", args.max_depth)) if value}
    workers = args.workers
    if workers is None:
        import os

        from segutils.grading.sandbox import discover_gpus

        found = len(discover_gpus())
        gpus = found if args.gpus is None else min(args.gpus, found)
        workers = gpus if gpus else max(1, os.cpu_count() or 1)
    options = BatchOptions(
        assignment=args.assignment,
        course=args.course_dir,
        submissions=args.submissions,
        workers=workers,
        db_url=args.db_url,
        scheduler=args.scheduler,
        sandbox=args.sandbox,
        timeout=args.timeout,
        redact_hidden=args.redact_hidden,
        force=args.force,
        students=list(args.student),
        gpus=args.gpus,
        limits=limits,
        progress=args.progress,
        two_process=args.two_process,
        **caps,
    )
    from segutils.grading.post import after_batch, run_batch

    try:
        summary, regraded = run_batch(options, args)
        after = after_batch(options, args) if not summary.interrupted else []
    except GradingError as error:
        print(f"segutils grade: {error}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:  # before grading started (while importing or generating the assignment)
        print("interrupted before any student was graded", file=sys.stderr)
        return 130
    print(
        f"{args.assignment}: {len(summary.graded)} graded, {len(summary.rejected)} rejected, "
        f"{len(summary.failed)} failed, {len(summary.skipped)} unchanged (skipped) in {summary.seconds:.0f} s"
    )
    for problem in summary.problems:
        print(f"  import: {printable(problem)}")  # file names of the export: the students chose them
    if summary.csv:
        print(f"  grades: {summary.csv}")
    if summary.report:
        print(f"  report: {summary.report}")
    for line in regraded + after:
        print(printable(line))
    if summary.interrupted:
        print(
            "interrupted: every student graded so far is saved; run the same command again to continue", file=sys.stderr
        )
        return 130
    return 1 if summary.failed else 0


def main(argv: list[str] | None = None) -> int:
    """``python -m segutils.grading.cli grade ...`` (the same as ``segutils grade ...``)."""
    parser = argparse.ArgumentParser(prog="segutils")
    commands = parser.add_subparsers(dest="command", required=True)
    add_grade_parser(commands)
    args = parser.parse_args(argv)
    return args.run(args)


if __name__ == "__main__":
    sys.exit(main())
