"""``segutils course show|init|apply|check``: the command line of :mod:`segutils.course`."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from segutils import course


def _root(args: argparse.Namespace) -> Path:
    return Path(args.root).resolve()


def _show(args: argparse.Namespace) -> int:
    identity = course.load(_root(args))
    for key, value in identity.tokens().items():
        print(f"{key:12} {value}")
    return 0


def _init(args: argparse.Namespace) -> int:
    root = _root(args)
    changes = dict(repository=args.repo, site=args.site, name=args.name, term=args.term, branch=args.branch)
    if (root / course.COURSE_FILE).is_file():
        identity = course.with_changes(course.load(root), **changes)
    else:
        missing = [
            f"--{flag}"
            for flag, key in (("repo", "repository"), ("site", "site"), ("name", "name"))
            if not changes[key]
        ]
        if missing:
            raise course.CourseError(f"{root / course.COURSE_FILE} does not exist yet: {', '.join(missing)} needed")
        identity = course.Identity(**{k: v for k, v in changes.items() if v is not None})
    for line in course.regenerate(root, identity, releases=args.releases):
        print(line)
    return 0


def _apply(args: argparse.Namespace) -> int:
    root = _root(args)
    identity = course.load(root)
    changed = course.apply_paths([Path(p) for p in args.paths], root, identity)
    for path in changed:
        print(f"converted {path}")
    print(f"{len(changed)} of {len(args.paths)} files changed")
    return 0


def _check(args: argparse.Namespace) -> int:
    root = _root(args)
    identity = course.load(root)
    problems = course.config_problems(root / "_config.yml", identity)
    for problem in problems:
        print(problem, file=sys.stderr)
    if problems:
        print(
            "run `segutils course init` (values not given stay as course.toml has them) to regenerate it",
            file=sys.stderr,
        )
    return 1 if problems else 0


def _guarded(run):
    def wrapped(args: argparse.Namespace) -> int:
        try:
            return run(args)
        except course.CourseError as error:
            print(f"segutils course: error: {error}", file=sys.stderr)
            return 2

    return wrapped


def add_course_parser(commands: argparse._SubParsersAction) -> None:
    """Add the ``course`` subcommand to the ``segutils`` parser."""
    parser = commands.add_parser(
        "course",
        help="the course's identity (course.toml): addresses, name, term",
        description="One place for the course's repository, site, name and term.",
    )
    parser.add_argument("--root", default=".", help="the repository root, where course.toml is (default: .)")
    actions = parser.add_subparsers(dest="action", required=True)
    actions.add_parser("show", help="print the identity and its token names").set_defaults(run=_guarded(_show))
    init = actions.add_parser(
        "init",
        help="set the identity and regenerate _config.yml and the releases",
        description="Write course.toml (fields not given keep their value), rewrite the "
        "generated lines of _config.yml and regenerate every release with "
        "nbgrader generate_assignment.",
    )
    init.add_argument("--repo", help="the repository's web address, e.g. https://github.com/me/course")
    init.add_argument("--site", help="the published book's address, e.g. https://me.github.io/course")
    init.add_argument("--name", help="the course's name")
    init.add_argument("--term", help="the term, e.g. 'Spring 2027'")
    init.add_argument("--branch", help="the branch the book links to (default: main)")
    init.add_argument(
        "--no-releases",
        dest="releases",
        action="store_false",
        help="do not regenerate the releases (run `make assignments` later)",
    )
    init.set_defaults(run=_guarded(_init))
    apply = actions.add_parser(
        "apply",
        help="turn hard-coded addresses in notebooks/Markdown into tokens",
        description="Replace copies of the addresses course.toml holds (run it before "
        "changing them) in the given files by tokens: MyST substitutions in "
        "book/, {{ repo_url }}-style tokens elsewhere. Idempotent; only the "
        "cells' source changes.",
    )
    apply.add_argument("paths", nargs="+", help=".ipynb or .md files")
    apply.set_defaults(run=_guarded(_apply))
    actions.add_parser("check", help="exit 1 when _config.yml disagrees with course.toml").set_defaults(
        run=_guarded(_check)
    )
