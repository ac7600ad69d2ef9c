"""The nbgrader assignments: releases in sync with their sources, and the autograder grades fairly.

Generic over every ``solutions/<id>/`` (conventions in ``tests/nbgrader_harness.py``). For each
assignment one course directory grades, in a single ``nbgrader autograde`` run, the reference
answer, the blank release and every fixture of ``tests/fixtures/<id>/``; the tests below read
that gradebook. Tests of one assignment share an xdist group, so ``--dist loadgroup`` grades
each assignment once, on one worker, while other assignments grade on the others.

The corpus is graded with CUDA hidden, so that what a fixture loses does not depend on the
machine; ``test_reference_scores_full_marks_on_cuda`` grades the reference on the GPU when
there is one.
"""

from __future__ import annotations

import csv
import html
import re
from pathlib import Path

import nbgrader_harness as h
import pytest
import torch

IDS = h.assignment_ids()
FIXTURES = [f for aid in IDS for f in h.load_fixtures(aid)]
NO_CUDA = {"CUDA_VISIBLE_DEVICES": ""}


def _group(aid: str) -> pytest.MarkDecorator:
    return pytest.mark.xdist_group(f"nbgrader-{aid}")


def per_assignment() -> list:
    """``aid`` parameters for tests that read the graded corpus (slow: it autogrades everything)."""
    return [pytest.param(aid, marks=[_group(aid), pytest.mark.slow], id=aid) for aid in IDS]


def per_fixture() -> list:
    return [pytest.param(f, marks=_group(f.assignment_id), id=f"{f.assignment_id}/{f.name}") for f in FIXTURES]


class _Corpora:
    """Grades each assignment's corpus on first use, once per test worker.

    A failure is remembered, so that the other tests of that assignment fail at once with it
    instead of grading everything again.
    """

    def __init__(self, factory: pytest.TempPathFactory) -> None:
        self._factory = factory
        self._graded: dict[str, h.GradedCorpus | Exception] = {}

    def __getitem__(self, aid: str) -> h.GradedCorpus:
        if aid not in self._graded:
            root = self._factory.mktemp(f"course-{aid}")
            try:
                self._graded[aid] = h.grade_corpus(root, aid, h.load_fixtures(aid), env=NO_CUDA)
            except Exception as error:  # noqa: BLE001 - reported by every test that needs the corpus
                self._graded[aid] = error
        graded = self._graded[aid]
        if isinstance(graded, Exception):
            pytest.fail(f"grading the corpus of {aid} failed: {graded}", pytrace=False)
        return graded


@pytest.fixture(scope="session")
def corpora(tmp_path_factory: pytest.TempPathFactory) -> _Corpora:
    return _Corpora(tmp_path_factory)


def test_there_are_assignments():
    assert IDS, f"no assignment found: expected folders solutions/<id>/ holding <id>.ipynb under {h.SOLUTIONS}"


# ---------------------------------------------------------------- sources and releases


@pytest.mark.parametrize("aid", IDS)
def test_source_cells_are_well_formed(aid):
    nb = h.read_notebook(h.source_path(aid))
    ids = [h.nbgrader_meta(c)["grade_id"] for c in nb.cells if "grade_id" in h.nbgrader_meta(c)]
    assert len(ids) == len(set(ids)), f"duplicate grade_ids in {aid}: {sorted(i for i in ids if ids.count(i) > 1)}"
    tests = h.graded_test_cells(nb)
    assert tests, f"{aid} has no autograded test cell"
    for gid, cell in tests.items():
        meta = h.nbgrader_meta(cell)
        assert meta.get("locked") and meta.get("points", 0) > 0, f"test cell {gid} must be locked and worth points"
        # The points a cell's comment announces to students are the points nbgrader gives.
        announced = re.match(r"# \[(\d+(?:\.\d+)?) points?\]", cell.source)
        assert announced and float(announced.group(1)) == meta["points"], (
            f"test cell {gid} is worth {meta['points']} points: "
            f"start it with '# [{meta['points']} points] <what it checks>'"
        )
    for gid, cell in h.solution_cells(nb).items():
        assert h.BEGIN_SOLUTION in cell.source, f"solution cell {gid} has no BEGIN SOLUTION region"
    for cell in nb.cells:
        assert not cell.get("outputs"), f"{aid}: source notebooks are stored without outputs"


@pytest.mark.parametrize("aid", IDS)
def test_release_is_up_to_date(aid, tmp_path):
    """Regenerating from solutions/ gives exactly the committed release (run `make assignments`)."""
    course = h.make_course(tmp_path, [aid])
    fresh = h.generate_release(course, aid)
    committed = h.release_path(aid)
    assert committed.is_file(), f"{committed} is missing: run `make assignments`"
    assert h.normalized(fresh) == h.normalized(committed), (
        f"{committed.relative_to(h.REPO)} differs from what solutions/{aid} generates: run `make assignments`"
    )
    # nbgrader itself is deterministic: a second run writes the same bytes.
    first = fresh.read_bytes()
    assert h.generate_release(course, aid).read_bytes() == first, "nbgrader wrote a different release twice"


@pytest.mark.parametrize("aid", IDS)
def test_release_reveals_no_solution_or_hidden_test(aid):
    text = h.release_path(aid).read_text(encoding="utf-8")
    # Also catches a misspelt marker, which nbgrader would leave in place with what follows it.
    markers = re.findall(r"(?i)(?:begin|end)\W*(?:hidden|solution)", text)
    assert not markers, f"the release of {aid} contains solution/hidden-test markers: {markers[:3]}"
    source = h.read_notebook(h.source_path(aid))
    secret = {line.strip() for c in source.cells for line in h.secret_lines(c)}
    public = {line.strip() for c in source.cells for line in h.public_lines(c)}
    shown = {line.strip() for c in h.read_notebook(h.release_path(aid)).cells for line in c.source.split("\n")}
    leaked = sorted((secret - public) & shown - {""})
    assert not leaked, f"the release of {aid} shows lines of solutions or hidden tests: {leaked[:3]}"


# ---------------------------------------------------------------- fixture files


@pytest.mark.parametrize("fixture", FIXTURES, ids=lambda f: f"{f.assignment_id}/{f.name}")
def test_fixture_names_real_cells(fixture):
    nb = h.read_notebook(h.source_path(fixture.assignment_id))
    solutions, tests = h.solution_cells(nb), h.graded_test_cells(nb)
    assert fixture.replaces in solutions, (
        f"{fixture.path.name}: REPLACES={fixture.replaces!r} is not a solution cell; choose from {sorted(solutions)}"
    )
    unknown = fixture.expected_failures - set(tests)
    assert not unknown, f"{fixture.path.name}: EXPECTED_FAILURES names unknown test cells {sorted(unknown)}"
    if fixture.name.startswith("correct_"):
        assert not fixture.expected_failures, f"{fixture.path.name} is a correct alternative: EXPECTED_FAILURES = set()"
    else:
        assert fixture.expected_failures, f"{fixture.path.name} makes a mistake: name the test cells it fails"
    assert h.BEGIN_SOLUTION not in fixture.source and fixture.source.strip(), f"{fixture.path.name}: empty cell"


@pytest.mark.parametrize("aid", IDS)
def test_each_solution_cell_has_a_correct_alternative_and_mistakes(aid):
    fixtures = h.load_fixtures(aid)
    covered = {f.replaces for f in fixtures if f.name.startswith("correct_")}
    missing = set(h.solution_cells(h.read_notebook(h.source_path(aid)))) - covered
    assert not missing, f"{aid}: no correct_*.py fixture replaces the solution cells {sorted(missing)}"
    mistakes = [f for f in fixtures if not f.name.startswith("correct_")]
    assert len(mistakes) >= 6, f"{aid}: {len(mistakes)} wrong-implementation fixtures, expected at least 6"


# ---------------------------------------------------------------- autograding


def _lost(scores: dict[str, h.CellScore]) -> set[str]:
    return {gid for gid, s in scores.items() if not s.full}


@pytest.mark.parametrize("aid", per_assignment())
def test_reference_scores_full_marks(aid, corpora):
    corpus = corpora[aid]
    scores = corpus.scores[h.REFERENCE]
    expected = set(h.graded_test_cells(h.read_notebook(h.source_path(aid))))
    assert set(scores) == expected, f"gradebook cells {sorted(scores)} != test cells {sorted(expected)}"
    nb = corpus.notebook(h.REFERENCE)
    failed = {gid: h.error_summary(c) for gid, c in h.graded_test_cells(nb).items() if gid in _lost(scores)}
    assert not failed, f"the reference solution of {aid} loses points on {failed}"
    # nbgrader reads a number shown as a test cell's value as partial credit: test cells show none.
    valued = [
        gid for gid, c in h.graded_test_cells(nb).items() if any(o.output_type == "execute_result" for o in c.outputs)
    ]
    assert not valued, f"test cells {valued} of {aid} end with an expression; end them with a statement"


@pytest.mark.parametrize("aid", per_assignment())
def test_blank_release_runs_to_the_end_and_scores_zero(aid, corpora):
    corpus = corpora[aid]
    scored = {gid: s.score for gid, s in corpus.scores[h.BLANK].items() if s.score != 0}
    assert not scored, f"the unanswered release of {aid} scores points on {scored}"
    nb = corpus.notebook(h.BLANK)
    unexecuted = [i for i, c in enumerate(nb.cells) if c.cell_type == "code" and c.execution_count is None]
    assert not unexecuted, f"cells {unexecuted} of the blank {aid} never ran (timeout or dead kernel?)"


@pytest.mark.parametrize("fixture", per_fixture())
def test_fixture_loses_points_exactly_on_its_mistake(fixture, corpora):
    corpus = corpora[fixture.assignment_id]
    scores = corpus.scores[fixture.name]
    lost = _lost(scores)
    nb = corpus.notebook(fixture.name)
    why = {gid: h.error_summary(c) for gid, c in h.graded_test_cells(nb).items() if gid in lost}
    assert lost >= fixture.expected_failures, (
        f"{fixture.path.name} should lose points on {sorted(fixture.expected_failures - lost)} but kept them"
    )
    assert lost <= fixture.expected_failures, (
        f"{fixture.path.name} also lost points on {sorted(lost - fixture.expected_failures)}: "
        f"{ {g: why[g] for g in lost - fixture.expected_failures} }"
    )
    for gid in fixture.expected_failures:
        message = why[gid]
        assert re.search(r"\w+: \S", message) and len(message) > 30, (
            f"{fixture.path.name}: cell {gid} fails without saying what was expected: {message!r}"
        )


@pytest.mark.parametrize("aid", per_assignment())
def test_feedback_and_export(aid, corpora):
    corpus = corpora[aid]
    h.run_nbgrader(corpus.course, "generate_feedback", aid, "--force")
    students = [h.REFERENCE, h.BLANK, *corpus.fixtures]
    for student in students:
        page = corpus.course / "feedback" / student / aid / f"{aid}.html"
        assert page.is_file(), f"no feedback page for {student}"
    # A student reads why a test failed in the feedback page: the failure message is there.
    for name, fixture in corpus.fixtures.items():
        page = (corpus.course / "feedback" / name / aid / f"{aid}.html").read_text(encoding="utf-8")
        cells = h.graded_test_cells(corpus.notebook(name))
        for gid in fixture.expected_failures:
            first_line = h.error_summary(cells[gid]).split(": ", 1)[-1].split("\n")[0][:60]
            assert first_line in page or html.escape(first_line) in page, (
                f"the feedback page of {name} does not show why {gid} failed ({first_line!r})"
            )
    h.run_nbgrader(corpus.course, "export")
    with open(corpus.course / "grades.csv", newline="", encoding="utf-8") as file:
        rows = list(csv.DictReader(file))
    by_student = {r["student_id"]: r for r in rows if r["assignment"] == aid}
    assert set(by_student) == set(students)
    assert float(by_student[h.REFERENCE]["score"]) == float(by_student[h.REFERENCE]["max_score"]) > 0
    assert float(by_student[h.BLANK]["score"]) == 0


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
@pytest.mark.parametrize("aid", per_assignment())
def test_reference_scores_full_marks_on_cuda(aid, tmp_path):
    corpus = h.grade_corpus(tmp_path, aid)  # the hidden tests run on every device they find
    lost = _lost(corpus.scores[h.REFERENCE])
    nb = corpus.notebook(h.REFERENCE)
    assert not lost, {gid: h.error_summary(c) for gid, c in h.graded_test_cells(nb).items() if gid in lost}


# ---------------------------------------------------------------- the grading configuration itself


def _toy_notebook():
    """A one-function assignment whose test cells exercise what the config decides."""
    import nbformat.v4 as v4

    def cell(source, gid, **meta):
        c = v4.new_code_cell(source, id=gid)
        c.metadata["nbgrader"] = {"schema_version": 3, "grade_id": gid, "task": False, **meta}
        return c

    def test(source, gid):
        return cell(source, gid, solution=False, grade=True, locked=True, points=1)

    nb = v4.new_notebook()
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    nb.cells = [
        cell(
            "def f(x):\n    ### BEGIN SOLUTION\n    return x + 1\n    ### END SOLUTION",
            "f",
            solution=True,
            grade=False,
            locked=False,
        ),
        # A PyTorch UserWarning printed on stderr must not cost the cell its points.
        test("import torch\ntorch.tensor(torch.ones(1))\nassert f(1) == 2", "torch_warning"),
        test("import warnings\nwarnings.warn('careful', UserWarning)\nassert f(1) == 2", "python_warning"),
        # Anything else on stderr still does: the filter is narrow.
        test("import sys\nprint('Traceback: oops', file=sys.stderr)\nassert f(1) == 2", "other_stderr"),
        test("assert f(1) == 3, 'expected 3'", "failing"),
        # An infinite loop is interrupted and the notebook goes on.
        test("while True:\n    pass", "infinite_loop"),
        test("assert f(2) == 3", "after_the_loop"),
    ]
    return nb


def test_config_grades_warnings_errors_and_timeouts(tmp_path):
    import nbformat

    course = h.make_course(tmp_path, [])
    (course / "solutions" / "toy").mkdir(parents=True)
    nbformat.write(_toy_notebook(), course / "solutions" / "toy" / "toy.ipynb")
    release = h.read_notebook(h.generate_release(course, "toy"))
    h.submit(course, "toy", "student", h.submission(release, h.read_notebook(course / "solutions/toy/toy.ipynb")))
    # The configured per-cell timeout (checked below) is too long to wait for here; 20 s leaves
    # room for `import torch` on a busy machine.
    h.run_nbgrader(course, "autograde", "toy", "--force", "--Execute.timeout=20")
    scores = {gid: s.score for gid, s in h.read_scores(course, "toy", "student").items()}
    assert scores == {
        "torch_warning": 1,
        "python_warning": 1,
        "other_stderr": 0,
        "failing": 0,
        "infinite_loop": 0,
        "after_the_loop": 1,
    }
    outputs = h.graded_test_cells(h.autograded_notebook(course, "toy", "student"))
    assert "Warning" not in str(outputs["python_warning"].outputs), "the warning output should be dropped"
    assert "CellTimeoutError" in str(outputs["infinite_loop"].outputs)


def test_config_values():
    from traitlets.config.loader import PyFileConfigLoader

    config = PyFileConfigLoader(h.CONFIG.name, path=str(h.REPO)).load_config()
    assert config.CourseDirectory.source_directory == "solutions"
    assert config.CourseDirectory.release_directory == "assignments"
    assert Path(config.CourseDirectory.root) == h.REPO
    # Room for a 90 s CPU training cell with margin; an infinite loop still ends within minutes.
    assert 180 <= config.Execute.timeout <= 600
    assert config.IgnorePattern.enabled and config.OverwriteCells.add_missing_cells
    pattern = re.compile(config.IgnorePattern.pattern)
    assert pattern.search("/x/y.py:12: UserWarning: careful\n  warnings.warn('careful')\n")
    assert pattern.search("<ipython-input-3>:1: FutureWarning: soon\n")
    assert not pattern.search("Traceback (most recent call last):\nValueError: bad\n")
