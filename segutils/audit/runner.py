"""Running a notebook's cells in process, one variant (mutant or fixture) at a time.

Each run executes every code cell of the notebook in order in a fresh namespace (named
``__main__``, as in a kernel), with one solution cell replaced, and records which graded test
cells raise. As nbgrader does, a failing cell does not stop the run. A run longer than the time
limit stops with a timeout (the grader's cell timeout would catch it too). Runs go to worker
processes (``spawn``, one thread each for PyTorch); modules the cells import stay imported in a
worker between runs, the namespace does not.
"""

from __future__ import annotations

import contextlib
import io
import os
import signal
import sys
import time
import warnings
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from multiprocessing import get_context
from pathlib import Path

from .notebook import Cell


class RunTimeout(BaseException):
    """The time limit of one run passed (a ``BaseException``: ``except Exception`` in a cell does not stop it)."""


@dataclass(frozen=True)
class RunOutcome:
    """What one run did: the failing test cells (``grade_id -> first line of the error``), seconds taken."""

    failures: dict[str, str]
    seconds: float
    timed_out: bool = False


def _on_alarm(signum, frame):  # noqa: ANN001 - signal handler signature
    raise RunTimeout()


def _reset_global_state() -> None:
    torch = sys.modules.get("torch")
    if torch is not None:
        torch.set_grad_enabled(True)
        torch.set_default_dtype(torch.float32)


def run_cells(
    cells: list[Cell], replacements: dict[int, str], timeout: float, stop_unless_in: frozenset[str] | None = None
) -> RunOutcome:
    """Execute ``cells`` (with ``replacements``: cell index -> source) and return the failing test cells.

    With ``stop_unless_in`` (the reference's own failures), the run stops at the first test cell that
    fails and is not in it: enough to know a mutant is caught, and much faster when the slow cells
    (training) come after the ones that catch it.
    """
    namespace: dict[str, object] = {"__name__": "__main__", "__builtins__": __builtins__}
    failures: dict[str, str] = {}
    start = time.monotonic()
    timed_out = False
    previous = signal.signal(signal.SIGALRM, _on_alarm)
    signal.setitimer(signal.ITIMER_REAL, timeout)
    sink = io.StringIO()
    current: Cell | None = None
    try:
        with contextlib.redirect_stdout(sink), contextlib.redirect_stderr(sink), warnings.catch_warnings():
            warnings.simplefilter("ignore")
            for cell in cells:
                current = cell
                source = replacements.get(cell.index, cell.source)
                try:
                    exec(compile(source, f"<cell {cell.index} {cell.grade_id or ''}>", "exec"), namespace)
                except RunTimeout:
                    raise
                except BaseException as error:  # noqa: BLE001 - a cell's failure is data here
                    if cell.kind == "test":
                        first = (str(error).strip().splitlines() or [""])[0]
                        failures[cell.grade_id or str(cell.index)] = f"{type(error).__name__}: {first[:200]}"
                        if stop_unless_in is not None and (cell.grade_id or str(cell.index)) not in stop_unless_in:
                            break
                sink.seek(0)
                sink.truncate()
    except RunTimeout:
        timed_out = True
        name = current.grade_id if current is not None and current.grade_id else "a cell"
        failures[name if current is not None and current.kind == "test" else "(timeout)"] = (
            f"timeout: the run took more than {timeout:g} s"
        )
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)
        _reset_global_state()
    return RunOutcome(failures, time.monotonic() - start, timed_out)


def _init_worker(cwd: str) -> None:
    for var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS"):
        os.environ[var] = "1"
    os.environ.setdefault("MPLBACKEND", "Agg")
    os.chdir(cwd)
    if cwd not in sys.path:
        sys.path.insert(0, cwd)


def make_pool(jobs: int, cwd: Path) -> ProcessPoolExecutor:
    """Worker processes for :func:`run_cells`, started in ``cwd`` (the notebook's folder)."""
    return ProcessPoolExecutor(
        max_workers=jobs, mp_context=get_context("spawn"), initializer=_init_worker, initargs=(str(cwd),)
    )
