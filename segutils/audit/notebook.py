"""An nbgrader source notebook as the audit needs it: code cells in order, by kind."""

from __future__ import annotations

import ast
from dataclasses import dataclass
from pathlib import Path

BEGIN_SOLUTION, END_SOLUTION = "### BEGIN SOLUTION", "### END SOLUTION"


@dataclass(frozen=True)
class Cell:
    """One code cell: ``kind`` is ``"solution"``, ``"test"`` (graded, with points) or ``"code"``."""

    index: int
    kind: str
    grade_id: str | None
    source: str
    points: float = 0.0


def strip_solution_markers(source: str) -> str:
    """The source a student who wrote the reference answer would submit: markers removed."""
    return "\n".join(line for line in source.split("\n") if BEGIN_SOLUTION not in line and END_SOLUTION not in line)


def read_cells(path: Path) -> list[Cell]:
    """The code cells of the nbgrader source notebook at ``path``, markers of solutions removed.

    Hidden-test markers are comments and stay. Raises ``ValueError`` for a notebook without a
    solution cell or without a graded test cell (nothing to audit).
    """
    import nbformat  # here, not at the top: the worker processes import this module and never need it

    nb = nbformat.read(str(path), as_version=4)
    cells: list[Cell] = []
    for i, cell in enumerate(nb.cells):
        if cell.cell_type != "code":
            continue
        meta = cell.get("metadata", {}).get("nbgrader", {})
        if meta.get("solution"):
            cells.append(Cell(i, "solution", meta.get("grade_id"), strip_solution_markers(cell.source)))
        elif meta.get("grade"):
            cells.append(Cell(i, "test", meta.get("grade_id"), cell.source, float(meta.get("points") or 0)))
        else:
            cells.append(Cell(i, "code", meta.get("grade_id"), cell.source))
    if not any(c.kind == "solution" for c in cells):
        raise ValueError(f"{path}: no nbgrader solution cell (metadata nbgrader.solution), nothing to mutate")
    if not any(c.kind == "test" for c in cells):
        raise ValueError(f"{path}: no graded test cell (metadata nbgrader.grade), nothing would catch a mutant")
    return cells


def graded_functions(cells: list[Cell]) -> dict[str, str]:
    """The top-level functions and classes of the solution cells: ``name -> grade_id`` of their cell."""
    found: dict[str, str] = {}
    for cell in cells:
        if cell.kind != "solution":
            continue
        for node in ast.parse(cell.source).body:
            if isinstance(node, (ast.FunctionDef, ast.ClassDef)):
                found[node.name] = cell.grade_id or f"cell {cell.index}"
    return found


@dataclass(frozen=True)
class Fixture:
    """A hand-written answer of ``tests/fixtures/<id>/``: ``replaces`` the solution cell with this grade_id.

    The format is the one the test suite's harness reads: a docstring, ``REPLACES = "<grade_id>"``,
    ``EXPECTED_FAILURES = {...}`` (``set()`` for a correct alternative), then the cell's source.
    """

    name: str
    replaces: str
    expected_failures: frozenset[str]
    source: str

    @property
    def correct(self) -> bool:
        return not self.expected_failures


def read_fixture(path: Path) -> Fixture:
    """Parse one fixture file; ``ValueError`` naming the file if it breaks the format."""
    text = path.read_text(encoding="utf-8")
    tree = ast.parse(text, filename=str(path))
    if not ast.get_docstring(tree):
        raise ValueError(f"{path}: a fixture starts with a docstring that explains the mistake")
    found: dict[str, object] = {}
    drop = set(range(tree.body[0].lineno, tree.body[0].end_lineno + 1))
    for node in tree.body[1:]:
        if (
            isinstance(node, ast.Assign)
            and len(node.targets) == 1
            and isinstance(node.targets[0], ast.Name)
            and node.targets[0].id in ("REPLACES", "EXPECTED_FAILURES")
        ):
            value = ast.unparse(node.value)
            found[node.targets[0].id] = set() if value == "set()" else ast.literal_eval(node.value)
            drop.update(range(node.lineno, node.end_lineno + 1))
    if not isinstance(found.get("REPLACES"), str):
        raise ValueError(f"{path}: REPLACES = '<grade_id of a solution cell>' is missing")
    expected = found.get("EXPECTED_FAILURES")
    if not isinstance(expected, set):
        raise ValueError(f"{path}: EXPECTED_FAILURES must be a set of test-cell grade_ids (set() if correct)")
    source = "\n".join(line for i, line in enumerate(text.split("\n"), start=1) if i not in drop).strip("\n")
    return Fixture(path.stem, found["REPLACES"], frozenset(expected), source + "\n")


def read_fixtures(folder: Path) -> list[Fixture]:
    """Every fixture of ``folder`` (files starting with ``_`` are helpers, not fixtures)."""
    if not folder.is_dir():
        return []
    return [read_fixture(p) for p in sorted(folder.glob("*.py")) if not p.name.startswith("_")]
