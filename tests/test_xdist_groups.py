"""Tests marked with one ``xdist_group`` run on one worker under ``make test`` (``-n 2 --dist loadgroup``).

The book tests share one book build, and each assignment's tests share one graded nbgrader corpus, only
because of it; tests/conftest.py restores the group's ``@name`` node-id suffix that xdist's worker writes
where pytest 9.2 no longer reads it (pytest-dev/pytest-xdist#1386).
"""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("xdist")

TESTS = Path(__file__).resolve().parent

SUITE = """
import pytest

pytestmark = pytest.mark.xdist_group("shared")


@pytest.mark.parametrize("i", range(4))
def test_module_mark(i):
    pass


@pytest.mark.xdist_group("shared")
@pytest.mark.parametrize("path", ["book/02_task_and_data", "a@b"])
def test_module_and_own_mark(path):
    pass
"""

FREE = """
import pytest


@pytest.mark.parametrize("i", range(6))
def test_free(i):
    pass
"""


def test_a_group_runs_on_one_worker_under_loadgroup(tmp_path: Path) -> None:
    # The suite's own hook, loaded under another module name (this folder's conftest is "conftest" too).
    (tmp_path / "conftest.py").write_text(
        "import importlib.util\nimport sys\n"
        f"spec = importlib.util.spec_from_file_location('suite_conftest', {str(TESTS / 'conftest.py')!r})\n"
        "suite = sys.modules['suite_conftest'] = importlib.util.module_from_spec(spec)\n"
        "spec.loader.exec_module(suite)\n"
        "pytest_collection_modifyitems = suite.pytest_collection_modifyitems\n"
    )
    (tmp_path / "test_grouped.py").write_text(SUITE)
    (tmp_path / "test_free.py").write_text(FREE)
    run = subprocess.run(
        [sys.executable, "-m", "pytest", "-n", "2", "--dist", "loadgroup", "-v", "-p", "no:cacheprovider"]
        + ["-o", "addopts=", "--rootdir", str(tmp_path), str(tmp_path)],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    passed = re.findall(r"^\[(gw\d+)\] \[\s*\d+%\] PASSED (\S+)", run.stdout, flags=re.M)
    grouped = {node: worker for worker, node in passed if "test_grouped.py" in node}
    assert len(grouped) == 6 and len(passed) == 12, run.stdout[-3000:]
    assert all(node.endswith("@shared") for node in grouped), sorted(grouped)
    assert len(set(grouped.values())) == 1, f"the group ran on several workers: {grouped}"
    free = [node for _, node in passed if "test_free.py" in node]
    assert not [node for node in free if "@" in node], free
