"""Fast checks of the term tools of ``segutils grade`` (no kernel, no gradebook): the export layouts, the
feedback release policy and the withholding of hidden-test results. End to end: ``tests/test_grading_export.py``."""

from __future__ import annotations

import csv
import datetime
import io

import nbformat
import pytest

pytest.importorskip("nbgrader")

from segutils.grading.export import Entry, render  # noqa: E402
from segutils.grading.feedback_timing import WithholdHiddenResults, released  # noqa: E402

DUE = datetime.datetime(2027, 3, 1, 23, 59)


def _entry(student: str, status: str = "graded", raw: float = 4.0, penalty: float = 0.0, **names) -> Entry:
    return Entry(
        student=student,
        last_name=names.get("last", "L"),
        first_name=names.get("first", "F"),
        email=names.get("email", f"{student}@example.edu"),
        assignment="a1",
        status=status,
        seconds_late=7200.0 if status == "late" else 0.0,
        raw_score=raw,
        late_penalty=penalty,
        max_score=5.0,
    )


def test_a_penalty_never_takes_a_score_below_zero():
    assert _entry("x", "late", raw=2.0, penalty=3.0).score == 0.0
    assert _entry("x", "late", raw=4.0, penalty=1.5).score == 2.5


def test_names_that_a_spreadsheet_would_run_are_written_as_text():
    text = render("canvas", ["a1"], [_entry("eve", last='=HYPERLINK("x")', first="-1")])
    rows = list(csv.reader(io.StringIO(text)))
    assert rows[2][0] == '\'=HYPERLINK("x"), -1'
    assert rows[2][2:4] == ["eve", "eve"] and rows[2][5] == "4"


def test_every_assignment_is_a_column_in_the_order_given():
    entries = [_entry("amy"), Entry(**{**_entry("amy").__dict__, "assignment": "a2", "raw_score": 1.0})]
    rows = list(csv.reader(io.StringIO(render("moodle", ["a1", "a2"], entries))))
    assert rows[0][4:] == ["a1", "a2", "a1 feedback", "a2 feedback"]
    assert rows[1][4:6] == ["4", "1"]
    with pytest.raises(ValueError, match="unknown export format 'blackboard'"):
        render("blackboard", ["a1"], entries)


@pytest.mark.parametrize(
    "mode, now, shown",
    [
        ("now", DUE - datetime.timedelta(days=1), True),
        ("never", DUE + datetime.timedelta(days=99), False),
        ("after-deadline", DUE - datetime.timedelta(seconds=1), False),
        ("after-deadline", DUE, True),
    ],
)
def test_the_release_policy(mode, now, shown):
    assert released(mode, DUE, now) is shown


def test_after_deadline_needs_a_due_date_and_modes_are_checked():
    with pytest.raises(ValueError, match="has no due date in the gradebook"):
        released("after-deadline", None, DUE)
    with pytest.raises(ValueError, match="expected one of after-deadline, now, never"):
        released("later", DUE, DUE)


def _graded_cell(source: str, grade_id: str, score: float, points: float) -> nbformat.NotebookNode:
    cell = nbformat.v4.new_code_cell(source)
    cell.metadata["nbgrader"] = {
        "grade": True,
        "solution": False,
        "grade_id": grade_id,
        "points": points,
        "score": score,
        "locked": True,
    }
    cell.outputs = [nbformat.v4.new_output("error", ename="AssertionError", evalue="secret message", traceback=[])]
    return cell


def test_withheld_cells_keep_their_visible_part_only_and_leave_the_total():
    hidden = "assert f(1) == 1\n### BEGIN HIDDEN TESTS\nassert f(2) == 4, 'secret message'\n### END HIDDEN TESTS"
    nb = nbformat.v4.new_notebook(
        cells=[_graded_cell(hidden, "t_hidden", 0.0, 2.0), _graded_cell("assert f(0) == 0", "t_visible", 1.0, 1.0)]
    )
    resources = {"nbgrader": {"score": 1.0, "max_score": 3.0, "late_penalty": 0.0}}
    withhold = WithholdHiddenResults(withhold=True, note="later")
    nb, resources = withhold.preprocess(nb, resources)
    first, second = nb.cells
    assert first.source == "assert f(1) == 1\n# [hidden tests: later]"
    assert "secret" not in nbformat.writes(first) and first.metadata.nbgrader["grade"] is False
    assert second.outputs[0]["evalue"] == "secret message"  # a cell without hidden tests is untouched
    assert (resources["nbgrader"]["score"], resources["nbgrader"]["max_score"]) == (1.0, 1.0)
    # Positive control: not withholding changes nothing.
    again = nbformat.v4.new_notebook(cells=[_graded_cell(hidden, "t_hidden", 0.0, 2.0)])
    WithholdHiddenResults(withhold=False).preprocess(again, {"nbgrader": {}})
    assert "secret message" in nbformat.writes(again)
