"""Two-process grading against hostile submissions (issue #11): no attack scores, nothing hidden leaks.

The mini course is graded with ``SandboxedExecute.two_process = True`` (tests in a grader process
of their own, the student's code in the student's kernel) and ``--redact-hidden``. Every attack of
``tests/fixtures/grading_hostile/attacks.py`` answers both functions wrongly: the same notebook
without the attack scores 0 of 4 (and 1 point of a check measured in the student's process, which
``t * 3`` passes), so no attack may score more, and no file the student receives (the feedback) may
hold any text of the hidden tests' source or the inputs they passed. Positive controls in the same
batch: the reference solution scores 5 of 5 and the wrong answers alone 1.
"""

from __future__ import annotations

import html
import os
import shutil
import subprocess
import sys
from pathlib import Path

import nbformat
import pytest

pytest.importorskip("nbgrader")
import nbgrader_harness as h  # noqa: E402
from nbgrader.api import Gradebook  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests" / "fixtures" / "grading"))
sys.path.insert(0, str(REPO / "tests" / "fixtures" / "grading_hostile"))
import attacks  # noqa: E402
import cases  # noqa: E402

pytestmark = [pytest.mark.slow, pytest.mark.xdist_group("grading")]

#: A test cell added to the mini course here: its check runs in the student's process (issue #11: such points
#: are marked "measured in the student's process" in the feedback and the report).
PROBE_CELL = "test_double_ops"
PROBE_SOURCE = (
    "# [1 point] double dispatches one operator\n"
    "ops = testing.count_ops(double, torch.ones(4))\n"
    'assert sum(ops.values()) == 1, f"double should dispatch one operator, got {dict(ops)}"'
)
REFERENCE = {**cases.FULL, PROBE_CELL: 1.0}
HONEST_WRONG = {**cases.ZERO, PROBE_CELL: 1.0}  # t * 3 is one operator too


def _env() -> dict[str, str]:
    env = dict(os.environ)
    env["PATH"] = os.pathsep.join([str(Path(sys.executable).parent), env.get("PATH", "")])
    env["PYTHONPATH"] = os.pathsep.join(p for p in [str(REPO), env.get("PYTHONPATH", "")] if p)
    return env


def _submission(release: nbformat.NotebookNode, name: str | None) -> nbformat.NotebookNode:
    nb = nbformat.from_dict(nbformat.reads(nbformat.writes(release), as_version=4))
    for cell in nb.cells:
        gid = cell.metadata.get("nbgrader", {}).get("grade_id")
        if not cell.metadata.get("nbgrader", {}).get("solution"):
            continue
        if name == "reference":
            cell.source = cases.CORRECT[gid]
        elif name == "honest_wrong":
            cell.source = cases.WRONG[gid]
        else:
            cell.source = attacks.solution_source(name, gid)
    if name not in ("reference", "honest_wrong"):
        nb.cells.append(nbformat.v4.new_code_cell(attacks.final_cell(name)))
    return nb


@pytest.fixture(scope="module")
def graded(tmp_path_factory):
    root = tmp_path_factory.mktemp("hostile")
    course = root / "course"
    shutil.copytree(cases.MINI_COURSE, course)
    with open(course / "nbgrader_config.py", "a") as config:
        config.write("\nc.SandboxedExecute.two_process = True\n")
    source = course / "solutions" / cases.ASSIGNMENT / f"{cases.ASSIGNMENT}.ipynb"
    nb = nbformat.read(source, as_version=4)
    nb.cells.append(
        nbformat.v4.new_code_cell(
            PROBE_SOURCE,
            metadata={
                "nbgrader": {
                    "grade": True,
                    "grade_id": PROBE_CELL,
                    "locked": True,
                    "points": 1,
                    "schema_version": 3,
                    "solution": False,
                    "task": False,
                }
            },
        )
    )
    nbformat.write(nb, source)
    subprocess.run(
        [str(Path(sys.executable).parent / "nbgrader"), "generate_assignment", cases.ASSIGNMENT, "--log-level=WARN"],
        cwd=course,
        env=_env(),
        check=True,
        capture_output=True,
        timeout=600,
    )
    release = cases.read_release(course)
    export = root / "export"
    export.mkdir()
    students = ["reference", "honest_wrong", *attacks.ATTACKS]
    for name in students:
        nbformat.write(_submission(release, name), export / f"{name}.ipynb")
    run = subprocess.run(
        [
            sys.executable,
            "-m",
            "segutils",
            "grade",
            cases.ASSIGNMENT,
            "--course-dir",
            str(course),
            "--submissions",
            str(export),
            "--workers",
            "2",
            "--timeout",
            "30",
            "--no-progress",
            "--redact-hidden",
            *h.sandbox_args(),
        ],
        capture_output=True,
        text=True,
        env=_env(),
        timeout=1500,
        cwd=course,
    )
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    scores = {}
    with Gradebook(f"sqlite:///{course / 'gradebook.db'}") as gb:
        for name in students:
            submission = gb.find_submission_notebook(cases.ASSIGNMENT, cases.ASSIGNMENT, name)
            scores[name] = {g.name: float(g.score) for g in submission.grades}
    return course, scores


def test_positive_controls(graded):
    _, scores = graded
    assert scores["reference"] == REFERENCE
    assert scores["honest_wrong"] == HONEST_WRONG


@pytest.mark.parametrize("attack", sorted(attacks.ATTACKS))
def test_no_attack_scores_more_than_the_same_notebook_without_it(graded, attack):
    _, scores = graded
    assert set(scores[attack]) == set(HONEST_WRONG), f"{attack}: {scores[attack]}"
    gained = {cell: score for cell, score in scores[attack].items() if score > scores["honest_wrong"][cell]}
    assert not gained, f"{attack} scored more than the same notebook without it: {gained}"
    assert scores[attack] == cases.ZERO | {PROBE_CELL: scores[attack][PROBE_CELL]}, f"{attack} scored {scores[attack]}"


def test_points_measured_in_the_student_process_are_marked_for_student_and_instructor(graded):
    # The probe cell's check ran in the student's process: the feedback (redacted) says so at that test, the
    # report lists the cell; the tests judged in the grader alone are not marked (control).
    course, _ = graded
    for student in ("reference", "honest_wrong"):
        page = html.unescape(
            (course / "feedback" / student / cases.ASSIGNMENT / f"{cases.ASSIGNMENT}.html").read_text()
        )
        assert page.count("measured in the student's process") == 1, student
        assert page.index("measured in the student's process") > page.index("double dispatches one operator")
    report = html.unescape((course / "reports" / cases.ASSIGNMENT / "report.html").read_text())
    section = report.split("Points measured in the student's process</h2>")[1].split("<h2>")[0]
    assert f"<td>{PROBE_CELL}</td><td>count_ops</td>" in section
    assert "test_square" not in section and "test_double<" not in section
    assert "tests: in a grader process of their own" in report


@pytest.mark.parametrize("attack", attacks.SNOOPING)
def test_the_snooping_attacks_did_search_during_the_tests(graded, attack):
    # Positive control of "nothing found": each snooping attack's final cell prints how often its code looked.
    course, _ = graded
    nb = nbformat.read(course / "autograded" / attack / cases.ASSIGNMENT / f"{cases.ASSIGNMENT}.ipynb", as_version=4)
    found = [
        line
        for cell in nb.cells
        if cell.cell_type == "code"
        for o in cell.get("outputs", [])
        if o.get("output_type") == "stream"
        for line in o.text.splitlines()
        if attacks.SEARCHED_MARKER in line
    ]
    assert found, f"{attack} never reported its searches"
    assert int(found[-1].split(attacks.SEARCHED_MARKER)[1].split()[0]) > 0, found[-1]


@pytest.mark.parametrize("student", ["reference", "honest_wrong", *sorted(attacks.ATTACKS)])
def test_no_hidden_test_text_reaches_the_feedback(graded, student):
    course, _ = graded
    files = list((course / "feedback" / student).rglob("*"))
    assert any(f.suffix == ".html" for f in files), f"no feedback for {student}"
    for path in files:
        if not path.is_file():
            continue
        text = html.unescape(path.read_text(errors="replace"))
        for hidden in attacks.HIDDEN_SOURCE:
            assert hidden not in text, f"{path.name} of {student} shows hidden-test source {hidden!r}"
        assert "LEAK:" not in text, f"{path.name} of {student} shows something an attack found"
        assert attacks.RECORDED_MARKER not in text, f"{student}'s feedback shows the inputs it recorded"
        assert "square(-2)" not in text.replace("square(-2) should be 4", "")


def test_the_recording_attack_did_record_the_hidden_inputs(graded):
    # Positive control of the feedback check above: the marker is in the autograded notebook (instructors
    # only) with the input 1.5 of the hidden-only test, so its absence from the feedback is the redaction's doing.
    course, _ = graded
    autograded = course / "autograded" / "records_hidden_inputs" / cases.ASSIGNMENT / f"{cases.ASSIGNMENT}.ipynb"
    text = autograded.read_text()
    assert attacks.RECORDED_MARKER in text and "'1.5'" in text


def test_the_student_process_never_held_a_hidden_test(graded):
    # The attacks that read files, frames, linecache and history print what they find as "LEAK:"; the
    # autograded notebook (instructors only) keeps the student's outputs: none of them found anything.
    course, _ = graded
    for student in attacks.ATTACKS:
        autograded = course / "autograded" / student / cases.ASSIGNMENT / f"{cases.ASSIGNMENT}.ipynb"
        nb = nbformat.read(autograded, as_version=4)
        for cell in nb.cells:
            if cell.cell_type != "code" or cell.metadata.get("nbgrader", {}).get("grade"):
                continue
            for output in cell.get("outputs", []):
                text = str(output.get("text", "")) + str(output.get("data", ""))
                assert "LEAK:" not in text, f"{student}: {text[:500]}"


def test_the_attacks_leak_detector_finds_the_hidden_tests_where_they_are(capsys):
    # Positive control of the "LEAK:" checks: run against the source notebook (what an in-process grader's
    # working directory holds), the attacks' detector prints the marker; on the release (no hidden test), not.
    namespace: dict = {}
    exec(attacks._FIND_HIDDEN, namespace)  # noqa: S102 - the fixture's own code
    namespace["_leak"]((cases.MINI_COURSE / "solutions" / "mini" / "mini.ipynb").read_text())
    assert "LEAK:" in capsys.readouterr().out
    release = nbformat.read(cases.MINI_COURSE / "solutions" / "mini" / "mini.ipynb", as_version=4)
    for cell in release.cells:
        cell.source = cell.source.split("### BEGIN HIDDEN TESTS")[0]
    namespace["_leak"](nbformat.writes(release))
    assert "LEAK:" not in capsys.readouterr().out
