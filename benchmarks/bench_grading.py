"""Benchmark: ``segutils grade --workers 2`` against serial ``nbgrader autograde`` on the same a1 batch.

All grade the same generated submissions of ``a1_sliding_window`` (the reference answer, the
blank release and the a1 fixtures of ``tests/fixtures/a1_sliding_window``, all honest, cycled to
the batch size) in copies of one course, in the same run. Every row starts from the same state:
the course after ``nbgrader generate_assignment``, its gradebook included (a new gradebook costs
about 4 s more: nbgrader runs ``alembic`` in a subprocess to stamp it). Rows:

- ``nbgrader autograde (serial)``: wall seconds of ``nbgrader autograde a1_sliding_window``;
- ``segutils grade --workers 2 --two-process`` (the tests in a grader process of their own) and
  ``... --in-process`` (the tests in the student's kernel): wall seconds, ``ratio`` = nbgrader's
  seconds / these seconds (the goal is >= 1.7 with two cores free), ``identical_scores`` (every
  test cell of every student scored the same as by nbgrader, read back from the gradebooks), and
  the per-submission overhead: mean seconds a job spent outside the notebook's execution (process
  starts, sandboxes, nbgrader's conversions, the feedback HTML; in two-process mode also the grader
  process's start, as far as it does not overlap the student's);
- ``job_s_per_submission``: mean seconds of one student's job, start to end (the notebook's execution
  included: in two-process mode the tests' round trips to the student's process happen during it,
  so the overhead above does not show them);
- the two-process row also has ``vs_in_process``: its wall seconds / the in-process row's,
  ``overhead_vs_in_process_s``: the difference of their per-submission overheads, and
  ``two_process_adds_s``: the difference of their mean job seconds, the whole per-submission cost of
  the second process (all measured in this run, so a loaded machine shifts both rows).

Every row has the machine's load (1-minute average, ``os.getloadavg``) before and after it ran:
compare rows of one run, and absolute numbers only from an idle machine. Full mode grades 24
submissions, quick mode 4. The sandbox is used when bubblewrap works here.
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
        return {
            s.student.id: {g.name: float(g.score) for nb in s.notebooks for g in nb.grades}
            for s in gb.find_assignment(ASSIGNMENT).submissions
        }


def _sandbox_works() -> bool:
    from segutils.grading.sandbox import SandboxUnavailable, check_sandbox

    try:
        check_sandbox()
        return True
    except SandboxUnavailable:
        return False


def _load() -> str:
    return f"{os.getloadavg()[0]:.2f}"


def _segutils_grade(course: Path, env: dict, sandboxed: bool, mode: str) -> tuple[float, dict, list[dict], str]:
    """Grade ``course`` with ``segutils grade --workers 2 MODE``: wall seconds, scores, state files, load."""
    command = [
        sys.executable,
        "-m",
        "segutils",
        "grade",
        ASSIGNMENT,
        "--course-dir",
        str(course),
        "--workers",
        "2",
        "--no-progress",
        "--sandbox" if sandboxed else "--no-sandbox",
        mode,
    ]
    load = _load()
    start = time.perf_counter()
    done = subprocess.run(command, env=env, capture_output=True, text=True, cwd=course)
    seconds = time.perf_counter() - start
    if done.returncode not in (0, 1):
        raise RuntimeError(
            f"segutils grade {mode} failed ({done.returncode}):\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}"
        )
    states = [json.loads(p.read_text()) for p in (course / "reports" / ASSIGNMENT / "state").glob("*.json")]
    return seconds, _scores(course), states, f"{load} -> {_load()}"


def _row(
    case: str,
    count: int,
    seconds: float,
    nbgrader_seconds: float,
    expected: dict,
    got: dict,
    states: list[dict],
    load: str,
) -> dict:
    differences = sorted(
        f"{s}/{cell}" for s in expected for cell in expected[s] if got.get(s, {}).get(cell) != expected[s][cell]
    )
    overhead = sum(float(s["seconds"]) - float(s["exec_seconds"]) for s in states) / max(1, len(states))
    execution = sum(float(s["exec_seconds"]) for s in states) / max(1, len(states))
    job = sum(float(s["seconds"]) for s in states) / max(1, len(states))
    return {
        "benchmark": "grading",
        "case": case,
        "submissions": count,
        "seconds": seconds,
        "per_submission": seconds / count,
        "ratio": nbgrader_seconds / seconds,
        "identical_scores": not differences and len(got) == len(expected),
        "differences": ", ".join(differences[:10]),
        "exec_s_per_submission": execution,
        "overhead_s_per_submission": overhead,
        "job_s_per_submission": job,
        "load_1min": load,
        "cpus": os.cpu_count(),
    }


def run(quick: bool = False) -> list[dict]:
    count = 4 if quick else 24
    harness = _harness()
    sandboxed = _sandbox_works()
    where = "sandbox" if sandboxed else "no sandbox"
    with tempfile.TemporaryDirectory(prefix="bench-grading-") as tmp:
        root = Path(tmp)
        nbgrader_course, students = make_batch(root, count)
        courses = {}
        for mode in ("two-process", "in-process"):
            courses[mode] = root / f"segutils-{mode}"
            shutil.copytree(nbgrader_course, courses[mode])  # gradebook included, as nbgrader's row has it

        load = _load()
        start = time.perf_counter()
        harness.autograde(nbgrader_course, ASSIGNMENT)
        nbgrader_seconds = time.perf_counter() - start
        nbgrader_load = f"{load} -> {_load()}"
        expected = _scores(nbgrader_course)

        env = harness._environment(None)
        rows = [
            {
                "benchmark": "grading",
                "case": "nbgrader autograde (serial)",
                "submissions": count,
                "seconds": nbgrader_seconds,
                "per_submission": nbgrader_seconds / count,
                "load_1min": nbgrader_load,
            }
        ]
        for mode in ("two-process", "in-process"):
            seconds, got, states, mode_load = _segutils_grade(courses[mode], env, sandboxed, f"--{mode}")
            rows.append(
                _row(
                    f"segutils grade --workers 2 --{mode} ({where})",
                    count,
                    seconds,
                    nbgrader_seconds,
                    expected,
                    got,
                    states,
                    mode_load,
                )
            )
    two, one = rows[1], rows[2]
    two["vs_in_process"] = two["seconds"] / one["seconds"]
    two["overhead_vs_in_process_s"] = two["overhead_s_per_submission"] - one["overhead_s_per_submission"]
    two["two_process_adds_s"] = two["job_s_per_submission"] - one["job_s_per_submission"]
    return rows


if __name__ == "__main__":
    for row in run(quick="--quick" in sys.argv):
        print(row)
