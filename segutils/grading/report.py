"""The summary report of a grading batch: one self-contained HTML file with plots.

Sections: totals; score histogram; pass rate per test cell; most common failure messages;
slowest submissions (notebook execution vs. the rest); submissions that needed attention
(rejected, failed, tampering restored or detected); the test cells whose points were measured in
the student's process (two-process grading: operator counts, delegation, device checks, which the
student's code could influence); one row per student with their score, status, time and messages.

Everything a student controls (messages, notes, names) is text here: HTML-escaped in the page,
drawn without matplotlib's mathtext in the plots (an exception message ``$\\alpha$`` or a lone
``$`` is shown as written), and with control characters escaped on the terminal (:func:`printable`).
"""

from __future__ import annotations

import base64
import html
import io
import re
from collections import Counter
from collections.abc import Iterable
from pathlib import Path
from typing import Any

_ANSI = re.compile(r"\x1b\[[0-9;]*[A-Za-z]")
_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f\u2028\u2029\u202a-\u202e\u2066-\u2069]")


def printable(text: Any) -> str:
    """``text`` safe for a terminal or a log line: control characters (escape sequences, newlines,
    carriage returns, bidirectional overrides) shown as ``\\x1b``, ``\\n``... instead of acting."""
    return _CONTROL.sub(lambda m: m.group().encode("unicode_escape").decode("ascii"), str(text))


def _labelled_barh(ax, labels: list[str], widths: list[float], **kwargs) -> None:
    """Horizontal bars labelled with ``labels`` as plain text (no mathtext, duplicates kept apart)."""
    positions = list(range(len(labels)))
    ax.barh(positions, widths, **kwargs)
    ax.set_yticks(positions, labels=labels, parse_math=False)


def failure_message(cell: dict) -> str:
    """``Name: first line of the message`` of a failed test cell."""
    evalue = _ANSI.sub("", str(cell.get("evalue", ""))).strip().splitlines()
    text = f"{cell.get('ename') or 'Error'}: {evalue[0] if evalue else ''}".strip()
    return text[:160]


def _failed(cell: dict) -> bool:
    return cell.get("auto") is not False and float(cell.get("score", 0.0)) < float(cell.get("max_score", 0.0))


#: How the report and the feedback mark a test's points that the student's process measured.
MEASURED_IN_STUDENT = "measured in the student's process"


def measured_checks(cell: dict) -> list[str]:
    """The checks of a test cell that ran in the student's process (``measured_in_student``), as text."""
    checks = cell.get("measured_in_student")
    return [str(c) for c in checks][:20] if isinstance(checks, list) else []


def summarize(results: Iterable[dict]) -> dict[str, Any]:
    """The numbers the report shows, from the students' result summaries."""
    results = sorted(results, key=lambda r: r["student"])
    cells: dict[str, list[bool]] = {}
    messages: Counter[str] = Counter()
    measured: dict[str, set[str]] = {}
    for result in results:
        for gid, cell in result.get("cells", {}).items():
            if cell.get("auto") is False:
                continue
            if measured_checks(cell):
                measured.setdefault(gid, set()).update(measured_checks(cell))
            cells.setdefault(gid, []).append(not _failed(cell))
            if _failed(cell):
                messages[failure_message(cell)] += 1
    statuses = Counter(r.get("status", "?") for r in results)
    return {
        "students": len(results),
        "statuses": dict(statuses),
        "pass_rate": {gid: sum(v) / len(v) for gid, v in cells.items() if v},
        "messages": messages.most_common(15),
        "slowest": sorted(results, key=lambda r: -float(r.get("seconds", 0.0)))[:10],
        "fractions": [float(r["score"]) / float(r["max_score"]) for r in results if float(r.get("max_score") or 0) > 0],
        "measured": {gid: sorted(checks) for gid, checks in sorted(measured.items())},
        "results": results,
    }


def _figure_html(fig) -> str:
    """The figure as an inline PNG whose alt text is its title."""
    title = fig.axes[0].get_title() if fig.axes else "plot"
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=100, bbox_inches="tight")
    import matplotlib.pyplot as plt

    plt.close(fig)
    data = base64.b64encode(buffer.getvalue()).decode()
    return f'<img alt="{html.escape(title)}" src="data:image/png;base64,{data}"/>'


def prepare_report() -> None:
    """Import what :func:`write_report` draws with (matplotlib, about 0.5 s), ahead of the report: the batch
    calls it in a thread once the last jobs run and a worker slot is idle."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot  # noqa: F401


def _plots(summary: dict) -> dict[str, str]:
    prepare_report()
    import matplotlib.pyplot as plt

    plots = {}
    fig, ax = plt.subplots(figsize=(6, 3))
    ax.hist(
        [100 * f for f in summary["fractions"]], bins=[i * 10 for i in range(11)], color="#4c72b0", edgecolor="white"
    )
    ax.set_xlabel("score (% of the maximum)")
    ax.set_ylabel("students")
    ax.set_title("Score histogram")
    plots["histogram"] = _figure_html(fig)

    rates = summary["pass_rate"]
    fig, ax = plt.subplots(figsize=(6, 0.6 + 0.28 * max(1, len(rates))))
    names = list(rates)[::-1]
    _labelled_barh(ax, names, [100 * rates[n] for n in names], color="#55a868")
    ax.set_xlim(0, 100)
    ax.set_xlabel("students passing (%)")
    ax.set_title("Pass rate per test cell")
    plots["pass_rate"] = _figure_html(fig)

    messages = summary["messages"][:10]
    fig, ax = plt.subplots(figsize=(7, 0.6 + 0.3 * max(1, len(messages))))
    labels = [m if len(m) <= 70 else m[:67] + "..." for m, _ in messages][::-1]
    _labelled_barh(ax, labels, [c for _, c in messages][::-1], color="#c44e52")
    ax.set_xlabel("failed test cells")
    ax.set_title("Most common failure messages")
    plots["messages"] = _figure_html(fig)

    slowest = summary["slowest"]
    fig, ax = plt.subplots(figsize=(6, 0.6 + 0.3 * max(1, len(slowest))))
    names = [r["student"] for r in slowest][::-1]
    execution = [float(r.get("exec_seconds", 0.0)) for r in slowest][::-1]
    rest = [max(0.0, float(r.get("seconds", 0.0)) - e) for r, e in zip(slowest[::-1], execution)]
    _labelled_barh(ax, names, execution, color="#8172b2", label="notebook execution")
    ax.barh(list(range(len(names))), rest, left=execution, color="#ccb974", label="kernel start, sandbox, nbgrader")
    ax.set_xlabel("seconds")
    ax.set_title("Slowest submissions")
    ax.legend(loc="lower right", fontsize=8)
    plots["slowest"] = _figure_html(fig)
    return plots


def _e(text: Any) -> str:
    return html.escape(_ANSI.sub("", str(text)))


def write_report(path: Path, assignment: str, results: Iterable[dict], meta: dict[str, Any]) -> Path:
    """Write the HTML report of ``assignment`` to ``path``.

    Args:
        path: the HTML file to write.
        assignment: the assignment id.
        results: one summary per student (see :meth:`segutils.grading.runner.GradingResult.summary`).
        meta: ``{"when": ..., "notes": [...], ...}`` shown at the top (strings).
    """
    summary = summarize(results)
    if summary["students"] == 0:
        raise ValueError(f"no graded submissions of {assignment!r} to report on")
    plots = _plots(summary)
    rows = []
    for r in summary["results"]:
        failed = [f"<b>{_e(g)}</b>: {_e(failure_message(c))}" for g, c in r.get("cells", {}).items() if _failed(c)]
        notes = [_e(n) for n in r.get("notes", [])]
        for gid, cell in r.get("cells", {}).items():
            if cell.get("restored"):
                notes.append(f"{_e(gid)}: restored before the test: {_e(', '.join(cell['restored']))}")
            if measured_checks(cell):
                notes.append(f"{_e(gid)}: {_e(MEASURED_IN_STUDENT)}: {_e(', '.join(measured_checks(cell)))}")
        message = [_e(r["message"])] if r.get("message") else []
        rows.append(
            f"<tr class='{_e(r.get('status'))}'><td>{_e(r['student'])}</td><td>{_e(r.get('status'))}</td>"
            f"<td>{float(r.get('score', 0)):g} / {float(r.get('max_score', 0)):g}</td>"
            f"<td>{float(r.get('seconds', 0)):.1f}</td><td>{'<br>'.join(message + failed + notes)}</td></tr>"
        )
    attention = []
    for r in summary["results"]:
        flags = []
        if r.get("status") in ("rejected", "failed"):
            flags.append(f"{_e(r['status'])}: {_e(r.get('message', ''))}")
        for gid, cell in r.get("cells", {}).items():
            if cell.get("tampered"):
                flags.append(f"{_e(gid)}: replaced while the test ran: {_e(', '.join(cell['tampered']))} (scored 0)")
            elif cell.get("restored"):
                flags.append(f"{_e(gid)}: restored before the test: {_e(', '.join(cell['restored']))}")
        if flags:
            attention.append(f"<li><b>{_e(r['student'])}</b>: {'; '.join(flags)}</li>")
    messages = "".join(f"<tr><td>{c}</td><td>{_e(m)}</td></tr>" for m, c in summary["messages"])
    measured = "".join(
        f"<tr><td>{_e(gid)}</td><td>{_e(', '.join(checks))}</td></tr>" for gid, checks in summary["measured"].items()
    )
    measured_section = (
        (
            f"<h2>Points {_e(MEASURED_IN_STUDENT)}</h2>"
            "<p>These test cells ran checks in the student's process, the only one that sees the operators the "
            "student's code dispatches: the student's code could influence what they measured. Values, shapes, "
            "gradients and model quality were judged in the grader.</p>"
            f"<table><tr><th>test cell</th><th>checks</th></tr>{measured}</table>"
        )
        if measured
        else ""
    )
    statuses = ", ".join(f"{n} {s}" for s, n in sorted(summary["statuses"].items()))
    meta_notes = "".join(f"<li>{_e(n)}</li>" for n in meta.get("notes", []))
    document = f"""<!DOCTYPE html>
<html><head><meta charset="utf-8"><title>Grading report: {_e(assignment)}</title>
<style>
body {{ font-family: sans-serif; margin: 2em; max-width: 1100px; }}
table {{ border-collapse: collapse; margin: 1em 0; }} td, th {{ border: 1px solid #ccc; padding: 4px 8px;
vertical-align: top; font-size: 90%; }} tr.rejected td, tr.failed td {{ background: #fbeaea; }}
.plots img {{ max-width: 48%; margin: 0.5em; vertical-align: top; }}
</style></head><body>
<h1>Grading report: {_e(assignment)}</h1>
<p>{summary["students"]} students ({_e(statuses)}). {_e(meta.get("when", ""))}</p>
<ul>{meta_notes}</ul>
<div class="plots">{plots["histogram"]}{plots["pass_rate"]}{plots["messages"]}{plots["slowest"]}</div>
<h2>Most common failure messages</h2>
<table><tr><th>cells</th><th>message</th></tr>{messages}</table>
<h2>Needing attention</h2><ul>{"".join(attention) or "<li>none</li>"}</ul>
{measured_section}
<h2>Students</h2>
<table><tr><th>student</th><th>status</th><th>score</th><th>seconds</th><th>messages</th></tr>{"".join(rows)}</table>
</body></html>
"""
    from segutils.grading.state import write_atomic

    write_atomic(Path(path), document.encode("utf-8"))
    return Path(path)
