"""Two-process grading (``segutils grade --two-process``) gives each assignment's reference full marks.

In that mode the test cells run in a grader process and reach the student's names through proxies
(``segutils.grading.remote``), so a hidden test that only works next to the student's code (a
module class defined by the test cell, a measurement of the student's model by a function that
needs a real ``nn.Module``, a dispatch mode of the test's own) loses the reference points there while
plain ``nbgrader autograde`` (``tests/test_assignments.py``) still gives full marks.
"""

from __future__ import annotations

import json
import subprocess
import sys

import nbformat
import nbgrader_harness as h
import pytest


def _grade_two_process(course, aid: str, export, workers: int) -> None:
    """``segutils grade AID --two-process`` on the notebooks in ``export``; every grader process must have
    come from the worker slot's warm grader (a fresh one is the fallback, tested in test_grading_warm.py)."""
    run = subprocess.run(
        [
            sys.executable,
            "-m",
            "segutils",
            "grade",
            aid,
            "--course-dir",
            str(course),
            "--submissions",
            str(export),
            "--workers",
            str(workers),
            "--no-progress",
            "--two-process",
            *h.sandbox_args(),
        ],
        capture_output=True,
        text=True,
        env=h._environment({"CUDA_VISIBLE_DEVICES": ""}),
        cwd=course,
        timeout=1800,
    )
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    states = [json.loads(p.read_text()) for p in (course / "reports" / aid / "state").glob("*.json")]
    assert states and all(s["warm_grader"] for s in states), [(s["student"], s["warm_grader"]) for s in states]


@pytest.mark.slow
@pytest.mark.parametrize(
    "aid", [pytest.param(a, marks=pytest.mark.xdist_group(f"two-process-{a}")) for a in h.assignment_ids()]
)
def test_reference_scores_full_marks_with_two_processes(aid, tmp_path):
    course = h.make_course(tmp_path / "course", [aid])
    release = h.read_notebook(h.generate_release(course, aid))
    source = h.read_notebook(course / "solutions" / aid / f"{aid}.ipynb")
    export = tmp_path / "export"
    export.mkdir()
    nbformat.write(h.submission(release, source), export / f"{h.REFERENCE}.ipynb")
    _grade_two_process(course, aid, export, workers=1)
    scores = h.read_scores(course, aid, h.REFERENCE)
    assert set(scores) == set(h.graded_test_cells(source)), "the gradebook does not hold every graded cell"
    nb = h.autograded_notebook(course, aid, h.REFERENCE)
    lost = {gid: h.error_summary(cell) for gid, cell in h.graded_test_cells(nb).items() if not scores[gid].full}
    assert not lost, f"the reference of {aid} loses points under two-process grading: {lost}"


def _called_by_other_answers(fixture: h.Fixture) -> bool:
    # a1's graded cells run sliding_window_segment with a correct extract_patches (the release says so), by
    # rebinding the name in the test's globals: a mistake in extract_patches costs its own cells only.
    return (
        fixture.assignment_id == "a1_sliding_window"
        and fixture.replaces == "extract_patches"
        and not fixture.name.startswith("correct_")
    )


@pytest.mark.slow
@pytest.mark.xdist_group("two-process-a1_sliding_window")
def test_a_mistake_the_tests_replace_is_not_counted_twice_with_two_processes(tmp_path):
    aid = "a1_sliding_window"
    fixtures = [f for f in h.load_fixtures(aid) if _called_by_other_answers(f)]
    assert fixtures, "no a1 fixture with a mistake in extract_patches"
    course = h.make_course(tmp_path / "course", [aid])
    release = h.read_notebook(h.generate_release(course, aid))
    source = h.read_notebook(course / "solutions" / aid / f"{aid}.ipynb")
    export = tmp_path / "export"
    export.mkdir()
    for fixture in fixtures:
        nbformat.write(
            h.submission(release, source, {fixture.replaces: fixture.source}), export / f"{fixture.name}.ipynb"
        )
    _grade_two_process(course, aid, export, workers=2)
    for fixture in fixtures:
        lost = {gid for gid, s in h.read_scores(course, aid, fixture.name).items() if not s.full}
        cells = h.graded_test_cells(h.autograded_notebook(course, aid, fixture.name))
        why = {gid: h.error_summary(cells[gid]) for gid in lost - set(fixture.expected_failures)}
        assert lost == set(fixture.expected_failures), (
            f"{fixture.name} under two-process grading lost {sorted(lost)}, expected "
            f"{sorted(fixture.expected_failures)}: {why}"
        )
