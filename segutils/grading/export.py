"""``segutils grade ... --export canvas|moodle|csv``: nbgrader's gradebook in a learning platform's import layout.

Every student of the gradebook gets one row, every assignment of the gradebook one column, worth what nbgrader's
own CSV export says: the score after the late penalty nbgrader computed, ``max(0, raw score - penalty)``, and 0
for a missing submission (as ``nbgrader export`` writes it).

- ``canvas``: the layout of Canvas's gradebook CSV (``Grades > Import``): ``Student`` (``Last, First``), ``ID``
  (Canvas's own user id, left empty: Canvas matches a row by any of its id columns), ``SIS User ID`` and
  ``SIS Login ID`` (nbgrader's student id), ``Section``, then one column per assignment; the second row is
  Canvas's ``Points Possible`` row. Canvas imports no comments, so the penalties are shown in the ``csv`` export
  and on the terminal.
- ``moodle``: the layout of Moodle's CSV grade import (``Grades > Import > CSV file``; the same layout as its
  plain-text export): ``First name``, ``Last name``, ``ID number`` (nbgrader's student id: map it to the users'
  ID number), ``Email address``, one column per assignment (map each to its grade item) and a
  ``<assignment> feedback`` column that states the late penalty (map it to the item's feedback).
- ``csv``: one row per student and assignment with the status (``graded``, ``late``, ``rejected``,
  ``missing``), the hours late, the raw score, the penalty, the score and the maximum.
"""

from __future__ import annotations

import csv
import io
from dataclasses import dataclass
from pathlib import Path

FORMATS = ("canvas", "moodle", "csv")
CANVAS_IDENTITY = ["Student", "ID", "SIS User ID", "SIS Login ID", "Section"]
MOODLE_IDENTITY = ["First name", "Last name", "ID number", "Email address"]
CSV_COLUMNS = [
    "student_id",
    "last_name",
    "first_name",
    "email",
    "assignment",
    "status",
    "hours_late",
    "raw_score",
    "late_penalty",
    "score",
    "max_score",
]


@dataclass(frozen=True)
class Entry:
    """One student's result on one assignment, as nbgrader's gradebook holds it."""

    student: str
    last_name: str
    first_name: str
    email: str
    assignment: str
    status: str  # graded, late, rejected or missing
    seconds_late: float
    raw_score: float
    late_penalty: float
    max_score: float

    @property
    def score(self) -> float:
        """The score after the late penalty, as ``nbgrader export`` computes it."""
        return max(0.0, self.raw_score - self.late_penalty)


def _cell(value: str) -> str:
    """Text a spreadsheet will not run as a formula (names and e-mails come from outside)."""
    return "'" + value if value[:1] in ("=", "+", "-", "@", "\t", "\r") else value


def _number(value: float) -> str:
    return f"{value:.4f}".rstrip("0").rstrip(".")


def read_entries(db_url: str, course: Path | None = None, course_id: str = "") -> tuple[list[str], list[Entry]]:
    """The assignments (by name) and one :class:`Entry` per student and assignment of the gradebook.

    A submission ``segutils grade`` rejected (its state in ``course/reports/<assignment>/state/``) is
    ``rejected``; one submitted after the due date is ``late``.
    """
    from nbgrader.api import Gradebook, MissingEntry

    from segutils.grading import state

    entries = []
    with Gradebook(db_url, course_id) as gb:
        assignments = sorted(gb.assignments, key=lambda a: (a.duedate is None, a.duedate or 0, a.name))
        names = [a.name for a in assignments]
        for student in sorted(gb.students, key=lambda s: s.id):
            for assignment in assignments:
                common = dict(
                    student=student.id,
                    last_name=student.last_name or "",
                    first_name=student.first_name or "",
                    email=student.email or "",
                    assignment=assignment.name,
                    max_score=float(assignment.max_score or 0.0),
                )
                try:
                    submission = gb.find_submission(assignment.name, student.id)
                except MissingEntry:
                    entries.append(Entry(**common, status="missing", seconds_late=0.0, raw_score=0.0, late_penalty=0.0))
                    continue
                seconds = float(submission.total_seconds_late or 0.0)
                saved = state.load_state(course, assignment.name, student.id) if course else None
                status = (
                    "rejected" if saved and saved.get("status") == "rejected" else "late" if seconds > 0 else "graded"
                )
                entries.append(
                    Entry(
                        **common,
                        status=status,
                        seconds_late=seconds,
                        raw_score=float(submission.score or 0.0),
                        late_penalty=float(submission.late_submission_penalty or 0.0),
                    )
                )
    return names, entries


def _penalty_note(entry: Entry) -> str:
    if entry.status == "late":
        return (
            f"submitted {entry.seconds_late / 3600:.2f} h late: late penalty {_number(entry.late_penalty)} of "
            f"{_number(entry.raw_score)} points"
        )
    return {"missing": "no submission", "rejected": "submission rejected (see the feedback)"}.get(entry.status, "")


def render(fmt: str, assignments: list[str], entries: list[Entry]) -> str:
    """The export file's text in format ``fmt`` (one of :data:`FORMATS`)."""
    if fmt not in FORMATS:
        raise ValueError(f"unknown export format {fmt!r}: choose one of {', '.join(FORMATS)}")
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    by_student: dict[str, dict[str, Entry]] = {}
    for entry in entries:
        by_student.setdefault(entry.student, {})[entry.assignment] = entry
    maxima = {e.assignment: e.max_score for e in entries}
    if fmt == "canvas":
        writer.writerow(CANVAS_IDENTITY + assignments)
        writer.writerow(["    Points Possible", "", "", "", ""] + [_number(maxima.get(a, 0.0)) for a in assignments])
        for student, row in by_student.items():
            first = next(iter(row.values()))
            name = ", ".join(x for x in (first.last_name, first.first_name) if x) or student
            writer.writerow([_cell(name), "", student, student, ""] + [_number(row[a].score) for a in assignments])
    elif fmt == "moodle":
        writer.writerow(MOODLE_IDENTITY + assignments + [f"{a} feedback" for a in assignments])
        for student, row in by_student.items():
            first = next(iter(row.values()))
            writer.writerow(
                [_cell(first.first_name), _cell(first.last_name), student, _cell(first.email)]
                + [_number(row[a].score) for a in assignments]
                + [_penalty_note(row[a]) for a in assignments]
            )
    else:
        writer.writerow(CSV_COLUMNS)
        for entry in entries:
            writer.writerow(
                [
                    entry.student,
                    _cell(entry.last_name),
                    _cell(entry.first_name),
                    _cell(entry.email),
                    entry.assignment,
                    entry.status,
                    f"{entry.seconds_late / 3600:.2f}",
                    _number(entry.raw_score),
                    _number(entry.late_penalty),
                    _number(entry.score),
                    _number(entry.max_score),
                ]
            )
    return buffer.getvalue()


def export(
    fmt: str, db_url: str, course: Path, course_id: str = "", path: Path | None = None
) -> tuple[Path, list[str]]:
    """Write the gradebook of ``course`` in format ``fmt`` to ``path`` (default ``reports/grades-<fmt>.csv``).

    Returns:
        the file written and one line per late penalty applied (what the terminal shows).
    """
    from segutils.grading.state import write_atomic

    assignments, entries = read_entries(db_url, course, course_id)
    path = Path(path) if path else Path(course) / "reports" / f"grades-{fmt}.csv"
    path.parent.mkdir(parents=True, exist_ok=True)
    write_atomic(path, render(fmt, assignments, entries).encode("utf-8"))
    notes = [f"{e.student} / {e.assignment}: {_penalty_note(e)}" for e in entries if e.status == "late"]
    return path, notes
