"""Fixtures shared by several test modules."""

from __future__ import annotations

import fcntl
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

#: xdist group of every test that needs the built book: they share one build (one worker).
BOOK_GROUP = "book"


@pytest.hookimpl(trylast=True)
def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """On an xdist worker under ``--dist loadgroup``: put each ``xdist_group`` into its test's node id.

    The loadgroup scheduler reads a test's group from a ``@group`` suffix of its node id, which xdist's
    worker writes into ``item._nodeid``. pytest 9.2 keeps node ids in ``item._id`` instead, so the suffix
    was lost and every group was split across workers (pytest-dev/pytest-xdist#1386): the book built on
    both workers, each assignment's nbgrader corpus graded twice. Where xdist's own suffix took effect,
    this does nothing.
    """
    if not config.getoption("loadgroup", default=False):
        return
    for item in items:
        names = {
            str(m.args[0] if m.args else m.kwargs.get("name", "default")) for m in item.iter_markers("xdist_group")
        }
        suffix = "@" + "_".join(sorted(names))
        if not names or item.nodeid.endswith(suffix):
            continue
        grouped = item.nodeid + suffix
        if hasattr(item, "_id"):
            item._id = type(item._id).parse(grouped)
        else:
            item._nodeid = grouped


@dataclass(frozen=True)
class BookBuild:
    """The outcome of ``make book``: its exit status, its output and where the HTML went."""

    returncode: int
    output: str
    seconds: float
    html: Path
    executed: Path  # myst-nb's executed notebooks, one per chapter

    def require_success(self) -> None:
        """Fail the calling test when the build failed (test_book.py reports why)."""
        if self.returncode != 0:
            pytest.fail(f"`make book` failed (exit {self.returncode}); see tests/test_book.py::test_build_succeeds")


@pytest.fixture(scope="session")
def book_build() -> BookBuild:
    """Build the web book with the same command as ``make book``, once per session.

    The build reuses the execution cache (``_build/.jupyter_cache``) and the trained-model
    cache, so it is quick when neither the chapters nor segutils changed, and executes
    every chapter from scratch otherwise (tens of minutes on a laptop CPU).
    """
    # The book tests share an xdist group, but a lock still keeps two workers (or two pytest runs)
    # from building into the same _build/ at once; the second build then finds everything cached.
    lock_path = ROOT / "_build" / ".book-build.lock"
    lock_path.parent.mkdir(exist_ok=True)
    with lock_path.open("w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        start = time.perf_counter()
        result = subprocess.run(
            ["make", "--no-print-directory", "book"],
            cwd=ROOT,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
    return BookBuild(
        returncode=result.returncode,
        output=result.stdout,
        seconds=time.perf_counter() - start,
        html=ROOT / "_build" / "html",
        executed=ROOT / "_build" / "jupyter_execute",
    )
