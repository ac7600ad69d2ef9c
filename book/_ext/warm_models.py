"""Train the book's reference models into the segutils model cache before the chapters run.

``make book`` runs this before ``jupyter-book build``. The chapters get their trained models
from :func:`segutils.zoo.trained_model`, which trains a model only when its checkpoint is not
cached. A cold build would otherwise train inside a notebook cell, where several models in
one cell can exceed the per-cell timeout on a loaded machine. Training here, outside any
cell, has no timeout; the cells then load the checkpoints in a second.

The models are found, not listed: every ``trained_model("<name>", <keyword>=<literal>, ...)``
call in a code cell of the chapters whose arguments are all literals (``progress`` aside).
The training configuration may be given as ``TrainingConfig(<keyword>=<literal>, ...)``, and
a name bound by an enclosing ``for`` loop or comprehension over a literal tuple or list (for
example ``for seed in (0, 1, 2)``) counts as each of its values, so that the runs of a
seed study are found too; so does a name assigned once, ``study = TrainingConfig(...)``, in
the cell or an earlier one (evaluated with the loop values of the call that uses it), and
``replace(study, <keyword>=<literal>, ...)`` of such a configuration, inline or assigned once. Calls
with other computed arguments are left to their cells. The missing models are trained side by
side, one worker process per ``segutils.zoo.TRAINING_THREADS`` CPUs (at most four), the models of one data
configuration one after another (:func:`grouped_by_data`); a warm build,
with every model cached, starts no worker and spends a few seconds here.

Usage: ``python book/_ext/warm_models.py book/*.ipynb``
"""

from __future__ import annotations

import ast
import multiprocessing
import os
import sys
import time
from collections.abc import Iterable
from concurrent.futures import ProcessPoolExecutor, as_completed
from pathlib import Path
from typing import Any

import nbformat

#: Keyword arguments of ``trained_model`` that do not change the trained model.
IGNORED_KEYWORDS = {"progress", "device"}


class _NotLiteral(Exception):
    """An argument that is neither a literal nor a loop variable over literals."""


def _loop_bindings(tree: ast.AST) -> dict[ast.AST, list[tuple[str, list[Any]]]]:
    """For every node, the ``(name, values)`` of the enclosing loops over literal sequences."""
    bindings: dict[ast.AST, list[tuple[str, list[Any]]]] = {}

    def visit(node: ast.AST, bound: list[tuple[str, list[Any]]]) -> None:
        bindings[node] = bound
        inner = bound
        generators = [node] if isinstance(node, ast.For) else getattr(node, "generators", [])
        for loop in generators:
            if isinstance(loop.target, ast.Name):
                try:
                    values = list(ast.literal_eval(loop.iter))
                except (ValueError, TypeError, SyntaxError):
                    continue
                inner = [*inner, (loop.target.id, values)]
        for child in ast.iter_child_nodes(node):
            visit(child, inner)

    visit(tree, [])
    return bindings


def _called(node: ast.AST) -> str | None:
    return getattr(node.func, "id", getattr(node.func, "attr", None)) if isinstance(node, ast.Call) else None


def _is_config(node: ast.AST) -> bool:
    """``TrainingConfig(...)``, or ``replace(<config>, ...)`` (``dataclasses.replace`` of one)."""
    return _called(node) == "TrainingConfig" or (_called(node) == "replace" and len(node.args) == 1)


def _value(node: ast.AST, names: dict[str, Any], configs: dict[str, ast.AST] | None = None) -> Any:
    """A literal, a bound loop name, ``TrainingConfig(<keyword>=<value>, ...)`` or ``replace(<config>,
    <keyword>=<value>, ...)`` (as a dict), or a name assigned such a configuration (``configs``: name -> call)."""
    if isinstance(node, ast.Name) and node.id in names:
        return names[node.id]
    if isinstance(node, ast.Name) and configs and node.id in configs:
        return _value(configs[node.id], names, {k: v for k, v in configs.items() if k != node.id})
    if _is_config(node):
        if any(kw.arg is None for kw in node.keywords) or (_called(node) == "TrainingConfig" and node.args):
            raise _NotLiteral
        base = _value(node.args[0], names, configs) if node.args else {"__config__": {}}
        if not (isinstance(base, dict) and "__config__" in base):
            raise _NotLiteral
        return {"__config__": {**base["__config__"], **{kw.arg: _value(kw.value, names) for kw in node.keywords}}}
    try:
        return ast.literal_eval(node)
    except (ValueError, TypeError, SyntaxError):
        raise _NotLiteral from None


def config_assignments(source: str) -> dict[str, ast.AST]:
    """``{name: call}`` for every name assigned exactly once a configuration (``TrainingConfig(...)`` or
    ``replace(<another name>, ...)``) in ``source``."""
    try:
        tree = ast.parse(source)
    except SyntaxError:
        return {}
    assigned = [
        (n.targets[0].id, n.value)
        for n in ast.walk(tree)
        if isinstance(n, ast.Assign)
        and len(n.targets) == 1
        and isinstance(n.targets[0], ast.Name)
        and _is_config(n.value)
        and not any(isinstance(a, ast.Name) and a.id == n.targets[0].id for a in n.value.args)  # x = replace(x, ...)
    ]
    names = [name for name, _ in assigned]
    return {name: value for name, value in assigned if names.count(name) == 1}


def literal_calls(source: str, configs: dict[str, ast.AST] | None = None) -> list[tuple[str, dict[str, Any]]]:
    """``(name, arguments)`` of every all-literal ``trained_model(...)`` call in Python ``source``.

    ``arguments`` are the model's keyword arguments, plus ``"__config__"`` (the keyword
    arguments of ``TrainingConfig``) when the call passes a configuration. A call inside
    loops over literal sequences yields one entry per combination of the loop values.
    Cells that do not parse as Python (IPython magics) are skipped.
    """
    try:
        tree = ast.parse(source)
    except SyntaxError:
        return []
    bindings = _loop_bindings(tree)
    # ``study = TrainingConfig(...)``: a name given one configuration (in this source, else in ``configs``, e.g.
    # from the notebook's earlier cells), evaluated with the loop names of each call.
    configs = {**(configs or {}), **config_assignments(source)}
    calls = []
    for node in ast.walk(tree):
        if not (
            isinstance(node, ast.Call) and getattr(node.func, "id", getattr(node.func, "attr", None)) == "trained_model"
        ):
            continue
        if (
            not 1 <= len(node.args) <= 2
            or not isinstance(node.args[0], ast.Constant)
            or not isinstance(node.args[0].value, str)
        ):
            continue
        if any(kw.arg is None for kw in node.keywords):  # a ``**mapping`` argument
            continue
        loops = bindings.get(node, [])
        combinations: list[dict[str, Any]] = [{}]
        for name, values in loops:
            combinations = [{**names, name: value} for names in combinations for value in values]
        for names in combinations:
            try:
                kwargs = {
                    kw.arg: _value(kw.value, names, configs) for kw in node.keywords if kw.arg not in IGNORED_KEYWORDS
                }
                if len(node.args) == 2:
                    config = _value(node.args[1], names, configs)
                    if not (isinstance(config, dict) and "__config__" in config):
                        continue
                    kwargs.update(config)
                if "config" in kwargs:
                    config = kwargs.pop("config")
                    if not (isinstance(config, dict) and "__config__" in config):
                        continue
                    kwargs.update(config)
            except _NotLiteral:
                continue
            call = (node.args[0].value, kwargs)
            if call not in calls:
                calls.append(call)
    return calls


def book_models(notebooks: Iterable[Path]) -> list[tuple[str, dict[str, Any]]]:
    """The distinct all-literal ``trained_model`` calls of ``notebooks``, in order of appearance."""
    found: list[tuple[str, dict[str, Any]]] = []
    for path in notebooks:
        notebook = nbformat.read(path, as_version=4)
        configs: dict[str, ast.AST] = {}
        for cell in notebook.cells:
            if cell.cell_type == "code":
                for call in literal_calls(cell.source, configs):
                    if call not in found:
                        found.append(call)
                configs.update(config_assignments(cell.source))
    return found


def _arguments(kwargs: dict[str, Any]) -> tuple[Any, dict[str, Any]]:
    """``(TrainingConfig, model keyword arguments)`` of a call found by :func:`book_models`."""
    from segutils.zoo import TrainingConfig

    model_kwargs = dict(kwargs)
    return TrainingConfig(**model_kwargs.pop("__config__", {})), model_kwargs


def _checkpoint(name: str, kwargs: dict[str, Any]) -> Path:
    """Where the model of a call found by :func:`book_models` is cached (once trained)."""
    from segutils.zoo import checkpoint_path

    config, model_kwargs = _arguments(kwargs)
    return checkpoint_path(name, config, **model_kwargs)


def grouped_by_data(calls: list[tuple[str, dict[str, Any]]]) -> list[tuple[str, dict[str, Any]]]:
    """``calls`` (found by :func:`book_models`) reordered so that the models trained on the same data follow one
    another: the data configurations in order of first appearance, the calls of each in their own order.

    A worker renders a configuration's data once and keeps it (``segutils.zoo.rendered``, a small cache), so
    models of one configuration in a row cost one rendering per worker instead of one per model: the chapters
    name them in another order (chapter 8 loops over the seeds inside each model)."""
    groups: dict[tuple, list[tuple[str, dict[str, Any]]]] = {}
    for call in calls:
        c = _arguments(call[1])[0]
        data = (c.image_size, c.train_size, c.val_size, c.seed, c.outline_detail, c.object_tint)  # zoo.loaders' data
        groups.setdefault(data, []).append(call)
    return [call for group in groups.values() for call in group]


def training_processes() -> int:
    """Models trained at once: one per ``TRAINING_THREADS`` of the CPUs this process may use, at most four
    (each process holds its own copy of the training data, about a GiB)."""
    from segutils.zoo import TRAINING_THREADS

    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    return max(1, min(4, cpus // TRAINING_THREADS))


def main(argv: list[str]) -> int:
    from segutils.zoo import cache_dir, ensure_trained

    models = book_models(Path(arg) for arg in argv)
    distinct = {}  # two calls can name one model: TrainingConfig() and TrainingConfig(seed=0)
    for name, kwargs in models:
        distinct.setdefault(_checkpoint(name, kwargs), (name, kwargs))
    missing = grouped_by_data([call for path, call in distinct.items() if not path.exists()])
    print(f"warm_models: {len(distinct)} reference models, {len(missing)} to train, cache {cache_dir()}", flush=True)
    if not missing:
        return 0
    processes = min(training_processes(), len(missing))
    print(f"warm_models: training {processes} at once", flush=True)
    total = time.perf_counter()
    # spawn, not fork: a forked child of a process that has run PyTorch's thread pools can hang.
    with ProcessPoolExecutor(processes, mp_context=multiprocessing.get_context("spawn")) as pool:
        futures = {}
        for name, kwargs in missing:
            config, model_kwargs = _arguments(kwargs)
            futures[pool.submit(ensure_trained, name, config, **model_kwargs)] = (name, kwargs)
        for future in as_completed(futures):
            _, seconds = future.result()
            name, kwargs = futures[future]
            elapsed = time.perf_counter() - total
            print(f"warm_models: {name} {kwargs or ''} trained in {seconds:.1f} s, {elapsed:.1f} s in", flush=True)
    print(f"warm_models: all ready in {time.perf_counter() - total:.1f} s", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
