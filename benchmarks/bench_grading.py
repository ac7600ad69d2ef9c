"""Benchmark: ``segutils grade --workers 2`` against serial ``nbgrader autograde`` on the same a1 batch.

Both grade the same generated submissions of ``a1_sliding_window`` (the reference answer, the
blank release and the a1 fixtures of ``tests/fixtures/a1_sliding_window``, cycled to the batch
size) in two copies of one course, in the same run. Rows:

- ``nbgrader autograde (serial)``: wall seconds of ``nbgrader autograde a1_sliding_window``;
- ``segutils grade --workers 2``: wall seconds, ``ratio`` = nbgrader's seconds / these seconds
  (the goal is >= 1.7 with two cores free), ``identical_scores`` (every test cell of every
  student scored the same by both, read back from the two gradebooks), and the per-submission
  overhead: mean seconds a job spent outside notebook execution (process start, sandbox,
  nbgrader's conversions and the feedback HTML).

Full mode grades 24 submissions, quick mode 4. The sandbox is used when bubblewrap works here.
"""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
ASSIGNMENT = "a1_sliding_window"


def _harness():
    sys.path.insert(0, str(REPO / "tests"))
    import nbgrader_harness

    return nbgrader_harness


def make_batch(root: Path, count: int) -> tuple[Path, list[str]]:
    """A course in ``root/nbgrader`` with ``count`` submissions of a1 (mixed right and wrong answers)."""
    harness = _harness()
    course = harness.make_course(root / "nbgrader", [ASSIGNMENT])
    release = harness.read_notebook(harness.generate_release(course, ASSIGNMENT))
    source = harness.read_notebook(course / "solutions" / ASSIGNMENT / f"{ASSIGNMENT}.ipynb")
    kinds = [("reference", None), ("blank", None)] + [(f.name, f) for f in harness.load_fixtures(ASSIGNMENT)]
    students = []
    for i in range(count):
        name, fixture = kinds[i % len(kinds)]
        student = f"s{i:02d}_{name}"[:60]
        if name == "blank":
            nb = release
        else:
            nb = harness.submission(release, source, {fixture.replaces: fixture.source} if fixture else None)
        harness.submit(course, ASSIGNMENT, student, nb)
        students.append(student)
    return course, students


def _scores(course: Path) -> dict[str, dict[str, float]]:
    from nbgrader.api import Gradebook

    with Gradebook(f"sqlite:///{course / 'gradebook.db'}") as gb:
        return {s.student.id: {g.name: float(g.score) for nb in s.notebooks for g in nb.grades}
                for s in gb.find_assignment(ASSIGNMENT).submissions}


def _sandbox_works() -> bool:
    from segutils.grading.sandbox import SandboxUnavailable, check_sandbox

    try:
        check_sandbox()
        return True
    except SandboxUnavailable:
        return False


def run(quick: bool = False) -> list[dict]:
    count = 4 if quick else 24
    harness = _harness()
    sandboxed = _sandbox_works()
    with tempfile.TemporaryDirectory(prefix="bench-grading-") as tmp:
        root = Path(tmp)
        nbgrader_course, students = make_batch(root, count)
        segutils_course = root / "segutils"
        shutil.copytree(nbgrader_course, segutils_course)
        (segutils_course / "gradebook.db").unlink(missing_ok=True)

        start = time.perf_counter()
        harness.autograde(nbgrader_course, ASSIGNMENT)
        nbgrader_seconds = time.perf_counter() - start

        env = harness._environment(None)
        command = [sys.executable, "-m", "segutils", "grade", ASSIGNMENT, "--course-dir", str(segutils_course),
                   "--workers", "2", "--no-progress", "--sandbox" if sandboxed else "--no-sandbox"]
        start = time.perf_counter()
        done = subprocess.run(command, env=env, capture_output=True, text=True, cwd=segutils_course)
        segutils_seconds = time.perf_counter() - start
        if done.returncode not in (0, 1):
            raise RuntimeError(f"segutils grade failed ({done.returncode}):\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}")

        expected, got = _scores(nbgrader_course), _scores(segutils_course)
        differences = sorted(f"{s}/{cell}" for s in expected for cell in expected[s]
                             if got.get(s, {}).get(cell) != expected[s][cell])
        states = [json.loads(p.read_text()) for p in (segutils_course / "reports" / ASSIGNMENT / "state").glob("*.json")]
        overhead = sum(float(s["seconds"]) - float(s["exec_seconds"]) for s in states) / max(1, len(states))
        execution = sum(float(s["exec_seconds"]) for s in states) / max(1, len(states))
    return [
        {"benchmark": "grading", "case": "nbgrader autograde (serial)", "submissions": count,
         "seconds": nbgrader_seconds, "per_submission": nbgrader_seconds / count},
        {"benchmark": "grading", "case": f"segutils grade --workers 2 ({'sandbox' if sandboxed else 'no sandbox'})",
         "submissions": count, "seconds": segutils_seconds, "per_submission": segutils_seconds / count,
         "ratio": nbgrader_seconds / segutils_seconds, "identical_scores": not differences,
         "differences": ", ".join(differences[:10]), "exec_s_per_submission": execution,
         "overhead_s_per_submission": overhead, "cpus": os.cpu_count()},
    ]


if __name__ == "__main__":
    for row in run(quick="--quick" in sys.argv):
        print(row)
