"""``segutils grade``: fast unit tests of its parts (no kernel is started here).

The end-to-end batches are in ``tests/test_grading_batch.py`` (sandboxed, hostile submissions),
``tests/test_grading_cluster.py`` (Dask + PostgreSQL) and ``tests/test_grading_benchmark.py``.
"""

from __future__ import annotations

import io
import json
import stat
import sys
import zipfile
from dataclasses import replace
from html import escape as html_escape
from pathlib import Path

import nbformat
import pytest

from segutils.grading import cluster, importer, report, sandbox, state
from segutils.grading.preprocessors import RedactHiddenTests, cell_plan, clean_output, imports_of
from segutils.grading.runner import GradingJob, check_submission, safe_relpath

FIXTURES = Path(__file__).resolve().parent / "fixtures" / "grading"
sys.path.insert(0, str(FIXTURES))
import cases  # noqa: E402

RELEASE_JSON = json.dumps(
    nbformat.v4.new_notebook(
        cells=[
            nbformat.v4.new_code_cell(
                "x = 1",
                metadata={"nbgrader": {"grade_id": "square", "solution": True, "grade": False, "locked": False}},
            ),
        ]
    )
)


def _zip(members: dict[str, bytes], links: dict[str, str] | None = None) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        for name, data in members.items():
            archive.writestr(name, data)
        for name, target in (links or {}).items():
            info = zipfile.ZipInfo(name)
            info.external_attr = (stat.S_IFLNK | 0o777) << 16
            archive.writestr(info, target)
    return buffer.getvalue()


# -- importer ---------------------------------------------------------------------------------------
def test_flat_folder_is_imported_into_nbgraders_layout(tmp_path):
    source, submitted = tmp_path / "export", tmp_path / "course" / "submitted"
    source.mkdir()
    (source / "alice.ipynb").write_bytes(b"alice's notebook")
    (source / "alice.timestamp.txt").write_bytes(b"2024-03-01 12:30:00.000000 UTC")
    (source / "bob.zip").write_bytes(
        _zip({"bob/answers.ipynb": b"bob's", "bob/data.csv": b"1,2", "bob/timestamp.txt": b"2024-03-02 08:00:00 UTC"})
    )
    (source / "carol.zip").write_bytes(
        _zip(
            {"mini.ipynb": b"carol's", "../../escaped.txt": b"x", "/tmp/segutils_abs_escape.txt": b"x"},
            links={"link": "/etc/passwd"},
        )
    )
    (source / "notes.txt").write_bytes(b"not a submission")
    (source / "bad id!.ipynb").write_bytes(b"{}")
    got = importer.import_submissions(source, submitted, "mini", ["mini.ipynb"])

    assert got.students == ["alice", "bob", "carol"]
    read = lambda *p: (submitted.joinpath(*p)).read_bytes()  # noqa: E731
    assert read("alice", "mini", "mini.ipynb") == b"alice's notebook"
    assert read("alice", "mini", "timestamp.txt") == b"2024-03-01 12:30:00.000000 UTC"
    assert read("bob", "mini", "mini.ipynb") == b"bob's"  # renamed, common folder stripped
    assert read("bob", "mini", "data.csv") == b"1,2"
    assert not (submitted / "bob" / "mini" / "timestamp.txt").exists()  # the student's own file: ignored
    carol = sorted(
        p.relative_to(submitted / "carol" / "mini").as_posix() for p in (submitted / "carol" / "mini").rglob("*")
    )
    assert carol == ["mini.ipynb"]
    assert not (tmp_path / "escaped.txt").exists() and not Path("/tmp/segutils_abs_escape.txt").exists()
    refusals = " ".join(got.notes["carol"])
    assert refusals.count("refused") == 3 and "link" in refusals
    assert any("notes.txt" in p for p in got.problems) and any("bad id!" in p for p in got.problems)


def test_nbgrader_layout_is_copied_and_a_reimport_changes_nothing(tmp_path):
    source, submitted = tmp_path / "in", tmp_path / "submitted"
    (source / "dave" / "mini").mkdir(parents=True)
    (source / "dave" / "mini" / "mini.ipynb").write_bytes(b"v1")
    (source / "erin" / "other").mkdir(parents=True)  # another assignment only: not a student of mini
    assert importer.import_submissions(source, submitted, "mini", ["mini.ipynb"]).students == ["dave"]
    target = submitted / "dave" / "mini" / "mini.ipynb"
    before = target.stat().st_mtime_ns
    importer.import_submissions(source, submitted, "mini", ["mini.ipynb"])
    assert target.stat().st_mtime_ns == before
    (source / "dave" / "mini" / "mini.ipynb").write_bytes(b"v2")
    importer.import_submissions(source, submitted, "mini", ["mini.ipynb"])
    assert target.read_bytes() == b"v2"


def test_a_bad_timestamp_is_dropped_with_a_note(tmp_path):
    source = tmp_path / "in"
    source.mkdir()
    (source / "frank.zip").write_bytes(_zip({"mini.ipynb": b"nb", "timestamp.txt": b"yesterday-ish"}))
    got = importer.import_submissions(source, tmp_path / "submitted", "mini", ["mini.ipynb"])
    assert not (tmp_path / "submitted" / "frank" / "mini" / "timestamp.txt").exists()
    assert any("timestamp" in n for n in got.notes["frank"])


def test_a_timestamp_inside_a_zip_never_replaces_the_collections(tmp_path):
    # Fault 1 of #10: a late student backdated their submission with a timestamp.txt in their zip.
    source, submitted = tmp_path / "in", tmp_path / "submitted"
    source.mkdir()
    backdated = b"2020-01-01 00:00:00 UTC"
    (source / "gina.zip").write_bytes(_zip({"gina/mini.ipynb": b"nb", "gina/timestamp.txt": backdated}))
    (source / "gina.timestamp.txt").write_bytes(b"2024-03-05 09:00:00 UTC")
    (source / "hugo.zip").write_bytes(_zip({"mini.ipynb": b"nb", "timestamp.txt": backdated}))  # no collection time
    got = importer.import_submissions(source, submitted, "mini", ["mini.ipynb"])
    assert (submitted / "gina" / "mini" / "timestamp.txt").read_bytes() == b"2024-03-05 09:00:00 UTC"
    assert not (submitted / "hugo" / "mini" / "timestamp.txt").exists()
    for student in ("gina", "hugo"):
        assert any("timestamp.txt inside the zip was ignored" in n for n in got.notes[student]), got.notes


def test_an_archive_that_cannot_be_stored_rejects_only_that_student(tmp_path):
    # Fault 3 of #10: a file/folder clash or an over-long name stopped the whole import with a traceback.
    source, submitted = tmp_path / "in", tmp_path / "submitted"
    source.mkdir()
    (source / "clash.zip").write_bytes(_zip({"mini.ipynb": b"nb", "data": b"a file", "data/inner.csv": b"in a folder"}))
    (source / "clash_reversed.zip").write_bytes(_zip({"mini.ipynb/x": b"folder first", "mini.ipynb": b"nb"}))
    (source / "longname.zip").write_bytes(_zip({"mini.ipynb": b"nb", "x" * 300 + ".txt": b"too long"}))
    (source / "longpath.zip").write_bytes(_zip({"mini.ipynb": b"nb", "/".join(["d" * 200] * 8) + "/f": b"deep"}))
    (source / "zoe.ipynb").write_bytes(b"zoe's notebook")
    got = importer.import_submissions(source, submitted, "mini", ["mini.ipynb"])
    assert got.students == ["clash", "clash_reversed", "longname", "longpath", "zoe"]
    assert sorted(got.rejected) == ["clash", "clash_reversed", "longname", "longpath"]
    assert "'data' is both a file and a folder" in got.rejected["clash"]
    assert "'mini.ipynb' is both a file and a folder" in got.rejected["clash_reversed"]
    assert "longer than" in got.rejected["longname"] and "longer than" in got.rejected["longpath"]
    assert (submitted / "zoe" / "mini" / "mini.ipynb").read_bytes() == b"zoe's notebook"
    for student in got.rejected:
        assert list((submitted / student / "mini").iterdir()) == []
    assert [p.name for p in submitted.iterdir() if p.name.startswith(".")] == []  # no staging folder left


def test_a_submission_the_file_system_refuses_rejects_only_that_student(tmp_path, monkeypatch):
    # Whatever else the file system refuses (here: every write of one student's file) rejects that student only.
    source, submitted = tmp_path / "in", tmp_path / "submitted"
    source.mkdir()
    (source / "ann.ipynb").write_bytes(b"ann")
    (source / "bea.ipynb").write_bytes(b"bea")
    write_bytes = Path.write_bytes

    def refuse_bea(path, data):
        if data == b"bea":
            raise OSError(28, "No space left on device")
        return write_bytes(path, data)

    monkeypatch.setattr(Path, "write_bytes", refuse_bea)
    got = importer.import_submissions(source, submitted, "mini", ["mini.ipynb"])
    assert got.students == ["ann", "bea"] and list(got.rejected) == ["bea"]
    assert "No space left on device" in got.rejected["bea"]
    assert [p.name for p in submitted.iterdir() if p.name.startswith(".")] == []


@pytest.mark.parametrize("name", ["../x", "/etc/passwd", "a/../../b", "", "C:/x"])
def test_unsafe_relative_paths_are_refused(name):
    with pytest.raises(ValueError):
        safe_relpath(name)


# -- what is accepted as a submission ----------------------------------------------------------------
@pytest.mark.parametrize(
    "data, reason",
    [
        (b"", "empty file"),
        (b"def f(): pass", "not valid JSON"),
        (b'{"cells": 3}', "not a valid Jupyter notebook"),
    ],
)
def test_unreadable_submissions_are_rejected_with_a_reason(tmp_path, data, reason):
    (tmp_path / "mini.ipynb").write_bytes(data)
    why, _ = check_submission(tmp_path, "mini.ipynb", RELEASE_JSON.encode(), "mini")
    assert why is not None and reason in why


def test_another_assignments_notebook_and_a_foreign_kernel(tmp_path):
    nb = nbformat.reads(RELEASE_JSON, as_version=4)
    nb.cells[0].metadata["nbgrader"]["grade_id"] = "other"
    nbformat.write(nb, tmp_path / "mini.ipynb")
    why, _ = check_submission(tmp_path, "mini.ipynb", RELEASE_JSON.encode(), "mini")
    assert "another assignment" in why
    nb.cells[0].metadata["nbgrader"]["grade_id"] = "square"
    nb.metadata["kernelspec"] = {"name": "ir", "display_name": "R", "language": "R"}
    nbformat.write(nb, tmp_path / "mini.ipynb")
    why, notes = check_submission(tmp_path, "mini.ipynb", RELEASE_JSON.encode(), "mini")
    assert why is None and any("'ir'" in n for n in notes)
    why, _ = check_submission(tmp_path, "missing.ipynb", RELEASE_JSON.encode(), "mini")
    assert "no notebook named missing.ipynb" in why


def test_a_deeply_nested_notebook_is_rejected_with_its_depth(tmp_path):
    # Fault 7 of #10: json.loads raised RecursionError: the job failed and was retried on every run.
    nb = json.loads(RELEASE_JSON)
    nb["cells"][0]["metadata"]["deep"] = "@"
    text = json.dumps(nb).replace('"@"', "[" * 100_000 + "]" * 100_000)
    (tmp_path / "mini.ipynb").write_text(text)
    why, _ = check_submission(tmp_path, "mini.ipynb", RELEASE_JSON.encode(), "mini")
    assert why is not None and "nests its JSON 100004 levels deep, more than the 100" in why, why
    why, _ = check_submission(tmp_path, "mini.ipynb", RELEASE_JSON.encode(), "mini", max_depth=200_000)
    assert why is not None and "not valid JSON" in why  # past the cap: still a reason, never an exception


def test_a_notebook_of_fifty_thousand_cells_is_rejected_quickly(tmp_path):
    import time

    nb = nbformat.reads(RELEASE_JSON, as_version=4)
    nb.cells += [nbformat.v4.new_code_cell("x = 1") for _ in range(50_000)]
    nbformat.write(nb, tmp_path / "mini.ipynb")
    started = time.monotonic()
    why, _ = check_submission(tmp_path, "mini.ipynb", RELEASE_JSON.encode(), "mini")
    assert why is not None and "50001 cells, more than the 2000" in why, why
    assert time.monotonic() - started < 10  # nbformat's validation alone takes longer than the whole check
    small = nbformat.reads(RELEASE_JSON, as_version=4)
    small.cells += [nbformat.v4.new_code_cell("x = 1") for _ in range(30)]
    nbformat.write(small, tmp_path / "mini.ipynb")
    assert check_submission(tmp_path, "mini.ipynb", RELEASE_JSON.encode(), "mini")[0] is None  # positive control
    why, _ = check_submission(tmp_path, "mini.ipynb", RELEASE_JSON.encode(), "mini", max_cells=10)
    assert "31 cells, more than the 10" in why


@pytest.mark.parametrize(
    "text, depth",
    [(b"[]", 1), (b'{"a": "[[{{", "b": [[1], {"c": []}]}', 4), (b'"[["', 0), (rb'["\\", [["x\\\"["]]]', 3)],
)
def test_json_depth_counts_brackets_outside_strings(text, depth):
    from segutils.grading.runner import json_depth

    assert json_depth(text) == depth


def test_log_messages_are_formatted_while_the_gradebook_session_is_open(tmp_path, monkeypatch):
    # Fault 2 of #10: nbgrader logs "%s is %s seconds late" with the gradebook row as an argument; formatted
    # after the session closed, the row's repr raised DetachedInstanceError and every late submission failed.
    import datetime
    import logging

    from nbgrader.api import Gradebook
    from traitlets.log import get_logger

    from segutils.grading.runner import _captured_logs

    due = datetime.datetime(2024, 3, 1, 12, 0)
    db_url = f"sqlite:///{tmp_path / 'gradebook.db'}"
    with Gradebook(db_url) as gb:  # as nbgrader does: rows made in one session, the submission in another
        gb.update_or_create_assignment("mini", duedate=due)
        gb.update_or_create_student("alice")
    monkeypatch.setattr(get_logger(), "propagate", False)  # pytest's own handler would format it in time
    with _captured_logs() as logs:
        with Gradebook(db_url) as gb:
            submission = gb.update_or_create_submission("mini", "alice", timestamp=due + datetime.timedelta(hours=1))
            get_logger().warning("%s is %s seconds late", submission, submission.total_seconds_late)
    assert logs.messages(logging.WARNING) == ["SubmittedAssignment<mini for alice> is 3600.0 seconds late"]


# -- preprocessors --------------------------------------------------------------------------------------
def test_redaction_keeps_the_message_and_drops_the_hidden_source():
    source = (
        "assert f(3) == 9, 'visible'\n### BEGIN HIDDEN TESTS\nassert math.isclose(f(1.5), 2.25), 'f(1.5) wrong'\n"
        "### END HIDDEN TESTS"
    )
    cell = nbformat.v4.new_code_cell(
        source, metadata={"nbgrader": {"grade": True, "grade_id": "t", "points": 1, "locked": True, "solution": False}}
    )
    cell.outputs = [
        nbformat.v4.new_output(
            "error",
            ename="AssertionError",
            evalue="f(1.5) wrong",
            traceback=[
                "----",
                "\x1b[0;32m----> 3\x1b[0m assert math.isclose(f(1.5), 2.25), 'f(1.5) wrong'",
                "AssertionError: f(1.5) wrong",
            ],
        )
    ]
    off = RedactHiddenTests(enabled=False)
    assert "math.isclose" in json.dumps(off(nbformat.v4.new_notebook(cells=[cell.copy()]), {})[0])
    redacted, _ = RedactHiddenTests(enabled=True).preprocess_cell(cell, {}, 0)
    text = json.dumps(redacted)
    assert "math.isclose" not in text and "BEGIN HIDDEN" not in text
    assert "assert f(3) == 9" in redacted.source and "f(1.5) wrong" in redacted.outputs[0].traceback[0]


def test_cell_plan_marks_tests_and_pins_the_locked_imports():
    nb = nbformat.read(FIXTURES / "mini_course" / "solutions" / "mini" / "mini.ipynb", as_version=4)
    plan, modules = cell_plan(nb)
    kinds = {entry["grade_id"]: entry["kind"] for entry in plan}
    assert kinds == {
        "setup": "locked",
        "square": "code",
        "test_square": "graded",
        "test_square_float": "graded",
        "double": "code",
        "test_double": "graded",
    }
    assert modules == ["math", "torch", "segutils"]
    assert imports_of("%matplotlib inline\nimport numpy as np\nfrom a.b import c as d\n") == (
        ["numpy", "a.b"],
        ["np", "d"],
    )


def test_untrusted_outputs_are_sanitized():
    assert clean_output({"output_type": "stream", "name": "stdout", "text": "x" * 50}, 10).text == "x" * 10
    assert clean_output({"output_type": "stream", "name": "/etc/passwd", "text": "x"}, 10) is None
    assert clean_output({"output_type": "error", "ename": 3, "evalue": None, "traceback": "nope"}, 10).traceback == []
    assert clean_output("not a dict", 10) is None


# Fault 5 of #10: what a student can put in a notebook to run script in the feedback reader's browser.
XSS_MARKDOWN = (
    "# Answer\n\n**bold** <b>kept</b> <script>window.pwned = 'markdown script'</script>\n\n"
    '<img src="x" onerror="window.pwned = \'markdown onerror\'"> [link](javascript:alert(1))\n'
)
XSS_HTML = "<b>kept html</b><script>window.pwned = 'output script'</script><img src=x onerror=\"window.pwned=1\">"


def xss_outputs() -> list:
    return [
        nbformat.v4.new_output("display_data", data={"text/html": XSS_HTML, "text/plain": "x"}),
        nbformat.v4.new_output("display_data", data={"application/javascript": "window.pwned = 'js output'"}),
        nbformat.v4.new_output(
            "execute_result",
            execution_count=1,
            data={"text/markdown": '<img src=y onerror="window.pwned=2"> *md output*'},
        ),
        nbformat.v4.new_output(
            "display_data",
            data={"image/png": "iVBORw0KGgo="},
            metadata={"image/png": {"width": "1 onerror=window.pwned=3", "height": 20}},
        ),
    ]


def feedback_page(nb, exporter_class=None) -> str:
    """``nb`` as GenerateFeedback's exporter renders it (nbgrader's feedback template, set up as GenerateFeedback
    does: it renders Markdown cells itself), by ``exporter_class`` (default: what ``configure_feedback`` sets)."""
    from nbconvert import HTMLExporter

    from segutils.grading.sanitize import SanitizeFeedback, feedback_config

    cfg = feedback_config()
    exporter = (exporter_class or cfg.GenerateFeedback.exporter_class)(config=cfg)
    assert isinstance(exporter, HTMLExporter)
    exporter.register_preprocessor(SanitizeFeedback(config=cfg), enabled=True)
    resources = {"nbgrader": {"notebook": "mini", "score": 1.0, "max_score": 1.0, "late_penalty": 0}}
    return exporter.from_notebook_node(nb, resources=resources)[0]


def test_feedback_pages_run_no_student_script_and_keep_the_formatting():
    def page(with_payloads: bool) -> str:
        nb = nbformat.v4.new_notebook(
            cells=[
                nbformat.v4.new_markdown_cell(XSS_MARKDOWN if with_payloads else "# Answer\n\n**bold** <b>kept</b>"),
                nbformat.v4.new_code_cell("show()", outputs=xss_outputs() if with_payloads else []),
            ]
        )
        return feedback_page(nb)

    hostile, baseline = page(True), page(False)
    cases.assert_no_student_script(hostile, baseline)
    for kept in ("<strong>bold</strong>", "<b>kept</b>", "<b>kept html</b>", "<em>md output</em>", ">Answer"):
        assert kept in hostile, kept  # the student's formatting is still shown
    assert 'height="20"' in hostile or "height=20" in hostile


def test_feedback_pages_skip_the_second_parse_only_where_it_edits_nothing(monkeypatch):
    """The feedback exporter returns the page HTMLExporter's code would (the same document) without its second
    parse when the page has no <img> without alt, and lets that code add the alt text when it has."""
    import nbconvert.exporters.html
    from bs4 import BeautifulSoup
    from nbconvert.exporters import HTMLExporter

    from segutils.grading.sanitize import FeedbackExporter

    error = nbformat.v4.new_output("error", ename="AssertionError", evalue="wrong", traceback=["\x1b[31mwrong"])
    text = nbformat.v4.new_output("stream", name="stdout", text="<img src=x> 1 < 2")
    plain = nbformat.v4.new_notebook(
        cells=[
            nbformat.v4.new_markdown_cell("# Answer\n\n**bold**, `code` and ![a plot](data:image/png;base64,iVBO)"),
            nbformat.v4.new_code_cell("def f(x):\n    return x < 2", outputs=[text, error]),
        ]
    )
    image = nbformat.v4.new_output("display_data", data={"image/png": "iVBORw0KGgo=", "text/plain": "<Figure>"})
    with_image = nbformat.v4.new_notebook(cells=[*plain.cells, nbformat.v4.new_code_cell("plot()", outputs=[image])])

    class AlwaysParsed(FeedbackExporter):
        from_notebook_node = HTMLExporter.from_notebook_node

    parses = []

    class CountedSoup(BeautifulSoup):
        def __init__(self, *args, **kwargs):
            parses.append(1)
            super().__init__(*args, **kwargs)

    monkeypatch.setattr(nbconvert.exporters.html, "BeautifulSoup", CountedSoup)
    fast, reference = feedback_page(plain, FeedbackExporter), feedback_page(plain, AlwaysParsed)
    assert len(parses) == 1  # HTMLExporter's own parse only
    assert BeautifulSoup(fast, "html.parser") == BeautifulSoup(reference, "html.parser")
    assert "wrong" in fast and "1 &lt; 2" in fast and 'alt="a plot"' in fast
    parses.clear()
    fallback, reference = feedback_page(with_image, FeedbackExporter), feedback_page(with_image, AlwaysParsed)
    assert len(parses) == 2 and fallback == reference
    assert 'alt="No description has been provided for this image"' in fallback


def test_feedback_pages_reuse_the_templates_the_job_server_compiled(monkeypatch):
    """After ``warm_feedback_exporter`` (what the job server runs before it forks the jobs), a new feedback
    exporter renders the same page without compiling a template; a cold cache renders it too."""
    import jinja2

    from segutils.grading import sanitize

    error = nbformat.v4.new_output("error", ename="AssertionError", evalue="wrong", traceback=["\x1b[31mwrong"])
    nb = nbformat.v4.new_notebook(
        cells=[
            nbformat.v4.new_markdown_cell("# Answer\n\n**bold** and `code`"),
            nbformat.v4.new_code_cell("def f(x):\n    return x < 2", outputs=[error]),
        ]
    )
    monkeypatch.setattr(sanitize, "TEMPLATE_BYTECODE", sanitize.TemplateBytecode())
    compiled = []
    compile_template = jinja2.Environment.compile
    monkeypatch.setattr(
        jinja2.Environment, "compile", lambda self, *a, **kw: compiled.append(1) or compile_template(self, *a, **kw)
    )
    cold = feedback_page(nb)
    assert compiled and sanitize.TEMPLATE_BYTECODE.compiled  # positive control: a cold cache compiles
    monkeypatch.setattr(sanitize, "TEMPLATE_BYTECODE", sanitize.TemplateBytecode())
    sanitize.warm_feedback_exporter()
    compiled.clear()
    assert feedback_page(nb) == cold and not compiled


def test_the_metadata_check_gives_nbgraders_verdicts_with_its_schema_checked_once():
    import jsonschema
    from nbgrader.nbgraderformat import common
    from nbgrader.preprocessors import CheckCellMetadata

    from segutils.grading.preprocessors import CheckCellMetadataOnce

    source = next((cases.MINI_COURSE / "solutions" / cases.ASSIGNMENT).glob("*.ipynb"))

    def notebook(**changes) -> nbformat.NotebookNode:
        nb = nbformat.read(source, as_version=4)
        cases.cell(nb, "test_square").metadata.nbgrader.update(changes)
        return nb

    def verdict(checker, nb) -> str:
        try:
            checker().preprocess(nb, {})
        except Exception as error:  # noqa: BLE001 - the verdict is the error's type and message
            return f"{type(error).__name__}: {error}"
        return "valid"

    cases_ = [notebook(), notebook(points="two"), notebook(grade_id=""), notebook(locked=3), notebook(schema_version=9)]
    cases_.append(notebook(grade_id="test_double"))  # a duplicate id
    verdicts = [verdict(CheckCellMetadataOnce, nb) for nb in cases_]
    assert verdicts == [verdict(CheckCellMetadata, nb) for nb in cases_]
    assert verdicts[0] == "valid" and sum(v != "valid" for v in verdicts) >= 4
    assert common.jsonschema is jsonschema  # nbgrader's own module is back


# -- sandbox ------------------------------------------------------------------------------------------------
def test_limits_are_validated():
    with pytest.raises(ValueError, match="memory_bytes"):
        sandbox.Limits(memory_bytes=0)
    with pytest.raises(ValueError, match="processes"):
        sandbox.Limits(processes=4)
    with pytest.raises(ValueError, match="unknown Limits fields"):
        sandbox.Limits.from_dict({"memory": 1})
    assert sandbox.Limits.from_dict(sandbox.Limits().to_dict()) == sandbox.Limits()


def test_the_sandbox_command_binds_nothing_of_the_course(tmp_path):
    course = tmp_path / "course"
    (course / "solutions").mkdir(parents=True)
    inputs = tmp_path / "input"
    inputs.mkdir()
    cmd = sandbox.sandbox_command(
        ["python", "-c", "pass"], input_dir=inputs, limits=sandbox.Limits(), env={"A": "1"}, bwrap="/usr/bin/bwrap"
    )
    assert cmd[:2] == ["/usr/bin/bwrap", "--unshare-all"] and "--clearenv" in cmd and "--die-with-parent" in cmd
    bound = [cmd[i + 1] for i, arg in enumerate(cmd) if arg in ("--bind", "--ro-bind", "--dev-bind")]
    assert "--bind" not in cmd  # nothing of the host is writable
    assert all(not Path(b).is_relative_to(course) for b in bound)
    assert str(inputs.resolve()) in bound and cmd[-3:] == ["python", "-c", "pass"]
    assert not any(Path(b).is_relative_to(Path(__file__).resolve().parents[1] / "solutions") for b in bound)


def test_a_checkout_under_tmp_stays_visible_above_the_sandbox_tmpfs(tmp_path, monkeypatch):
    # A course cloned under /tmp: its .venv and segutils must be mounted after (so on top of) the tmpfs.
    roots = [Path("/tmp/course/.venv"), Path("/tmp/course/segutils")]
    monkeypatch.setattr(sandbox, "readonly_roots", lambda: roots)
    cmd = sandbox.sandbox_command(
        ["python", "-c", "pass"], input_dir=tmp_path, limits=sandbox.Limits(), env={}, bwrap="/usr/bin/bwrap"
    )
    tmpfs = next(i for i, arg in enumerate(cmd) if arg == "--tmpfs" and cmd[i + 1] == sandbox.SANDBOX_TMP)
    for root in roots:
        mounts = [i for i, arg in enumerate(cmd[:-1]) if arg == "--ro-bind" and cmd[i + 1] == str(root)]
        assert mounts and all(i > tmpfs for i in mounts), f"{root} is hidden by the tmpfs on {sandbox.SANDBOX_TMP}"


def test_the_sandbox_caps_every_writable_file_system():
    # The sandbox command itself: bubblewrap's / and /dev read-only, /tmp and /dev/shm sized from the limits.
    limits = sandbox.Limits(tmp_bytes=8 << 20, shm_bytes=4 << 20)
    cmd = sandbox.sandbox_command(["true"], input_dir=FIXTURES, limits=limits, env={}, bwrap="/usr/bin/bwrap")
    sized = {cmd[i + 3]: int(cmd[i + 1]) for i, arg in enumerate(cmd) if arg == "--size"}
    assert sized == {"/dev/shm": 4 << 20, sandbox.SANDBOX_TMP: 8 << 20}
    assert [cmd[i + 1] for i, arg in enumerate(cmd) if arg == "--remount-ro"] == ["/dev", "/"]
    assert cmd.index("--remount-ro") > max(i for i, arg in enumerate(cmd) if arg in ("--tmpfs", "--ro-bind", "--dev"))


@pytest.mark.skipif(sandbox.find_bwrap() is None, reason="bubblewrap (bwrap) is not installed")
def test_a_sandboxed_process_cannot_write_past_the_limits_anywhere(tmp_path):
    # Fault 6 of #10: /, /dev and /dev/shm were writable tmpfs of half the host's memory each.
    import subprocess

    try:
        sandbox.check_sandbox()
    except sandbox.SandboxUnavailable as error:
        pytest.skip(str(error))
    limits = sandbox.Limits(tmp_bytes=8 << 20, shm_bytes=4 << 20)
    attempt = 64 << 20  # eight times the larger cap: cheap, and far past either
    env = sandbox.sandbox_env(limits, None, use_cuda=False)
    inner = [sys.executable, "-c", cases.FILL_FILE_SYSTEMS.replace("LIMIT", str(attempt))]
    cmd = sandbox.sandbox_command(inner, input_dir=tmp_path, limits=limits, env=env)
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    written = json.loads(done.stdout)
    assert {"/", "/dev", "/dev/shm", "/tmp"} <= set(written)
    assert written["/tmp"] >= 4 << 20 and written["/dev/shm"] >= 2 << 20  # positive control: they are usable
    over = {point: size for point, size in written.items() if size > limits.tmp_bytes}
    assert over == {}, f"written past the limits: {over}"
    assert written["/dev/shm"] <= limits.shm_bytes and written["/"] == written["/dev"] == 0


def test_a_missing_bwrap_says_what_to_do(tmp_path):
    sandbox.check_sandbox.cache_clear()
    with pytest.raises(sandbox.SandboxUnavailable, match="bubblewrap"):
        sandbox.check_sandbox(str(tmp_path / "no-bwrap"))
    sandbox.check_sandbox.cache_clear()


def test_gpus_are_discovered_from_the_driver(tmp_path):
    for bus, minor, uuid in [("0000:41:00.0", 1, "GPU-b"), ("0000:01:00.0", 0, "GPU-a")]:
        (tmp_path / bus).mkdir()
        (tmp_path / bus / "information").write_text(f"Model: H200\nDevice Minor: {minor}\nGPU UUID: {uuid}\n")
    (tmp_path / "broken").mkdir()
    assert [(g.minor, g.uuid) for g in sandbox.discover_gpus(tmp_path)] == [(0, "GPU-a"), (1, "GPU-b")]
    assert sandbox.discover_gpus(tmp_path / "absent") == []
    env = sandbox.sandbox_env(sandbox.Limits(), sandbox.GpuDevice("x", 3, "GPU-z"), use_cuda=True)
    assert env["CUDA_VISIBLE_DEVICES"] == "GPU-z"
    assert sandbox.sandbox_env(sandbox.Limits(), None, use_cuda=False)["CUDA_VISIBLE_DEVICES"] == ""


def test_a_sandbox_is_given_its_own_gpu_and_no_other(tmp_path, monkeypatch):
    import functools

    for name in ("nvidia0", "nvidia1", "nvidiactl", "nvidia-uvm"):
        (tmp_path / name).touch()
    gpu = sandbox.GpuDevice("0000:41:00.0", 1, "GPU-b")
    nodes = [tmp_path / "nvidia1", tmp_path / "nvidiactl", tmp_path / "nvidia-uvm"]
    assert sandbox.gpu_device_nodes(gpu, tmp_path) == nodes
    monkeypatch.setattr(sandbox, "gpu_device_nodes", functools.partial(sandbox.gpu_device_nodes, dev=tmp_path))

    def dev_binds(cmd: list[str]) -> list[str]:
        return [cmd[i + 1] for i, arg in enumerate(cmd) if arg == "--dev-bind"]

    inputs = tmp_path / "input"
    inputs.mkdir()
    env = sandbox.sandbox_env(sandbox.Limits(), gpu, use_cuda=True)
    with_gpu = sandbox.sandbox_command(
        ["python"], input_dir=inputs, limits=sandbox.Limits(), env=env, gpu=gpu, bwrap="/usr/bin/bwrap"
    )
    assert dev_binds(with_gpu) == [str(n) for n in nodes]  # not nvidia0: another worker's GPU
    assert with_gpu[with_gpu.index("CUDA_VISIBLE_DEVICES") + 1] == "GPU-b"
    cpu_only = sandbox.sandbox_command(
        ["python"], input_dir=inputs, limits=sandbox.Limits(), env={}, bwrap="/usr/bin/bwrap"
    )
    assert dev_binds(cpu_only) == [] and "/sys" not in cpu_only


def _job(student: str) -> GradingJob:
    return GradingJob(
        assignment="mini",
        student=student,
        db_url="sqlite://",
        config_text="",
        release_notebooks={},
        source_files={},
        submission={},
        digest="",
    )


@pytest.mark.parametrize("workers,gpus", [(2, 2), (3, 1), (2, 0)])
def test_each_worker_slot_grades_on_its_own_gpu(monkeypatch, workers, gpus):
    import threading
    import time

    from segutils.grading import pool

    devices = [sandbox.GpuDevice(f"0000:0{i}:00.0", i, f"GPU-{i}") for i in range(gpus)]
    lock = threading.Lock()
    running: list[str | None] = []
    problems: list[str] = []
    used: list[str | None] = []

    class FakeServer:
        def alive(self) -> bool:
            return True

        def close(self) -> None:
            pass

        def run(self, job, timeout=None):
            gpu = job.options.gpu["uuid"] if job.options.gpu else None
            with lock:
                if gpu is not None and gpu in running and workers <= gpus:
                    problems.append(f"{job.student}: {gpu} is in use by another job")
                running.append(gpu)
                used.append(gpu)
            time.sleep(0.05)
            with lock:
                running.remove(gpu)
            return pool.failed_result(job, "not graded: a test")

    monkeypatch.setattr(pool, "JobServer", FakeServer)
    results = []
    pool.LocalPool(workers, devices).run([_job(f"s{i}") for i in range(8)], results.append)
    assert sorted(r.student for r in results) == [f"s{i}" for i in range(8)]
    assert problems == []
    assert set(used) == ({d.uuid for d in devices} if devices else {None})


def test_a_job_server_reports_crashes_and_timeouts_and_keeps_serving(tmp_path):
    import os
    import signal

    from segutils.grading import pool

    job = replace(_job("s1"), assignment="nowhere", db_url=f"sqlite:///{tmp_path / 'gradebook.db'}")
    server = pool.JobServer()
    try:
        crashed = server.run(job)  # the assignment is in no gradebook: the job process raises
        assert crashed.status == "failed" and "exit status 1" in crashed.message, crashed.message
        assert "No such assignment: nowhere" in crashed.message
        slow = server.run(job, timeout=0.01)
        assert slow.status == "failed" and "longer than 0.01 s" in slow.message
        assert server.alive() and "No such assignment" in server.run(job).message
        os.kill(server.process.pid, signal.SIGKILL)
        server.process.wait()
        with pytest.raises(pool.JobServerStopped, match="job server stopped"):
            server.run(job)
    finally:
        server.close()


def test_a_pool_replaces_a_job_server_that_died(tmp_path, monkeypatch):
    from segutils.grading import pool

    jobs = [
        replace(_job(f"s{i}"), assignment="nowhere", db_url=f"sqlite:///{tmp_path / 'gradebook.db'}") for i in range(3)
    ]
    local = pool.LocalPool(1)
    try:
        local._servers[0].process.kill()  # the slot's server died before its first job
        local._servers[0].process.wait()
        results = []
        local.run(jobs[:2], results.append)
        assert [r.student for r in results] == ["s0", "s1"]
        assert all("No such assignment: nowhere" in r.message for r in results), [r.message[-300:] for r in results]

        def dies_during_the_job(self, job, timeout=None):
            raise pool.JobServerStopped("the job server stopped (exit status -9): ")

        monkeypatch.setattr(pool.JobServer, "run", dies_during_the_job)
        local.run(jobs[2:], results.append)
        assert (
            results[2].student == "s2" and results[2].status == "failed" and "job server stopped" in results[2].message
        )
    finally:
        local.close()


def test_bootstrap_runs_a_grading_module_without_importing_segutils_init():
    import subprocess

    cmd = sandbox.bootstrap_command(sys.executable, "runner", [])
    done = subprocess.run(
        cmd[:2]
        + [
            cmd[2].replace(
                "sys.exit(main())",
                "print(sorted(m for m in sys.modules if m in "
                "('torch', 'rfc3987_syntax') and sys.modules[m] is not None)); "
                "sys.exit(main())",
            )
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 2 and "usage" in done.stderr and done.stdout.strip() == "[]", done
    with pytest.raises(ValueError):
        sandbox.bootstrap_command(sys.executable, "os", [])


def test_the_executor_serves_a_test_cell_without_importing_torch():
    """The student's executor (two-process grading) only hands the kernel the code that serves the grader:
    importing the student side's modules there would load PyTorch into every job's executor (1.5 s)."""
    import subprocess

    cmd = sandbox.bootstrap_command(sys.executable, "execute", [])
    serve_one_test_cell = (
        "import asyncio\n"
        "from segutils.grading.execute import Executor, _Record\n"
        "sources = []\n"
        "async def execute(self, index, record, source=None):\n"
        "    sources.append(source)\n"
        "    return 'ok'\n"
        "Executor.execute = execute\n"
        "executor = Executor.__new__(Executor)\n"
        "executor.channel = '/grader.sock'\n"
        "record = _Record(6)\n"
        "asyncio.run(executor.serve_test(6, record))\n"
        "print(record.status, 'serve(' in sources[0], 'torch' in sys.modules)\n"
    )
    done = subprocess.run(
        cmd[:2] + [cmd[2].replace("from segutils.grading.execute import main\nsys.exit(main())", serve_one_test_cell)],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0 and done.stdout.split() == ["served", "True", "False"], done


def test_the_guard_undoes_replacements_and_adopts_library_wrappers(monkeypatch):
    import contextlib
    import functools
    import types

    from segutils.grading import guard

    def helper():
        return 1

    module = types.ModuleType("segutils_fake_helpers")
    module.helper, module.other = helper, helper
    monkeypatch.setitem(sys.modules, "segutils_fake_helpers", module)
    monkeypatch.setattr(guard, "_GUARD", None)
    assert json.loads(guard.install("n1", ["segutils_fake_helpers"]))["nonce"] == "n1"
    module.helper = contextlib.contextmanager(helper)  # a stdlib functools.wraps wrapper of the original
    module.other = functools.wraps(helper)(lambda: 2)  # what a notebook does, even disguised as a wrapper
    answer = json.loads(guard.restore("n2"))
    assert answer["nonce"] == "n2" and answer["changed"] == ["segutils_fake_helpers.other"]
    assert module.other is helper and module.helper.__wrapped__ is helper
    assert json.loads(guard.check("n3"))["changed"] == []


def test_the_guard_watches_the_submodules_of_segutils_testing(monkeypatch):
    import torch

    from segutils import testing
    from segutils.grading import guard
    from segutils.testing import values

    original = values._float_mismatch
    monkeypatch.setattr(guard, "_GUARD", None)
    guard.install("n1", [])
    values._float_mismatch = lambda *args, **kwargs: None  # what a student could do to pass wrong values
    try:
        answer = json.loads(guard.restore("n2"))
    finally:
        replaced_survived = values._float_mismatch is not original
        values._float_mismatch = original
    assert "segutils.testing.values._float_mismatch" in answer["changed"] and not replaced_survived
    with pytest.raises(AssertionError):  # positive control: the restored helper catches a wrong value again
        testing.assert_close(torch.ones(3), torch.zeros(3))


# -- cluster -------------------------------------------------------------------------------------------------
def test_sqlite_is_refused_when_workers_are_remote():
    local = {"127.0.0.1", "localhost", "grader"}
    with pytest.raises(cluster.ClusterConfigError, match="SQLite.*10.0.0.7.*postgresql"):
        cluster.check_gradebook_for_cluster(
            "sqlite:////c/gradebook.db", ["tcp://127.0.0.1:4000", "tcp://10.0.0.7:4000"], local
        )
    cluster.check_gradebook_for_cluster("sqlite:////c/gradebook.db", ["tcp://127.0.0.1:1", "tcp://grader:2"], local)
    cluster.check_gradebook_for_cluster("postgresql+psycopg2://u@db/g", ["tcp://10.0.0.7:4000"], local)


# -- state and report ----------------------------------------------------------------------------------------
def test_the_submission_digest_depends_on_files_assignment_and_options():
    base = state.submission_digest({"a.ipynb": b"1"}, "fp", {"timeout": 5})
    assert base == state.submission_digest({"a.ipynb": b"1"}, "fp", {"timeout": 5})
    assert (
        len(
            {
                base,
                state.submission_digest({"a.ipynb": b"2"}, "fp", {"timeout": 5}),
                state.submission_digest({"b.ipynb": b"1"}, "fp", {"timeout": 5}),
                state.submission_digest({"a.ipynb": b"1"}, "fp2", {"timeout": 5}),
                state.submission_digest({"a.ipynb": b"1"}, "fp", {"timeout": 6}),
            }
        )
        == 5
    )


def test_replace_folder_swaps_in_complete_contents(tmp_path):
    folder = tmp_path / "feedback" / "alice"
    state.replace_folder(folder, {"a.html": b"1", "sub/b.txt": b"2"})
    state.replace_folder(folder, {"a.html": b"3"})
    assert sorted(p.name for p in folder.rglob("*")) == ["a.html"] and (folder / "a.html").read_bytes() == b"3"
    assert [p.name for p in folder.parent.iterdir()] == ["alice"]


def test_report_numbers_are_computed_from_the_results(tmp_path):
    def result(student, square, double, seconds):
        return {
            "student": student,
            "status": "graded",
            "message": "",
            "score": square + double,
            "max_score": 3.0,
            "seconds": seconds,
            "exec_seconds": seconds / 2,
            "notes": [],
            "cells": {
                "test_square": {
                    "score": square,
                    "max_score": 1.0,
                    "ename": "AssertionError",
                    "evalue": "square(3) should be 9\nmore",
                },
                "test_double": {
                    "score": double,
                    "max_score": 2.0,
                    "ename": "NameError",
                    "evalue": "name 'double' is not defined",
                },
            },
        }

    results = [result("a", 1, 2, 3.0), result("b", 0, 2, 9.0), result("c", 0, 0, 1.0), result("d", 1, 0, 2.0)]
    summary = report.summarize(results)
    assert summary["pass_rate"] == {"test_square": 0.5, "test_double": 0.5}
    assert summary["messages"] == [
        ("AssertionError: square(3) should be 9", 2),
        ("NameError: name 'double' is not defined", 2),
    ]
    assert [r["student"] for r in summary["slowest"]][:2] == ["b", "a"]
    assert sorted(summary["fractions"]) == [0.0, 1 / 3, 2 / 3, 1.0]
    path = report.write_report(tmp_path / "r.html", "mini", results, {"notes": ["<script>x</script>"]})
    html = path.read_text()
    assert html.count("<img ") == 4 and "<script>x" not in html and "&lt;script&gt;" in html
    with pytest.raises(ValueError, match="no graded submissions"):
        report.write_report(tmp_path / "e.html", "mini", [], {})


def test_the_report_shows_dollar_signs_of_student_messages_as_written(tmp_path):
    # Fault 4 of #10: matplotlib read "$...$" in a student's exception message as mathtext and the report
    # (rebuilt from every state file on each run) crashed on this run and every later one.
    messages = ["expected $\\alpha$, got $\\notacommand$", "costs $5 and $x^$", "a lone $ sign", "\x1b[31m$$\x1b[0m"]
    results = [
        {
            "student": f"s{i}",
            "status": "graded",
            "message": "",
            "score": 0.0,
            "max_score": 1.0,
            "seconds": 1.0,
            "exec_seconds": 0.5,
            "notes": [f"note ${i}$"],
            "cells": {"test_square": {"score": 0.0, "max_score": 1.0, "ename": "ValueError", "evalue": m}},
        }
        for i, m in enumerate(messages)
    ]
    page = report.write_report(tmp_path / "r.html", "mini", results, {"notes": []}).read_text()
    assert page.count("<img ") == 4
    for message in messages[:3]:
        assert html_escape(f"ValueError: {message}") in page
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots()
    report._labelled_barh(ax, messages, [1, 2, 3, 4])
    fig.canvas.draw()  # mathtext would raise here on the second label
    assert [t.get_text() for t in ax.get_yticklabels()] == messages
    plt.close(fig)


def test_printable_escapes_what_would_act_on_a_terminal():
    assert report.printable("evil\x1b[2J\rname\n.zip: skipped") == "evil\\x1b[2J\\rname\\n.zip: skipped"
    assert report.printable("plain ünïcode $x$") == "plain ünïcode $x$"


def test_segutils_grade_is_a_subcommand():
    from segutils.cli import build_parser

    args = build_parser().parse_args(
        [
            "grade",
            "a1",
            "--workers",
            "3",
            "--no-sandbox",
            "--student",
            "x",
            "--student",
            "y",
            "--redact-hidden",
            "--db",
            "postgresql://h/db",
        ]
    )
    assert (args.assignment, args.workers, args.sandbox, args.student, args.redact_hidden, args.db_url) == (
        "a1",
        3,
        False,
        ["x", "y"],
        True,
        "postgresql://h/db",
    )
    with pytest.raises(SystemExit):
        build_parser().parse_args(["grade", "a1", "--workers", "0"])


def test_the_new_caps_reach_the_batch_options(monkeypatch, capsys):
    from segutils.cli import build_parser
    from segutils.grading import batch

    seen = []

    def fake_grade(options):
        seen.append(options)
        return batch.BatchSummary(problems=["evil\x1b[2J.zip: neither <student>.ipynb nor <student>.zip; skipped"])

    monkeypatch.setattr(batch, "grade_assignment", fake_grade)
    args = build_parser().parse_args(
        [
            "grade",
            "a1",
            "--workers",
            "1",
            "--tmp-size",
            "8",
            "--shm-size",
            "4",
            "--max-cells",
            "10",
            "--max-depth",
            "20",
            "--no-progress",
        ]
    )
    assert args.run(args) == 0
    options = seen[0]
    assert (options.limits["tmp_bytes"], options.limits["shm_bytes"]) == (8 << 20, 4 << 20)
    assert (options.max_cells, options.max_depth) == (10, 20)
    assert "evil\\x1b[2J.zip" in capsys.readouterr().out  # the export's file name, escaped on the terminal
    assert sandbox.Limits.from_dict({**sandbox.Limits().to_dict(), **options.limits}).shm_bytes == 4 << 20
