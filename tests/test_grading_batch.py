"""``segutils grade`` end to end on the mini course: one sandboxed batch of every hostile case.

The batch (``tests/fixtures/grading/cases.py``: honest, broken, hostile and unreadable
submissions, exported as a learning platform does) is graded once, through the command line,
with two workers, a 5 s cell timeout, a 1.5 GiB memory limit, a 64 MiB /tmp, a 16 MiB /dev/shm and
``--redact-hidden``. Every test
then checks a real outcome: scores read back through ``nbgrader.api.Gradebook`` against the
scores worked out by hand in ``cases.py``, files on disk, the CSV, the report, and that two honest
students get the same grades as when graded alone. Re-runs, ``--student`` and an interrupted batch
are checked on the same course.
"""

from __future__ import annotations

import csv
import html
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import nbformat
import pytest

pytest.importorskip("nbgrader")
from nbgrader.api import Gradebook  # noqa: E402

from segutils.grading import sandbox  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
FIXTURES = REPO / "tests" / "fixtures" / "grading"
sys.path.insert(0, str(FIXTURES))
import cases  # noqa: E402

pytestmark = [pytest.mark.slow, pytest.mark.xdist_group("grading")]

# The hand-worked scores of cases.py are those of in-process grading (the guard restores what a test relies on);
# two-process grading has its own hostile batch (tests/test_grading_hostile.py).
GRADE_ARGS = [
    "--workers",
    "2",
    "--timeout",
    "5",
    "--memory",
    "1.5",
    "--tmp-size",
    str(cases.TMP_MIB),
    "--shm-size",
    str(cases.SHM_MIB),
    "--no-progress",
    "--in-process",
]


def _why_no_sandbox() -> str | None:
    try:
        sandbox.check_sandbox()
    except sandbox.SandboxUnavailable as error:
        return str(error)
    return None


needs_sandbox = pytest.mark.skipif(_why_no_sandbox() is not None, reason=f"no sandbox: {_why_no_sandbox()}")


def _env() -> dict[str, str]:
    env = dict(os.environ)
    env["PATH"] = os.pathsep.join([str(Path(sys.executable).parent), env.get("PATH", "")])
    env["PYTHONPATH"] = os.pathsep.join(p for p in [str(REPO), env.get("PYTHONPATH", "")] if p)
    return env


def segutils_grade(course: Path, *args: str, timeout: float = 1500) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "segutils", "grade", cases.ASSIGNMENT, "--course-dir", str(course), *args],
        capture_output=True,
        text=True,
        env=_env(),
        timeout=timeout,
        cwd=course,
    )


def make_course(root: Path, extra_cells: list | None = None) -> tuple[Path, cases.Context]:
    """A copy of the mini course (with ``extra_cells`` appended to its source notebook), release generated."""
    course = root / "course"
    shutil.copytree(cases.MINI_COURSE, course)
    if extra_cells:
        source = course / "solutions" / cases.ASSIGNMENT / f"{cases.ASSIGNMENT}.ipynb"
        nb = nbformat.read(source, as_version=4)
        nb.cells.extend(extra_cells)
        nbformat.write(nb, source)
    subprocess.run(
        [str(Path(sys.executable).parent / "nbgrader"), "generate_assignment", cases.ASSIGNMENT, "--log-level=WARN"],
        cwd=course,
        env=_env(),
        check=True,
        capture_output=True,
        timeout=600,
    )
    return course, cases.Context(release=cases.read_release(course), course=course)


def gradebook_scores(course: Path, db_url: str | None = None) -> dict[str, dict[str, float]]:
    """Every student's autograded scores, by test cell, read back through nbgrader's API."""
    with Gradebook(db_url or f"sqlite:///{course / 'gradebook.db'}") as gb:
        return {
            s.student.id: {g.name: float(g.score) for nb in s.notebooks for g in nb.grades}
            for s in gb.find_assignment(cases.ASSIGNMENT).submissions
        }


def report_rows(course: Path) -> dict[str, str]:
    """The student rows of the HTML report as plain text."""
    text = (course / "reports" / cases.ASSIGNMENT / "report.html").read_text()
    rows = {}
    for row in re.findall(r"<tr class='[^']*'>(.*?)</tr>", text, flags=re.S):
        cells = re.findall(r"<td>(.*?)</td>", row, flags=re.S)
        rows[html.unescape(cells[0])] = html.unescape(re.sub(r"<[^>]+>", " ", " ".join(cells)))
    return rows


class Batch:
    """The graded hostile batch, shared by the tests of this module."""

    def __init__(self, root: Path) -> None:
        self.course, ctx = make_course(root)
        self.listener = socket.socket()
        self.listener.bind(("127.0.0.1", 0))
        self.listener.listen(8)
        self.listener.settimeout(0.5)
        ctx.listener_port = self.listener.getsockname()[1]
        self.submissions = root / "export"
        cases.write_submissions(self.submissions, ctx)
        started = time.monotonic()
        self.run = segutils_grade(self.course, "--submissions", str(self.submissions), "--redact-hidden", *GRADE_ARGS)
        self.seconds = time.monotonic() - started
        self.scores = gradebook_scores(self.course) if (self.course / "gradebook.db").exists() else {}
        self.states = {
            p.stem: json.loads(p.read_text())
            for p in (self.course / "reports" / cases.ASSIGNMENT / "state").glob("*.json")
        }


@pytest.fixture(scope="module")
def batch(tmp_path_factory) -> Batch:
    if _why_no_sandbox():
        pytest.skip(f"no sandbox: {_why_no_sandbox()}")
    made = Batch(tmp_path_factory.mktemp("hostile"))
    yield made
    made.listener.close()


@needs_sandbox
def test_the_batch_completes_with_every_student_graded(batch):
    assert batch.run.returncode == 0, batch.run.stdout + batch.run.stderr
    students = sorted(c.student for c in cases.CASES)
    assert sorted(batch.scores) == students
    assert sorted(batch.states) == students
    summary = batch.run.stdout
    rejected = sum(c.status == "rejected" for c in cases.CASES)
    assert f"{len(students) - rejected} graded, {rejected} rejected, 0 failed, 0 unchanged" in summary
    print(f"\n{len(students)} students graded in {batch.seconds:.0f} s")


@needs_sandbox
@pytest.mark.parametrize("case", cases.CASES, ids=lambda c: c.student)
def test_each_submission_gets_its_hand_worked_score_and_a_message(batch, case):
    assert batch.scores.get(case.student) == case.expected, case.doc
    assert batch.states[case.student]["status"] == case.status
    row = report_rows(batch.course)[case.student]
    if case.message:
        assert re.search(case.message, row), f"{case.student}: /{case.message}/ not in the report row: {row[:2000]}"


@needs_sandbox
def test_nothing_escaped_the_sandbox(batch):
    course = batch.course
    assert not (course / "pwned.txt").exists() and not (FIXTURES / "pwned.txt").exists()
    assert not (course.parent / "escaped.txt").exists() and not Path("/tmp/absolute_escape.txt").exists()
    with pytest.raises(socket.timeout):
        batch.listener.accept()  # no notebook reached the grading machine's loopback
    reference = course / "submitted" / "reference" / cases.ASSIGNMENT / "mini.ipynb"
    assert b"won = []" not in reference.read_bytes()


@needs_sandbox
def test_files_csv_and_report_are_written(batch):
    course = batch.course
    for student in batch.scores:
        assert (course / "autograded" / student / cases.ASSIGNMENT / "mini.ipynb").is_file()
        assert (course / "feedback" / student / cases.ASSIGNMENT / "mini.html").is_file()
    with open(course / "grades.csv", newline="") as handle:
        rows = {r["student_id"]: r for r in csv.DictReader(handle) if r["assignment"] == cases.ASSIGNMENT}
    assert {s: float(rows[s]["raw_score"]) for s in rows} == {s: sum(v.values()) for s, v in batch.scores.items()}
    with_timestamp = rows["with_timestamp"]["timestamp"]
    assert with_timestamp.startswith("2024-03-01 12:30:00"), with_timestamp
    text = (course / "reports" / cases.ASSIGNMENT / "report.html").read_text()
    for title in ("Score histogram", "Pass rate per test cell", "Most common failure messages", "Slowest submissions"):
        assert title in text or title.lower() in text.lower()
    assert text.count("<img ") == 4 and "no GPU" in text


@needs_sandbox
def test_the_feedback_runs_no_script_of_the_student(batch):
    # Fault 5 of #10: nbgrader's feedback showed the student's Markdown and HTML outputs as they were.
    folder = batch.course / "feedback"
    hostile = (folder / "xss_feedback" / cases.ASSIGNMENT / "mini.html").read_text()
    baseline = (folder / "reference" / cases.ASSIGNMENT / "mini.html").read_text()  # the same template, no payload
    cases.assert_no_student_script(hostile, baseline)
    assert "<strong>bold</strong>" in hostile and "<b>kept</b>" in hostile and "<b>kept html</b>" in hostile
    assert "Score: 4.0 / 4.0" in hostile


@needs_sandbox
def test_hidden_tests_are_redacted_from_feedback_but_not_from_grading(batch):
    feedback = html.unescape((batch.course / "feedback" / "wrong_square" / cases.ASSIGNMENT / "mini.html").read_text())
    autograded = (batch.course / "autograded" / "wrong_square" / cases.ASSIGNMENT / "mini.ipynb").read_text()
    assert "math.isclose(square(1.5), 2.25)" in autograded  # the hidden test ran...
    assert "math.isclose" not in feedback and "square(-2) == 4" not in feedback  # ...its source is not shown
    assert "square(1.5) should be 2.25, got 3.0" in feedback  # its message is
    assert "square(3) should be 9, got 6" in feedback


@needs_sandbox
def test_honest_students_get_the_grades_they_get_alone(batch, tmp_path):
    alone = [c for c in cases.CASES if "alone" in c.tags]
    course, ctx = make_course(tmp_path)
    cases.write_submissions(tmp_path / "export", ctx, alone)
    run = segutils_grade(course, "--submissions", str(tmp_path / "export"), *GRADE_ARGS)
    assert run.returncode == 0, run.stdout + run.stderr
    solo = gradebook_scores(course)
    assert solo == {c.student: batch.scores[c.student] for c in alone}
    assert solo == {c.student: c.expected for c in alone}


@needs_sandbox
def test_a_rerun_skips_everyone_and_student_regrades_only_that_student(batch):
    course = batch.course
    autograded = course / "autograded" / "wrong_square" / cases.ASSIGNMENT / "mini.ipynb"
    before_mtime = autograded.stat().st_mtime_ns
    before = gradebook_scores(course)
    run = segutils_grade(course, "--submissions", str(batch.submissions), "--redact-hidden", *GRADE_ARGS)
    assert run.returncode == 0, run.stdout + run.stderr
    assert f"0 graded, 0 rejected, 0 failed, {len(before)} unchanged (skipped)" in run.stdout
    assert autograded.stat().st_mtime_ns == before_mtime and gradebook_scores(course) == before

    graded_at = {s: batch.states[s]["graded_at"] for s in batch.states}
    time.sleep(1.1)
    run = segutils_grade(
        course,
        "--submissions",
        str(batch.submissions),
        "--redact-hidden",
        "--student",
        "wrong_square",
        "--force",
        *GRADE_ARGS,
    )
    assert run.returncode == 0, run.stdout + run.stderr
    assert "1 graded, 0 rejected, 0 failed, 0 unchanged" in run.stdout
    assert gradebook_scores(course) == before
    states = {
        p.stem: json.loads(p.read_text()) for p in (course / "reports" / cases.ASSIGNMENT / "state").glob("*.json")
    }
    changed = sorted(s for s in states if states[s]["graded_at"] != graded_at[s])
    assert changed == ["wrong_square"]
    assert autograded.stat().st_mtime_ns != before_mtime

    run = segutils_grade(course, "--student", "nobody", *GRADE_ARGS)
    assert run.returncode == 2 and "nobody" in run.stderr


def _processes_working_in(folder: Path) -> list[str]:
    """Command lines of the processes whose working directory is ``folder`` (a batch's job servers,
    jobs and sandboxes run there)."""
    found = []
    for proc in Path("/proc").iterdir():
        try:
            if proc.name.isdigit() and Path(os.readlink(proc / "cwd")) == folder:
                found.append((proc / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")[:200])
        except OSError:
            continue
    return found


@needs_sandbox
@pytest.mark.parametrize("how", [signal.SIGINT, signal.SIGKILL], ids=["ctrl-c", "crash"])
def test_an_interrupted_batch_loses_nothing_already_graded(tmp_path, how):
    # Graded in name order: "blank" first, then "infinite_loop" (10 s of cell timeouts) is in flight when it stops.
    chosen = [
        c for c in cases.CASES if c.student in ("reference", "wrong_square", "blank", "infinite_loop", "torch_warning")
    ]
    course, ctx = make_course(tmp_path)
    cases.write_submissions(tmp_path / "export", ctx, chosen)
    state_dir = course / "reports" / cases.ASSIGNMENT / "state"
    process = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "segutils",
            "grade",
            cases.ASSIGNMENT,
            "--course-dir",
            str(course),
            "--submissions",
            str(tmp_path / "export"),
            "--workers",
            "1",
            "--timeout",
            "5",
            "--no-progress",
            "--in-process",
        ],
        env=_env(),
        cwd=course,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    deadline = time.monotonic() + 900
    while not list(state_dir.glob("*.json")) and process.poll() is None and time.monotonic() < deadline:
        time.sleep(0.2)
    process.send_signal(how)
    out, err = process.communicate(timeout=300)
    deadline = time.monotonic() + 1  # the kernel kills them at once (PR_SET_PDEATHSIG)
    while _processes_working_in(course) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert _processes_working_in(course) == [], "a job outlived its batch"
    finished = sorted(p.stem for p in state_dir.glob("*.json"))
    assert 1 <= len(finished) < len(chosen), (out, err)
    if how == signal.SIGINT:
        assert process.returncode == 130 and "interrupted" in err
    run = segutils_grade(  # the same mode again: a batch in the other mode would regrade everyone
        course,
        "--submissions",
        str(tmp_path / "export"),
        "--workers",
        "2",
        "--timeout",
        "5",
        "--no-progress",
        "--in-process",
    )
    assert run.returncode == 0, run.stdout + run.stderr
    assert f"{len(finished)} unchanged (skipped)" in run.stdout
    assert gradebook_scores(course) == {c.student: c.expected for c in chosen}


def test_no_sandbox_grades_the_same_and_the_report_says_so(tmp_path):
    chosen = [c for c in cases.CASES if c.student in ("reference", "wrong_square", "os_exit")]
    course, ctx = make_course(tmp_path)
    cases.write_submissions(tmp_path / "export", ctx, chosen)
    run = segutils_grade(course, "--submissions", str(tmp_path / "export"), "--no-sandbox", *GRADE_ARGS)
    assert run.returncode == 0, run.stdout + run.stderr
    assert gradebook_scores(course) == {c.student: c.expected for c in chosen}
    assert "OFF (--no-sandbox)" in (course / "reports" / cases.ASSIGNMENT / "report.html").read_text()


GPU_TEST = """# [1 point] double keeps a tensor on its GPU (skipped without CUDA, like the course's own GPU tests)
if torch.cuda.is_available():
    visible = torch.cuda.device_count()
    assert visible == 1, f"the grader should show one GPU per notebook, got {visible}"
    out = double(torch.arange(3.0, device="cuda"))
    assert out.device.type == "cuda", f"double of a CUDA tensor should stay on CUDA, got a tensor on {out.device}"
    testing.assert_close(out.cpu(), torch.tensor([0.0, 2.0, 4.0]), msg="double(arange(3)) on CUDA")
else:
    print("skipped: no CUDA device")
"""


def test_gpu_tests_run_on_the_workers_gpu_or_are_skipped_with_a_note(tmp_path):
    """On a GPU machine every notebook sees exactly its worker's GPU and the CUDA test runs (an answer that
    moves tensors to the CPU fails it); without one the test is skipped and the report says why."""
    import torch

    gpus = len(sandbox.discover_gpus()) if torch.cuda.is_available() else 0
    test_cell = nbformat.v4.new_code_cell(
        GPU_TEST,
        metadata={
            "nbgrader": {
                "grade": True,
                "grade_id": "test_double_cuda",
                "locked": True,
                "points": 1,
                "schema_version": 3,
                "solution": False,
                "task": False,
            }
        },
    )
    course, ctx = make_course(tmp_path, [test_cell])
    export = tmp_path / "export"
    export.mkdir()
    for student, answers in {
        "on_device": {},
        "moves_to_cpu": {"double": "def double(t):\n    return t.cpu() * 2"},
    }.items():
        (export / f"{student}.ipynb").write_text(nbformat.writes(ctx.notebook(**answers)))
    workers = str(max(1, min(2, gpus)))
    run = segutils_grade(
        course,
        "--submissions",
        str(export),
        "--workers",
        workers,
        "--no-progress",
        "--in-process",
        *(["--gpus", workers] if gpus else []),
        *([] if _why_no_sandbox() is None else ["--no-sandbox"]),
    )
    assert run.returncode == 0, run.stdout + run.stderr
    full = {**cases.FULL, "test_double_cuda": 1.0}
    assert gradebook_scores(course) == {
        "on_device": full,
        "moves_to_cpu": {**full, "test_double_cuda": 0.0 if gpus else 1.0},
    }
    states = {
        p.stem: json.loads(p.read_text()) for p in (course / "reports" / cases.ASSIGNMENT / "state").glob("*.json")
    }
    assert {s: st["cuda_devices"] for s, st in states.items()} == {
        "on_device": int(gpus > 0),
        "moves_to_cpu": int(gpus > 0),
    }
    report = (course / "reports" / cases.ASSIGNMENT / "report.html").read_text()
    if gpus:
        assert f"GPUs: {workers}" in report and "should stay on CUDA" in report_rows(course)["moves_to_cpu"]
    else:
        assert "no GPU" in report


# nbgrader's documented example of a late-penalty plugin (docs/source/plugins/late-plugin.rst), in the course's late.py
SUBMARKS = """from nbgrader.plugins import BasePlugin


class SubMarks(BasePlugin):
    def late_submission_penalty(self, student_id, score, total_seconds_late):
        \"\"\"Penalty of 1 mark per hour late\"\"\"
        hours_late = total_seconds_late / 3600
        return round(hours_late, 0)
"""
DUE = "2024-03-01 12:00:00 UTC"
#: student -> (answers, timestamp, seconds late)
LATE_CLASS = {
    "on_time": ({}, "2024-03-01 11:00:00 UTC", 0.0),
    "late": ({}, "2024-03-01 14:40:00 UTC", 9600.0),
    "late_wrong": ({"square": cases.WRONG["square"]}, "2024-03-02 12:00:00 UTC", 86400.0),
}
#: method -> the late penalty each student gets, worked out from nbgrader's rules: "none" assigns none,
#: "zero" takes the whole score (4 and 2 points), SubMarks one point per hour late, rounded (2.67 h -> 3;
#: 24 h -> 24, which nbgrader caps at the score: 2).
PENALTIES = {
    "none": {"on_time": 0.0, "late": 0.0, "late_wrong": 0.0},
    "zero": {"on_time": 0.0, "late": 4.0, "late_wrong": 2.0},
    "custom": {"on_time": 0.0, "late": 3.0, "late_wrong": 2.0},
}


@pytest.mark.parametrize("method", sorted(PENALTIES))
def test_late_submissions_are_graded_under_every_penalty_method(tmp_path, method):
    """Fault 2 of #10: every late submission's job failed (DetachedInstanceError in a log message) and was
    retried on every run. Now each is graded, the penalty is nbgrader's, the on-time student is untouched."""
    from nbgrader.api import Gradebook
    from nbgrader.utils import parse_utc

    course, ctx = make_course(tmp_path)
    config = course / "nbgrader_config.py"
    if method == "custom":
        (course / "late.py").write_text(SUBMARKS)
        config.write_text(config.read_text() + "\nc.AssignLatePenalties.plugin_class = 'late.SubMarks'\n")
    else:
        config.write_text(config.read_text() + f"\nc.LateSubmissionPlugin.penalty_method = {method!r}\n")
    db = f"sqlite:///{course / 'gradebook.db'}"
    with Gradebook(db) as gb:
        gb.update_or_create_assignment(cases.ASSIGNMENT, duedate=parse_utc(DUE))
    export = tmp_path / "export"
    export.mkdir()
    for student, (answers, stamp, _) in LATE_CLASS.items():
        (export / f"{student}.ipynb").write_text(nbformat.writes(ctx.notebook(**answers)))
        (export / f"{student}.timestamp.txt").write_text(stamp)
    args = ["--workers", "2", "--timeout", "5", "--no-progress", "--in-process"] + (
        [] if _why_no_sandbox() is None else ["--no-sandbox"]
    )
    run = segutils_grade(course, "--submissions", str(export), *args)
    assert run.returncode == 0, run.stdout + run.stderr
    assert "3 graded, 0 rejected, 0 failed" in run.stdout
    assert gradebook_scores(course) == {"on_time": cases.FULL, "late": cases.FULL, "late_wrong": cases.SQUARE_WRONG}
    with Gradebook(db) as gb:
        late = {s: gb.find_submission(cases.ASSIGNMENT, s).total_seconds_late for s in LATE_CLASS}
        penalty = {
            s: float(gb.find_submission_notebook("mini", cases.ASSIGNMENT, s).late_submission_penalty or 0)
            for s in LATE_CLASS
        }
    assert late == {s: seconds for s, (_, _, seconds) in LATE_CLASS.items()}
    assert penalty == PENALTIES[method]
    with open(course / "grades.csv", newline="") as handle:
        rows = {r["student_id"]: r for r in csv.DictReader(handle)}
    raw = {"on_time": 4.0, "late": 4.0, "late_wrong": 2.0}
    assert {s: float(rows[s]["score"]) for s in LATE_CLASS} == {s: raw[s] - PENALTIES[method][s] for s in LATE_CLASS}
    states = {
        s: json.loads((course / "reports" / cases.ASSIGNMENT / "state" / f"{s}.json").read_text()) for s in LATE_CLASS
    }
    assert {s: st["status"] for s, st in states.items()} == dict.fromkeys(LATE_CLASS, "graded")
    assert any(f"late penalty: {PENALTIES[method]['late']:g} points" in n for n in states["late"]["notes"])
    assert not any("after the due date" in n for n in states["on_time"]["notes"])
