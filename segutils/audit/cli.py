"""``segutils audit ASSIGNMENT``: the command line of :mod:`segutils.audit`."""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path


def _run(args: argparse.Namespace) -> int:
    from segutils.audit.run import audit_assignment

    functions = [f.strip() for f in args.functions.split(",") if f.strip()] if args.functions else None
    try:
        report = audit_assignment(
            args.assignment,
            solutions=Path(args.solutions),
            fixtures=args.fixtures,
            equivalents=args.equivalents,
            functions=functions,
            max_mutants=args.max_mutants,
            jobs=args.jobs,
            timeout=args.timeout,
            seed=args.seed,
            first_catch=args.first_catch,
        )
    except (FileNotFoundError, ValueError) as error:
        print(f"segutils audit: error: {error}", file=sys.stderr)
        return 2
    print(report.text())
    if args.json:
        Path(args.json).write_text(report.to_json(), encoding="utf-8")
        print(f"wrote {args.json}")
    return 0 if report.ok else 1


def add_audit_parser(commands: argparse._SubParsersAction) -> None:
    """Add the ``audit`` subcommand to the ``segutils`` parser."""
    audit = commands.add_parser(
        "audit",
        help="mutation analysis of an assignment's tests: which wrong answers do they miss?",
        description="Mutate the reference solution's graded functions (constants +-1, swapped arguments, flipped "
        "comparisons and signs, dropped statements, changed defaults), run each mutant and each "
        "fixture of tests/fixtures/ASSIGNMENT through the notebook's test cells, and report the "
        "mutants no test catches, with a diff. Exit status 0: every mutant killed or listed in "
        "audit_equivalent.toml; 1: survivors; 2: bad arguments.",
    )
    audit.add_argument("assignment", help="assignment id, e.g. a1_sliding_window")
    audit.add_argument("--solutions", default="solutions", help="folder of the source notebooks (default: solutions)")
    audit.add_argument("--fixtures", default=None, help="folder of fixtures (default: tests/fixtures/ASSIGNMENT)")
    audit.add_argument(
        "--equivalents",
        default=None,
        help="list of equivalent mutants (default: audit_equivalent.toml in the fixtures folder)",
    )
    audit.add_argument("--functions", default=None, help="comma-separated graded functions to mutate (default: all)")
    audit.add_argument("--max-mutants", type=int, default=None, help="run at most this many, spread over the functions")
    audit.add_argument("--jobs", type=int, default=max(1, (os.cpu_count() or 2) - 1), help="worker processes")
    audit.add_argument("--seed", type=int, default=0, help="which sample --max-mutants takes (default: 0)")
    audit.add_argument(
        "--timeout", type=float, default=300.0, help="seconds one run of the whole notebook may take (default: 300)"
    )
    audit.add_argument(
        "--first-catch",
        action="store_true",
        help="stop each mutant's run at the first test cell that catches it (faster; the report names that cell only)",
    )
    audit.add_argument("--json", default=None, help="also write the report as JSON to this file")
    audit.set_defaults(run=_run)
