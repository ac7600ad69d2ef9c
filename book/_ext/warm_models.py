"""Train the book's reference models into the segutils model cache before the chapters run.

``make book`` runs this before ``jupyter-book build``. The chapters get their trained models
from :func:`segutils.zoo.trained_model`, which trains a model only when its checkpoint is not
cached. A cold build would otherwise train inside a notebook cell, where several models in
one cell can exceed the per-cell timeout on a loaded machine. Training here, outside any
cell, has no timeout; the cells then load the checkpoints in a second.

The models are found, not listed: every ``trained_model("<name>", <keyword>=<literal>, ...)``
call in a code cell of the chapters whose arguments are all literals (``progress`` aside).
Calls with computed arguments are left to their cells. A model already cached costs nothing,
so a warm build spends well under a second here.

Usage: ``python book/_ext/warm_models.py book/*.ipynb``
"""
from __future__ import annotations

import ast
import sys
import time
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import nbformat

#: Keyword arguments of ``trained_model`` that do not change the trained model.
IGNORED_KEYWORDS = {"progress", "device"}


def literal_calls(source: str) -> list[tuple[str, dict[str, Any]]]:
    """``(name, model kwargs)`` of every all-literal ``trained_model(...)`` call in Python ``source``.

    Cells that do not parse as Python (IPython magics) are skipped.
    """
    try:
        tree = ast.parse(source)
    except SyntaxError:
        return []
    calls = []
    for node in ast.walk(tree):
        if not (isinstance(node, ast.Call) and getattr(node.func, "id", getattr(node.func, "attr", None)) == "trained_model"):
            continue
        if len(node.args) != 1 or not isinstance(node.args[0], ast.Constant) or not isinstance(node.args[0].value, str):
            continue
        try:
            kwargs = {kw.arg: ast.literal_eval(kw.value) for kw in node.keywords if kw.arg not in IGNORED_KEYWORDS}
        except ValueError:
            continue
        if None in kwargs:  # a ``**mapping`` argument
            continue
        calls.append((node.args[0].value, kwargs))
    return calls


def book_models(notebooks: Iterable[Path]) -> list[tuple[str, dict[str, Any]]]:
    """The distinct all-literal ``trained_model`` calls of ``notebooks``, in order of appearance."""
    found: list[tuple[str, dict[str, Any]]] = []
    for path in notebooks:
        notebook = nbformat.read(path, as_version=4)
        for cell in notebook.cells:
            if cell.cell_type == "code":
                for call in literal_calls(cell.source):
                    if call not in found:
                        found.append(call)
    return found


def main(argv: list[str]) -> int:
    from segutils.zoo import cache_dir, trained_model

    models = book_models(Path(arg) for arg in argv)
    print(f"warm_models: {len(models)} reference models, cache {cache_dir()}", flush=True)
    for name, kwargs in models:
        start = time.perf_counter()
        trained_model(name, progress=False, **kwargs)
        print(f"warm_models: {name} {kwargs or ''} ready in {time.perf_counter() - start:.1f} s", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
