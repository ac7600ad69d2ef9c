"""The book's visible code cells stay short: the idea's own code, at most :data:`MAX_VISIBLE_LINES` lines.

Plotting, widget-building and measurement plumbing live in ``segutils`` or in cells the page hides (tags
``hide-input``, ``remove-input``, ``hide-cell``, ``remove-cell``); a class too long for one cell is written
across several with ``segutils.notebook.add_to_class``.
"""

from __future__ import annotations

from pathlib import Path

import nbformat
import pytest

ROOT = Path(__file__).resolve().parents[1]
MAX_VISIBLE_LINES = 20
HIDING_TAGS = {"hide-input", "remove-input", "hide-cell", "remove-cell"}


def long_visible_cells(notebook: nbformat.NotebookNode, limit: int = MAX_VISIBLE_LINES) -> list[tuple[int, int]]:
    """``(cell index, lines)`` of the code cells a reader sees in full that have more than ``limit`` lines."""
    return [
        (i, len(cell.source.splitlines()))
        for i, cell in enumerate(notebook.cells)
        if cell.cell_type == "code"
        and not HIDING_TAGS & set(cell.metadata.get("tags", []))
        and len(cell.source.splitlines()) > limit
    ]


def chapters() -> list[Path]:
    return sorted((ROOT / "book").glob("*.ipynb"))


def test_long_visible_cells_sees_long_shown_cells_only():
    long_code = "\n".join(f"x{i} = {i}" for i in range(MAX_VISIBLE_LINES + 1))
    notebook = nbformat.v4.new_notebook()
    notebook.cells = [
        nbformat.v4.new_code_cell(long_code),
        nbformat.v4.new_code_cell(long_code, metadata={"tags": ["hide-input"]}),
        nbformat.v4.new_markdown_cell(long_code),
        nbformat.v4.new_code_cell("\n".join(long_code.splitlines()[:MAX_VISIBLE_LINES])),
    ]
    assert long_visible_cells(notebook) == [(0, MAX_VISIBLE_LINES + 1)]


def test_the_book_has_chapters_to_check():
    assert len(chapters()) >= 10


@pytest.mark.parametrize("path", chapters(), ids=lambda p: p.stem)
def test_visible_code_cells_are_short(path: Path):
    assert long_visible_cells(nbformat.read(path, as_version=4)) == [], (
        f"(cell index, lines) of visible code cells over {MAX_VISIBLE_LINES} lines: move plumbing to segutils "
        "or a hide-input cell, or split the cell where the argument does"
    )
