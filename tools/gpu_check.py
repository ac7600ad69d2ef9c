"""`make gpu-check`: run everything in this repository that needs a CUDA GPU, then print a summary.

What runs (sized to finish in well under 8 minutes on one GPU):

1. ``pytest -k "(cuda or gpu) and not gpu_check"`` over ``tests/``: every CUDA-only test (they skip elsewhere),
   among them the reference solution of each assignment graded through nbgrader with CUDA visible, so that the hidden
   tests' float16/bfloat16 and no-host-sync cases run (``test_reference_scores_full_marks_on_cuda``), the
   grading batch with one GPU per worker (``tests/test_grading_batch.py``) and ``segutils.train.fit`` with
   mixed precision (``tests/test_train.py``). On a GPU machine a test skipped for want of CUDA is a failure.
2. ``segutils train`` on CUDA for one short epoch: the command line's training loop with automatic mixed
   precision, end to end.

Without a CUDA GPU it says so and exits with status 2: nothing it checks can run on a CPU.

Usage: ``python tools/gpu_check.py [--list]`` (``--list`` prints the steps without running them).
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
import xml.etree.ElementTree as ET
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
NO_GPU_STATUS = 2
PYTEST_SELECTION = "(cuda or gpu) and not gpu_check"


@dataclass
class Step:
    name: str
    command: list[str]
    timeout_s: int


def steps(python: str, workdir: Path) -> list[Step]:
    """The checks, in the order they run."""
    junit = workdir / "cuda-tests.xml"
    return [
        Step(
            "CUDA tests (pytest -k 'cuda or gpu': CUDA-only tests, each assignment's reference graded on the GPU, "
            "GPU grading batch, fit with AMP)",
            [
                python,
                "-m",
                "pytest",
                "tests",
                "-k",
                PYTEST_SELECTION,
                "-n",
                "4",
                "--dist",
                "loadgroup",
                "-p",
                "no:cacheprovider",
                "-q",
                "-rs",
                f"--junitxml={junit}",
            ],
            420,
        ),
        Step(
            "segutils train on CUDA with mixed precision (1 epoch)",
            [
                python,
                "-m",
                "segutils",
                "train",
                "--model",
                "unet",
                "--epochs",
                "1",
                "--train-size",
                "256",
                "--val-size",
                "64",
                "--image-size",
                "32",
                "--batch-size",
                "32",
                "--device",
                "cuda",
                "--checkpoint",
                str(workdir / "unet.pt"),
            ],
            120,
        ),
    ]


def cuda_skips(junit: Path) -> list[str]:
    """Tests of a JUnit report skipped because CUDA or a GPU was missing (a failure on a GPU machine)."""
    if not junit.is_file():
        return []
    skipped = []
    for case in ET.parse(junit).getroot().iter("testcase"):
        for skip in case.findall("skipped"):
            why = f"{skip.get('message', '')} {skip.text or ''}"
            if "cuda" in why.lower() or "gpu" in why.lower():
                skipped.append(f"{case.get('classname')}::{case.get('name')} ({why.strip()[:80]})")
    return skipped


def junit_counts(junit: Path) -> str:
    if not junit.is_file():
        return "no report"
    root = ET.parse(junit).getroot()
    suite = root if root.tag == "testsuite" else root.find("testsuite")
    get = lambda key: int(suite.get(key, 0))  # noqa: E731
    passed = get("tests") - get("failures") - get("errors") - get("skipped")
    return f"{passed} passed, {get('failures') + get('errors')} failed, {get('skipped')} skipped"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--list", action="store_true", help="print the steps and exit")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="gpu-check-") as tmp:
        workdir = Path(tmp)
        plan = steps(sys.executable, workdir)
        if args.list:
            for step in plan:
                print(f"{step.name}\n    {' '.join(step.command)}")
            return 0
        import torch

        if not torch.cuda.is_available():
            print(
                "gpu-check: no CUDA GPU is present (torch.cuda.is_available() is False, CUDA_VISIBLE_DEVICES="
                f"{os.environ.get('CUDA_VISIBLE_DEVICES', '<unset>')!r}): nothing was checked. Run it on a machine "
                "with an NVIDIA GPU.",
                file=sys.stderr,
            )
            return NO_GPU_STATUS
        print(
            f"gpu-check on {torch.cuda.get_device_name(0)} ({torch.cuda.device_count()} GPU(s)), "
            f"PyTorch {torch.__version__}, CUDA {torch.version.cuda}",
            flush=True,
        )
        results = []
        for step in plan:
            print(f"\n=== {step.name}\n$ {' '.join(step.command)}", flush=True)
            start = time.monotonic()
            try:
                code = subprocess.run(step.command, cwd=REPO, timeout=step.timeout_s).returncode
                status = "passed" if code == 0 else f"FAILED (exit {code})"
            except subprocess.TimeoutExpired:
                code, status = 1, f"FAILED (over {step.timeout_s} s)"
            detail = ""
            if step.command[1:3] == ["-m", "pytest"]:
                junit = workdir / "cuda-tests.xml"
                detail = junit_counts(junit)
                skipped = cuda_skips(junit)
                if skipped:
                    status = "FAILED (tests skipped for want of CUDA on a GPU machine)"
                    detail += "; skipped: " + "; ".join(skipped[:5])
            results.append((step.name, status, time.monotonic() - start, detail))
    print("\n=== gpu-check summary")
    for name, status, seconds, detail in results:
        print(f"{status:>10}  {seconds:6.0f} s  {name}" + (f"\n{'':>20}{detail}" if detail else ""))
    failed = [r for r in results if r[1] != "passed"]
    print("gpu-check: " + ("all passed" if not failed else f"{len(failed)} of {len(results)} steps failed"))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
