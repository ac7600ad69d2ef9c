"""Run nbgrader on copies of the course, for the tests of the assignments.

Conventions every assignment follows (``tests/test_assignments.py`` relies on them):

- ``solutions/<id>/<id>.ipynb`` is the nbgrader source of assignment ``<id>``: one notebook,
  every solution cell and test cell carrying a unique ``grade_id``; each solution cell is
  named after the function it defines.
- ``assignments/<id>/<id>.ipynb`` is its release, written by ``make assignments``.
- ``tests/fixtures/<id>/<name>.py`` is a submission that differs from the reference in one
  solution cell (see :class:`Fixture`); ``correct_*.py`` fixtures are alternative correct
  answers and must score full marks.

Everything runs in a temporary course directory (a copy of ``nbgrader_config.py`` and
``solutions/``), never in the repository.
"""

from __future__ import annotations

import ast
import json
import os
import shutil
import subprocess
import sys
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path

import nbformat
from nbformat import NotebookNode

REPO = Path(__file__).resolve().parents[1]
SOLUTIONS = REPO / "solutions"
RELEASES = REPO / "assignments"
FIXTURES = REPO / "tests" / "fixtures"
CONFIG = REPO / "nbgrader_config.py"

BEGIN_SOLUTION, END_SOLUTION = "BEGIN SOLUTION", "END SOLUTION"
BEGIN_HIDDEN, END_HIDDEN = "BEGIN HIDDEN TESTS", "END HIDDEN TESTS"

# Student ids of the two submissions every corpus holds besides the fixtures.
REFERENCE, BLANK = "reference", "blank"


def assignment_ids() -> list[str]:
    """Ids of the assignments: the folders ``solutions/<id>/`` that hold ``<id>.ipynb``."""
    if not SOLUTIONS.is_dir():
        return []
    return sorted(d.name for d in SOLUTIONS.iterdir() if (d / f"{d.name}.ipynb").is_file())


def source_path(assignment_id: str) -> Path:
    return SOLUTIONS / assignment_id / f"{assignment_id}.ipynb"


def release_path(assignment_id: str) -> Path:
    return RELEASES / assignment_id / f"{assignment_id}.ipynb"


def read_notebook(path: Path) -> NotebookNode:
    return nbformat.read(path, as_version=4)


def normalized(path: Path) -> object:
    """The notebook at ``path`` as parsed JSON, so that formatting differences do not count."""
    return json.loads(Path(path).read_text(encoding="utf-8"))


def nbgrader_meta(cell: NotebookNode) -> dict:
    return cell.get("metadata", {}).get("nbgrader", {})


def solution_cells(nb: NotebookNode) -> dict[str, NotebookNode]:
    """Solution cells of ``nb`` by ``grade_id``."""
    return {nbgrader_meta(c)["grade_id"]: c for c in nb.cells if nbgrader_meta(c).get("solution")}


def graded_test_cells(nb: NotebookNode) -> dict[str, NotebookNode]:
    """Autograded test cells (code cells with points) of ``nb`` by ``grade_id``."""
    return {
        nbgrader_meta(c)["grade_id"]: c
        for c in nb.cells
        if c.cell_type == "code" and nbgrader_meta(c).get("grade") and not nbgrader_meta(c).get("solution")
    }


def strip_solution_markers(source: str) -> str:
    """The source a student who wrote the reference answer would submit: markers removed."""
    return "\n".join(line for line in source.split("\n") if BEGIN_SOLUTION not in line and END_SOLUTION not in line)


def _partition(source: str) -> tuple[list[str], list[str]]:
    """Split ``source`` into lines students see and lines inside solution/hidden-test regions."""
    public, secret, inside = [], [], False
    for line in source.split("\n"):
        if BEGIN_SOLUTION in line or BEGIN_HIDDEN in line:
            inside = True
        elif END_SOLUTION in line or END_HIDDEN in line:
            inside = False
        else:
            (secret if inside else public).append(line)
    return public, secret


def public_lines(cell: NotebookNode) -> list[str]:
    """Lines of ``cell`` outside its solution and hidden-test regions (markers excluded)."""
    return _partition(cell.source)[0]


def secret_lines(cell: NotebookNode) -> list[str]:
    """Lines of ``cell`` inside its solution and hidden-test regions: what students must not see."""
    return _partition(cell.source)[1]


@dataclass(frozen=True)
class Fixture:
    """A submission that differs from the reference in one solution cell.

    The fixture file is plain Python: a module docstring saying what mistake it makes (or,
    for ``correct_*.py``, how it differs from the reference), ``REPLACES = "<grade_id>"``
    naming the solution cell it replaces, ``EXPECTED_FAILURES = {...}`` naming the test
    cells that must lose points (``set()`` for a correct alternative); everything else in
    the file, in order, is the new source of that cell. Like any cell of the notebook, it
    may use the names the set-up cell imports and the functions other cells define.
    """

    assignment_id: str
    name: str
    path: Path
    doc: str
    replaces: str
    expected_failures: frozenset[str]
    source: str


def load_fixture(path: Path) -> Fixture:
    """Parse one fixture file; raise ``ValueError`` naming the file if it breaks the format."""
    text = path.read_text(encoding="utf-8")
    tree = ast.parse(text, filename=str(path))
    doc = ast.get_docstring(tree)
    if not doc:
        raise ValueError(f"{path}: a fixture starts with a docstring that explains the mistake")
    found: dict[str, object] = {}
    drop: set[int] = set(range(tree.body[0].lineno, tree.body[0].end_lineno + 1))
    for node in tree.body[1:]:
        if isinstance(node, ast.Assign) and len(node.targets) == 1 and isinstance(node.targets[0], ast.Name):
            name = node.targets[0].id
            if name in ("REPLACES", "EXPECTED_FAILURES"):
                if isinstance(node.value, ast.Call) and ast.unparse(node.value) == "set()":
                    found[name] = set()
                else:
                    found[name] = ast.literal_eval(node.value)
                drop.update(range(node.lineno, node.end_lineno + 1))
    if not isinstance(found.get("REPLACES"), str):
        raise ValueError(f"{path}: REPLACES = '<grade_id of a solution cell>' is missing")
    expected = found.get("EXPECTED_FAILURES")
    if not isinstance(expected, set) or not all(isinstance(x, str) for x in expected):
        raise ValueError(f"{path}: EXPECTED_FAILURES must be a set of test-cell grade_ids (set() if correct)")
    source = "\n".join(line for i, line in enumerate(text.split("\n"), start=1) if i not in drop).strip("\n")
    return Fixture(
        assignment_id=path.parent.name,
        name=path.stem,
        path=path,
        doc=doc,
        replaces=found["REPLACES"],
        expected_failures=frozenset(expected),
        source=source + "\n",
    )


def load_fixtures(assignment_id: str) -> list[Fixture]:
    folder = FIXTURES / assignment_id
    if not folder.is_dir():
        return []
    return [load_fixture(p) for p in sorted(folder.glob("*.py")) if not p.name.startswith("_")]


def submission(
    release: NotebookNode, source: NotebookNode, replacements: Mapping[str, str] | None = None
) -> NotebookNode:
    """A student's notebook: the release with every solution cell answered.

    A cell named in ``replacements`` (``grade_id -> source``) gets that source, every other
    solution cell the reference answer of ``source`` without its solution markers.
    """
    replacements = dict(replacements or {})
    answers = {gid: strip_solution_markers(c.source) for gid, c in solution_cells(source).items()}
    unknown = set(replacements) - set(answers)
    if unknown:
        raise KeyError(f"no solution cell with grade_id {sorted(unknown)}; solution cells: {sorted(answers)}")
    answers.update(replacements)
    nb = nbformat.from_dict(json.loads(json.dumps(release)))
    for gid, cell in solution_cells(nb).items():
        cell.source = answers[gid]
    return nb


def _environment(extra: Mapping[str, str | None] | None) -> dict[str, str]:
    """Environment for nbgrader and its kernels.

    nbgrader runs ``alembic`` from ``PATH``, so this interpreter's ``bin/`` goes first; the
    repository goes on ``PYTHONPATH`` so kernels import this checkout's ``segutils``;
    one thread per kernel because test workers run side by side.
    """
    env = dict(os.environ)
    env["PATH"] = os.pathsep.join([str(Path(sys.executable).parent), env.get("PATH", "")])
    env["PYTHONPATH"] = os.pathsep.join(p for p in [str(REPO), env.get("PYTHONPATH", "")] if p)
    env.setdefault("OMP_NUM_THREADS", "1")
    env.setdefault("MKL_NUM_THREADS", "1")
    env["MPLBACKEND"] = "Agg"
    env.pop("SEGUTILS_DEVICE", None)
    for key, value in (extra or {}).items():
        if value is None:
            env.pop(key, None)
        else:
            env[key] = value
    return env


def run_nbgrader(
    course: Path, *args: str, env: Mapping[str, str | None] | None = None, timeout: float = 1800
) -> subprocess.CompletedProcess:
    """Run ``nbgrader <args>`` in ``course``; raise with its log if it fails."""
    command = [str(Path(sys.executable).parent / "nbgrader"), *args]
    result = subprocess.run(command, cwd=course, env=_environment(env), capture_output=True, text=True, timeout=timeout)
    if result.returncode != 0:
        raise RuntimeError(
            f"`nbgrader {' '.join(args)}` failed with exit code {result.returncode}\n"
            f"--- stdout\n{result.stdout[-5000:]}\n--- stderr\n{result.stderr[-5000:]}"
        )
    return result


def make_course(root: Path, assignment_ids: Iterable[str], config: Path = CONFIG) -> Path:
    """Create a course directory in ``root``: the config file and the sources of ``assignment_ids``."""
    root.mkdir(parents=True, exist_ok=True)
    shutil.copy(config, root / "nbgrader_config.py")
    for aid in assignment_ids:
        shutil.copytree(
            SOLUTIONS / aid,
            root / "solutions" / aid,
            ignore=shutil.ignore_patterns(".ipynb_checkpoints", "__pycache__"),
        )
    return root


def generate_release(course: Path, assignment_id: str) -> Path:
    """Run ``nbgrader generate_assignment`` in ``course``; return the release notebook's path."""
    run_nbgrader(course, "generate_assignment", assignment_id, "--force")
    return course / "assignments" / assignment_id / f"{assignment_id}.ipynb"


def submit(course: Path, assignment_id: str, student: str, nb: NotebookNode) -> Path:
    folder = course / "submitted" / student / assignment_id
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{assignment_id}.ipynb"
    nbformat.write(nb, path)
    return path


def autograde(course: Path, assignment_id: str, env: Mapping[str, str | None] | None = None) -> None:
    """Autograde every submission of ``assignment_id`` in one nbgrader run (students run serially)."""
    run_nbgrader(course, "autograde", assignment_id, "--force", env=env)


@dataclass(frozen=True)
class CellScore:
    score: float
    max_score: float

    @property
    def full(self) -> bool:
        return self.score == self.max_score


def read_scores(course: Path, assignment_id: str, student: str) -> dict[str, CellScore]:
    """Scores of one student's autograded test cells, by ``grade_id``, from the gradebook."""
    from nbgrader.api import Gradebook

    with Gradebook(f"sqlite:///{course / 'gradebook.db'}") as gb:
        nb = gb.find_submission_notebook(assignment_id, assignment_id, student)
        return {
            g.name: CellScore(float(g.score), float(g.max_score))
            for g in nb.grades
            if g.cell.cell_type == "code" and g.auto_score is not None
        }


def autograded_notebook(course: Path, assignment_id: str, student: str) -> NotebookNode:
    return read_notebook(course / "autograded" / student / assignment_id / f"{assignment_id}.ipynb")


def error_summary(cell: NotebookNode) -> str:
    """``Name: message`` of the error a graded cell ended with, or ``""``."""
    for output in cell.get("outputs", []):
        if output.output_type == "error":
            return f"{output.ename}: {output.evalue}"
        if output.output_type == "stream" and output.name == "stderr":
            return f"stderr: {output.text.strip()}"
    return ""


@dataclass
class GradedCorpus:
    """Every submission of one assignment, autograded once in one course directory."""

    assignment_id: str
    course: Path
    fixtures: dict[str, Fixture]
    scores: dict[str, dict[str, CellScore]]

    def notebook(self, student: str) -> NotebookNode:
        return autograded_notebook(self.course, self.assignment_id, student)


def grade_corpus(
    course_root: Path,
    assignment_id: str,
    fixtures: Iterable[Fixture] = (),
    env: Mapping[str, str | None] | None = None,
) -> GradedCorpus:
    """Grade the reference answer, the blank release and every fixture of ``assignment_id``.

    The student ids are :data:`REFERENCE`, :data:`BLANK` and each fixture's name.
    """
    fixtures = {f.name: f for f in fixtures}
    clash = {REFERENCE, BLANK} & set(fixtures)
    if clash:
        raise ValueError(f"fixture names {sorted(clash)} are reserved for the reference and blank submissions")
    course = make_course(course_root, [assignment_id])
    release = read_notebook(generate_release(course, assignment_id))
    source = read_notebook(course / "solutions" / assignment_id / f"{assignment_id}.ipynb")
    submit(course, assignment_id, REFERENCE, submission(release, source))
    submit(course, assignment_id, BLANK, release)
    for name, fixture in fixtures.items():
        submit(course, assignment_id, name, submission(release, source, {fixture.replaces: fixture.source}))
    autograde(course, assignment_id, env=env)
    students = [REFERENCE, BLANK, *fixtures]
    scores = {s: read_scores(course, assignment_id, s) for s in students}
    return GradedCorpus(assignment_id, course, fixtures, scores)


def sandbox_args() -> list[str]:
    """``segutils grade``'s ``--no-sandbox`` where this machine cannot run bubblewrap, else nothing."""
    from segutils.grading import sandbox

    try:
        sandbox.check_sandbox()
    except sandbox.SandboxUnavailable:
        return ["--no-sandbox"]
    return []
