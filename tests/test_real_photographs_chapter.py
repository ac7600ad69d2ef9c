"""Chapter 10 ("Real photographs") executes in both of its branches: without the pretrained weights (the default
on a machine without network access) and with them (randomly initialised state dicts of the right architectures in
a temporary ``$TORCH_HOME``, plus a tiny PASCAL VOC folder, so that every prediction, timing and figure cell runs;
the numbers are meaningless and not asserted). The book build (tests/test_book.py) executes the chapter as the
machine has it; tests/test_site.py checks its page in a browser.
"""

from __future__ import annotations

from pathlib import Path

import nbformat
import pytest
from conftest import ROOT
from test_pretrained import write_tiny_voc, write_weights

CHAPTER = ROOT / "book" / "10_real_photographs.ipynb"


@pytest.fixture(scope="module")
def weights_home(tmp_path_factory) -> Path:
    """A ``$TORCH_HOME`` holding random weights of every pretrained architecture (as in tests/test_pretrained.py)."""
    home = tmp_path_factory.mktemp("torch_home")
    write_weights(home)
    return home


def execute_chapter(monkeypatch, torch_home: Path, voc_root: Path | None = None) -> nbformat.NotebookNode:
    from nbclient import NotebookClient

    monkeypatch.setenv("TORCH_HOME", str(torch_home))  # the kernel inherits the environment
    monkeypatch.setenv("SEGUTILS_VOC_ROOT", str(voc_root or torch_home / "no-voc-here"))
    notebook = nbformat.read(CHAPTER, as_version=4)
    NotebookClient(
        notebook, timeout=900, kernel_name="python3", resources={"metadata": {"path": str(CHAPTER.parent)}}
    ).execute()
    return notebook


def outputs(notebook: nbformat.NotebookNode, mime: str) -> list[str]:
    return [
        o["data"][mime]
        for cell in notebook.cells
        if cell.cell_type == "code"
        for o in cell.get("outputs", [])
        if mime in o.get("data", {})
    ]


@pytest.mark.slow
def test_chapter_without_weights_shows_photographs_and_notes(monkeypatch, tmp_path):
    notebook = execute_chapter(monkeypatch, tmp_path)
    markdown = outputs(notebook, "text/markdown")
    notes = [m for m in markdown if m.startswith(":::{admonition} Pretrained weights needed")]
    assert len(notes) == 6, markdown
    assert all("segutils weights fetch" in note for note in notes)
    assert len(outputs(notebook, "image/png")) == 1, "only the photographs are drawn"
    # The architecture measurements need no weights: their table and glued values are there.
    assert any("where dilation replaced stride" in m for m in markdown)
    glued = outputs(notebook, "application/papermill.record/text/plain")
    assert "'layer3 and layer4'" in glued


@pytest.mark.slow
def test_chapter_with_weights_draws_every_figure(monkeypatch, weights_home, tmp_path):
    notebook = execute_chapter(monkeypatch, weights_home, write_tiny_voc(tmp_path / "voc", count=2))
    markdown = outputs(notebook, "text/markdown")
    assert not [m for m in markdown if "admonition" in m], markdown
    assert len(outputs(notebook, "image/png")) == 4  # photographs, predictions, probability maps, crops
    assert any("first 2 VOC 2012 val images" in m for m in markdown)
    assert any("nearest ≠ own" in m for m in markdown)
