"""``segutils grade`` for a term: ``--export`` to Canvas/Moodle, ``--cell`` regrades, ``--release-feedback``.

One class of the mini course (``tests/fixtures/grading/``) is graded once through the command line with
``--release-feedback after-deadline --export canvas --export moodle --export csv``: a student on time, one
late (nbgrader's late-penalty plugin: one point per hour, rounded), one with a wrong ``square``, one whose file
is not a notebook (rejected) and one registered without a submission (missing). Expected values are worked out
by hand below from the mini assignment (``test_square`` 1 point, ``test_square_float`` 1, ``test_double`` 2).
"""

from __future__ import annotations

import csv
import datetime
import html
import io
import os
import re
import shutil
import stat
import subprocess
import sys
from pathlib import Path

import nbformat
import pytest

pytest.importorskip("nbgrader")
import nbgrader_harness as h  # noqa: E402
from nbgrader.api import Gradebook  # noqa: E402
from nbgrader.utils import parse_utc  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
FIXTURES = REPO / "tests" / "fixtures" / "grading"
sys.path.insert(0, str(FIXTURES))
import cases  # noqa: E402

pytestmark = [pytest.mark.slow, pytest.mark.xdist_group("grading")]

DUE = "2024-03-01 12:00:00 UTC"
SUBMARKS = """from nbgrader.plugins import BasePlugin


class SubMarks(BasePlugin):
    def late_submission_penalty(self, student_id, score, total_seconds_late):
        return round(total_seconds_late / 3600, 0)
"""
#: student -> (first name, last name, email)
PEOPLE = {
    "on_time": ("Ada", "Lovelace", "ada@example.edu"),
    "late": ("Alan", "Turing", "alan@example.edu"),
    "wrong": ("Grace", "Hopper", "grace@example.edu"),
    "broken": ("Edsger", "Dijkstra", "ed@example.edu"),
    "absent": ("Barbara", "Liskov", "barbara@example.edu"),
}
# Worked out by hand: "late" hands in at 14:40, 2 h 40 min late: a 3-point penalty on its 4 points.
RAW = {"on_time": 4.0, "late": 4.0, "wrong": 2.0, "broken": 0.0, "absent": 0.0}
PENALTY = {"on_time": 0.0, "late": 3.0, "wrong": 0.0, "broken": 0.0, "absent": 0.0}
STATUS = {"on_time": "graded", "late": "late", "wrong": "graded", "broken": "rejected", "absent": "missing"}
# The layouts as the platforms document them (Canvas: "How do I import grades in the Gradebook?", the
# gradebook export's first columns and its "Points Possible" row; Moodle: "Grade import", CSV import with
# the same columns as its plain-text export: First name, Last name, ID number, Email address, then items).
CANVAS_HEADER = ["Student", "ID", "SIS User ID", "SIS Login ID", "Section"]
MOODLE_HEADER = ["First name", "Last name", "ID number", "Email address"]


def _env() -> dict[str, str]:
    env = dict(os.environ)
    env["PATH"] = os.pathsep.join([str(Path(sys.executable).parent), env.get("PATH", "")])
    env["PYTHONPATH"] = os.pathsep.join(p for p in [str(REPO), env.get("PYTHONPATH", "")] if p)
    return env


def grade(course: Path, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [
            sys.executable,
            "-m",
            "segutils",
            "grade",
            cases.ASSIGNMENT,
            "--course-dir",
            str(course),
            "--workers",
            "2",
            "--timeout",
            "10",
            "--no-progress",
            *h.sandbox_args(),
            *args,
        ],
        capture_output=True,
        text=True,
        env=_env(),
        timeout=1500,
        cwd=course,
    )


def scores(course: Path) -> dict[str, dict[str, float]]:
    with Gradebook(f"sqlite:///{course / 'gradebook.db'}") as gb:
        return {
            s.student.id: {g.name: float(g.score) for nb in s.notebooks for g in nb.grades}
            for s in gb.find_assignment(cases.ASSIGNMENT).submissions
        }


def page_text(course: Path, student: str) -> str:
    """The student's feedback page as plain text."""
    page = (course / "feedback" / student / cases.ASSIGNMENT / f"{cases.ASSIGNMENT}.html").read_text()
    page = re.sub(r"<(script|style)\b.*?</\1>", " ", page, flags=re.S)
    return html.unescape(re.sub(r"<[^>]+>", "", page))


@pytest.fixture(scope="module")
def graded(tmp_path_factory):
    """The class, graded once; returns (course, run)."""
    root = tmp_path_factory.mktemp("term")
    course = root / "course"
    shutil.copytree(cases.MINI_COURSE, course)
    (course / "late.py").write_text(SUBMARKS)
    with open(course / "nbgrader_config.py", "a") as config:
        config.write("\nc.AssignLatePenalties.plugin_class = 'late.SubMarks'\n")
    subprocess.run(
        [str(Path(sys.executable).parent / "nbgrader"), "generate_assignment", cases.ASSIGNMENT, "--log-level=WARN"],
        cwd=course,
        env=_env(),
        check=True,
        capture_output=True,
        timeout=600,
    )
    with Gradebook(f"sqlite:///{course / 'gradebook.db'}") as gb:
        gb.update_or_create_assignment(cases.ASSIGNMENT, duedate=parse_utc(DUE))
        for student, (first, last, email) in PEOPLE.items():
            gb.update_or_create_student(student, first_name=first, last_name=last, email=email)
    ctx = cases.Context(release=cases.read_release(course), course=course)
    export = root / "export"
    export.mkdir()
    answers = {"on_time": {}, "late": {}, "wrong": {"square": cases.WRONG["square"]}}
    stamps = {
        "on_time": "2024-03-01 11:00:00 UTC",
        "late": "2024-03-01 14:40:00 UTC",
        "wrong": "2024-03-01 10:00:00 UTC",
        "broken": "2024-03-01 09:00:00 UTC",
    }
    for student, answer in answers.items():
        (export / f"{student}.ipynb").write_text(nbformat.writes(ctx.notebook(**answer)))
    (export / "broken.ipynb").write_text("this is not a notebook")
    for student, stamp in stamps.items():
        (export / f"{student}.timestamp.txt").write_text(stamp)
    run = grade(
        course,
        "--submissions",
        str(export),
        "--release-feedback",
        "after-deadline",
        "--export",
        "canvas",
        "--export",
        "moodle",
        "--export",
        "csv",
    )
    assert run.returncode == 0, run.stdout + run.stderr
    return course, run


def _rows(path: Path) -> list[list[str]]:
    return list(csv.reader(io.StringIO(path.read_text())))


def test_canvas_export_has_the_documented_columns_and_the_penalised_scores(graded):
    course, run = graded
    rows = _rows(course / "reports" / "grades-canvas.csv")
    assert rows[0] == CANVAS_HEADER + [cases.ASSIGNMENT]
    assert rows[1][0].strip() == "Points Possible" and float(rows[1][5]) == 4.0
    by_id = {row[2]: row for row in rows[2:]}
    assert sorted(by_id) == sorted(PEOPLE)
    for student, (first, last, _) in PEOPLE.items():
        row = by_id[student]
        assert row[0] == f"{last}, {first}" and row[3] == student
        assert float(row[5]) == RAW[student] - PENALTY[student], student
    assert "late / mini: submitted 2.67 h late: late penalty 3 of 4 points" in run.stdout


def test_moodle_export_has_an_identifier_a_column_per_item_and_shows_the_penalty(graded):
    course, _ = graded
    rows = list(csv.DictReader(io.StringIO((course / "reports" / "grades-moodle.csv").read_text())))
    header = _rows(course / "reports" / "grades-moodle.csv")[0]
    assert header == MOODLE_HEADER + [cases.ASSIGNMENT, f"{cases.ASSIGNMENT} feedback"]
    by_id = {row["ID number"]: row for row in rows}
    for student, (first, last, email) in PEOPLE.items():
        row = by_id[student]
        assert (row["First name"], row["Last name"], row["Email address"]) == (first, last, email)
        assert float(row[cases.ASSIGNMENT]) == RAW[student] - PENALTY[student]
    assert "late penalty 3 of 4 points" in by_id["late"][f"{cases.ASSIGNMENT} feedback"]
    assert by_id["absent"][f"{cases.ASSIGNMENT} feedback"] == "no submission"
    assert "rejected" in by_id["broken"][f"{cases.ASSIGNMENT} feedback"]


def test_csv_export_shows_status_penalty_and_score_like_nbgrader(graded):
    course, _ = graded
    rows = {
        r["student_id"]: r for r in csv.DictReader(io.StringIO((course / "reports" / "grades-csv.csv").read_text()))
    }
    assert {s: r["status"] for s, r in rows.items()} == STATUS
    for student in PEOPLE:
        row = rows[student]
        assert (float(row["raw_score"]), float(row["late_penalty"]), float(row["score"]), float(row["max_score"])) == (
            RAW[student],
            PENALTY[student],
            RAW[student] - PENALTY[student],
            4.0,
        ), student
    # nbgrader's own export (grades.csv, written by every batch) agrees on every score.
    with open(course / "grades.csv", newline="") as handle:
        nbgrader_rows = {r["student_id"]: float(r["score"]) for r in csv.DictReader(handle)}
    assert nbgrader_rows == {s: float(r["score"]) for s, r in rows.items()}


def test_feedback_after_the_deadline_shows_hidden_names_and_messages_not_source(graded):
    course, run = graded
    assert "hidden tests' names and messages shown" in run.stdout
    text = page_text(course, "wrong")
    assert "test_square_float" in text
    assert "square(1.5) should be 2.25, got 3.0" in text  # the hidden test's message, with the student's value
    assert "math.isclose(square(1.5), 2.25)" not in text  # never its source
    assert "square(-2) should be 4" not in text


def test_feedback_before_the_deadline_shows_visible_tests_only(graded, tmp_path):
    from segutils.grading.feedback_timing import regenerate_feedback
    from segutils.grading.runner import load_course_config

    course = tmp_path / "course"
    shutil.copytree(graded[0], course)
    for path in course.rglob("*"):  # nbgrader writes the autograded files read-only
        path.chmod(path.stat().st_mode | stat.S_IWUSR)
    db = f"sqlite:///{course / 'gradebook.db'}"
    before = datetime.datetime(2024, 3, 1, 11, 59)
    line = regenerate_feedback(
        course, load_course_config(course / "nbgrader_config.py"), db, cases.ASSIGNMENT, "after-deadline", now=before
    )
    assert "visible tests only" in line
    text = page_text(course, "wrong")
    assert "should be 2.25" not in text and "got 3.0" not in text  # neither the hidden message nor the source
    assert "released after the deadline, 2024-03-01 12:00 UTC" in text
    assert "square(3) should be 9" in text  # the visible test's source is still shown
    never = regenerate_feedback(
        course,
        load_course_config(course / "nbgrader_config.py"),
        db,
        cases.ASSIGNMENT,
        "never",
        now=datetime.datetime(2030, 1, 1),
    )
    assert "visible tests only" in never and "should be 2.25" not in page_text(course, "wrong")
    # Positive control: the same pages after the deadline show the message.
    regenerate_feedback(
        course,
        load_course_config(course / "nbgrader_config.py"),
        db,
        cases.ASSIGNMENT,
        "after-deadline",
        now=datetime.datetime(2024, 3, 1, 12, 1),
    )
    assert "square(1.5) should be 2.25, got 3.0" in page_text(course, "wrong")


def test_regrading_one_cell_changes_only_its_grades_and_keeps_manual_ones(graded, tmp_path):
    course = tmp_path / "course"
    shutil.copytree(graded[0], course)
    for path in course.rglob("*"):
        path.chmod(path.stat().st_mode | stat.S_IWUSR)
    db = f"sqlite:///{course / 'gradebook.db'}"
    with Gradebook(db) as gb:  # an instructor's manual grade and comment
        gb.find_grade("test_double", cases.ASSIGNMENT, cases.ASSIGNMENT, "on_time").manual_score = 1.5
        gb.find_comment("square", cases.ASSIGNMENT, cases.ASSIGNMENT, "on_time").manual_comment = "neat"
        gb.db.commit()
    before = scores(course)
    # The hidden test of test_square_float is changed: square(2.0) == 4.0, which x + x passes too.
    source = course / "solutions" / cases.ASSIGNMENT / f"{cases.ASSIGNMENT}.ipynb"
    nb = nbformat.read(source, as_version=4)
    cell = cases.cell(nb, "test_square_float")
    cell.source = cell.source.replace(
        'assert math.isclose(square(1.5), 2.25), f"square(1.5) should be 2.25, got {square(1.5)}"',
        'assert math.isclose(square(2.0), 4.0), "square(2.0)"',
    )
    assert "square(2.0)" in cell.source
    # The hidden test of test_double is broken too (every answer fails it now), but it is not the cell
    # regraded: its grades must stay as they were although the notebooks run it again.
    other = cases.cell(nb, "test_double")
    other.source = other.source.replace("[0.0, 2.0, 4.0]", "[0.0, 2.0, 5.0]")
    assert "5.0]" in other.source
    nbformat.write(nb, source)
    run = grade(course, "--cell", "test_square_float")
    assert run.returncode == 0, run.stdout + run.stderr
    after = scores(course)
    expected = {s: dict(cells) for s, cells in before.items()}
    expected["wrong"]["test_square_float"] = 1.0  # the only grade that changes
    assert after == expected
    assert "totals changed: 1" in run.stdout and "wrong: 2 -> 3" in run.stdout
    with Gradebook(db) as gb:
        assert gb.find_grade("test_double", cases.ASSIGNMENT, cases.ASSIGNMENT, "on_time").manual_score == 1.5
        assert gb.find_comment("square", cases.ASSIGNMENT, cases.ASSIGNMENT, "on_time").manual_comment == "neat"
        assert float(gb.find_submission(cases.ASSIGNMENT, "late").late_submission_penalty) == 3.0
    bad = grade(course, "--cell", "square")
    assert bad.returncode == 2 and "--cell square: not an autograded test cell" in bad.stderr
