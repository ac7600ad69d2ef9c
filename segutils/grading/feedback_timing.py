"""``segutils grade ... --release-feedback after-deadline|now|never``: when students see hidden-test results.

The feedback pages are written again from the autograded notebooks and the gradebook (nothing is executed):

- ``now``: every test cell's result, the hidden tests' messages included; never their source (the hidden
  region becomes one comment line, a failure's traceback its last line: ``AssertionError: <message>``);
- ``after-deadline``: before the assignment's due date (nbgrader's ``duedate``) as ``never``, after it as
  ``now``; run the same command again once the deadline has passed (unchanged submissions are not regraded);
- ``never``: visible tests only. A test cell that holds hidden tests shows its visible part, no output and no
  score (one cell runs the visible and the hidden checks together, so its outcome would tell the hidden
  result), and a note; the page's total counts the other cells only.
"""

from __future__ import annotations

import datetime
from pathlib import Path
from typing import Any

from nbformat import NotebookNode, v4
from nbgrader import utils
from nbgrader.preprocessors import NbGraderPreprocessor
from traitlets import Bool, Unicode

from segutils.grading.post import MODES  # noqa: E402

BEGIN, END = "BEGIN HIDDEN TESTS", "END HIDDEN TESTS"


class WithholdHiddenResults(NbGraderPreprocessor):
    """Feedback with the visible tests only (runs after ``GetGrades``, before the redaction)."""

    withhold = Bool(False, help="leave the results of the test cells with hidden tests out").tag(config=True)
    note = Unicode("results of the hidden tests are not released", help="what such a cell shows").tag(config=True)

    def preprocess(self, nb: NotebookNode, resources: dict) -> tuple[NotebookNode, dict]:
        if not self.withhold:
            return nb, resources
        shown = maximum = 0.0
        for cell in nb.cells:
            meta = cell.metadata.get("nbgrader", {})
            if not utils.is_grade(cell):
                continue
            if cell.cell_type == "code" and not utils.is_solution(cell) and BEGIN in cell.source:
                self._withhold(cell)
                continue
            shown += float(meta.get("score") or 0.0)
            maximum += float(meta.get("points") or 0.0)
        info = resources.setdefault("nbgrader", {})
        info["score"] = max(0.0, shown - float(info.get("late_penalty") or 0.0))
        info["max_score"] = maximum
        return nb, resources

    def _withhold(self, cell: NotebookNode) -> None:
        kept, inside = [], False
        for line in cell.source.split("\n"):
            if BEGIN in line:
                inside = True
                indent = line[: len(line) - len(line.lstrip())]
                kept.append(f"{indent}# [hidden tests: {self.note}]")
            elif END in line:
                inside = False
            elif not inside:
                kept.append(line)
        cell.source = "\n".join(kept)
        cell.outputs = [v4.new_output("stream", name="stdout", text=f"[{self.note}]\n")]
        cell.execution_count = None
        meta = cell.metadata.nbgrader
        meta["grade"] = False  # no score on the page: the template lists graded cells only
        meta.pop("score", None)
        meta.pop("points", None)


def released(mode: str, due: datetime.datetime | None, now: datetime.datetime) -> bool:
    """Whether hidden-test results are shown under ``mode`` at ``now`` (UTC, naive as nbgrader stores it)."""
    if mode not in MODES:
        raise ValueError(f"--release-feedback: expected one of {', '.join(MODES)}, got {mode!r}")
    if mode == "after-deadline" and due is None:
        raise ValueError(
            "--release-feedback after-deadline: the assignment has no due date in the gradebook "
            "(nbgrader db assignment add ASSIGNMENT --duedate='2027-03-01 23:59:00 UTC')"
        )
    return mode == "now" or (mode == "after-deadline" and now >= due)


def regenerate_feedback(
    course: Path,
    cfg: Any,
    db_url: str,
    assignment: str,
    mode: str,
    now: datetime.datetime | None = None,
    students: list[str] | None = None,
) -> str:
    """Write ``feedback/<student>/<assignment>/`` again for every autograded student under ``mode``.

    Returns:
        one line saying what the pages show.
    """
    from nbconvert.preprocessors import CSSHTMLHeaderPreprocessor
    from nbgrader.api import Gradebook
    from nbgrader.converters import GenerateFeedback
    from nbgrader.coursedir import CourseDirectory
    from nbgrader.preprocessors import GetGrades

    from segutils.grading.preprocessors import RedactHiddenTests
    from segutils.grading.sanitize import configure_feedback

    now = now or datetime.datetime.now(datetime.timezone.utc).replace(tzinfo=None)
    with Gradebook(db_url) as gb:
        due = gb.find_assignment(assignment).duedate
    show = released(mode, due, now)
    cfg = cfg.copy()
    cfg.CourseDirectory.root = str(course)
    cfg.CourseDirectory.db_url = db_url
    cfg.GenerateFeedback.preprocessors = [
        GetGrades,
        WithholdHiddenResults,
        RedactHiddenTests,
        CSSHTMLHeaderPreprocessor,
    ]
    cfg.WithholdHiddenResults.withhold = not show
    cfg.WithholdHiddenResults.note = (
        f"results released after the deadline, {due:%Y-%m-%d %H:%M} UTC"
        if mode == "after-deadline"
        else "results not released"
    )
    cfg.RedactHiddenTests.enabled = True
    configure_feedback(cfg)
    layout = CourseDirectory(config=cfg)
    autograded = Path(course) / layout.autograded_directory
    names = sorted(p.parent.name for p in autograded.glob(f"*/{assignment}") if p.is_dir())
    for student in [s for s in names if students is None or s in students]:
        coursedir = CourseDirectory(config=cfg)
        coursedir.assignment_id = assignment
        coursedir.student_id = student
        converter = GenerateFeedback(coursedir=coursedir, config=cfg)
        converter.force = True
        converter.start()
    if show:
        return f"feedback: hidden tests' names and messages shown (never their source) [{mode}]"
    return f"feedback: visible tests only [{mode}{f', due {due:%Y-%m-%d %H:%M} UTC' if due else ''}]"
