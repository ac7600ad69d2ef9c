"""`make gpu-check` (tools/gpu_check.py) without a GPU: it says so and fails; its steps name real things."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
SCRIPT = REPO / "tools" / "gpu_check.py"
sys.path.insert(0, str(SCRIPT.parent))
import gpu_check  # noqa: E402


def test_without_a_gpu_it_says_so_and_exits_non_zero():
    env = {**os.environ, "CUDA_VISIBLE_DEVICES": ""}
    result = subprocess.run(
        [sys.executable, str(SCRIPT)], cwd=REPO, env=env, capture_output=True, text=True, timeout=120
    )
    assert result.returncode == gpu_check.NO_GPU_STATUS, (result.returncode, result.stdout, result.stderr)
    assert "no CUDA GPU is present" in result.stderr and "nothing was checked" in result.stderr


def test_makefile_target_runs_the_script():
    makefile = (REPO / "Makefile").read_text(encoding="utf-8")
    assert "gpu-check:" in makefile and "tools/gpu_check.py" in makefile


def test_the_pytest_selection_finds_the_cuda_tests():
    """The `-k` expression still selects the CUDA-only tests (collected, not run: they skip here)."""
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "pytest",
            "tests/test_train.py",
            "tests/test_assignments.py",
            "tests/test_grading_batch.py",
            "--collect-only",
            "-q",
            "-p",
            "no:cacheprovider",
            "-k",
            gpu_check.PYTEST_SELECTION,
        ],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]
    selected = result.stdout
    assert "test_cuda_training_with_amp_and_checkpoint_that_loads_on_cpu" in selected
    assert selected.count("test_reference_scores_full_marks_on_cuda[") >= 4
    assert "test_gpu_tests_run_on_the_workers_gpu_or_are_skipped_with_a_note" in selected


@pytest.mark.parametrize(
    "report, expected",
    [
        (
            '<testsuite tests="2" failures="0" errors="0" skipped="1"><testcase classname="t" name="a">'
            '<skipped message="needs a CUDA GPU"/></testcase><testcase classname="t" name="b"/></testsuite>',
            1,
        ),
        (
            '<testsuite tests="1" failures="0" errors="0" skipped="1"><testcase classname="t" name="a">'
            '<skipped message="needs bubblewrap"/></testcase></testsuite>',
            0,
        ),
    ],
)
def test_tests_skipped_for_want_of_cuda_count_as_failures(tmp_path, report, expected):
    junit = tmp_path / "r.xml"
    junit.write_text(report, encoding="utf-8")
    assert len(gpu_check.cuda_skips(junit)) == expected
