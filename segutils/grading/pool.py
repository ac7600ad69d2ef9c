"""Grading jobs on this machine: N worker slots, each running one student at a time.

Every job runs in its own ``segutils.grading.runner`` process (started through
:func:`segutils.grading.sandbox.bootstrap_command`; its own session, so a
Ctrl-C at the terminal reaches only the batch, which then stops the jobs it started); a job that
crashes its process is reported as failed and the batch goes on. Slot ``i`` gets GPU
``i % len(gpus)`` (each slot one GPU when there are as many GPUs as workers).
"""
from __future__ import annotations

import os
import pickle
import queue
import signal
import subprocess
import sys
import tempfile
import threading
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from dataclasses import replace
from pathlib import Path
from typing import Callable, Iterable

from segutils.grading.runner import GradingJob, GradingResult
from segutils.grading.sandbox import GpuDevice, bootstrap_command

_RUNNING: set[subprocess.Popen] = set()
_RUNNING_LOCK = threading.Lock()


def failed_result(job: GradingJob, message: str) -> GradingResult:
    return GradingResult(student=job.student, status="failed", message=message, score=0.0, max_score=0.0, cells={},
                         notes=list(job.notes), seconds=0.0, exec_seconds=0.0, cuda_devices=0, digest="")


def run_job_subprocess(job: GradingJob, timeout: float | None = None) -> GradingResult:
    """Run ``job`` in a fresh ``segutils.grading.runner`` process and return its result."""
    with tempfile.TemporaryDirectory(prefix="segutils-job-") as tmp:
        job_path, result_path, log_path = Path(tmp, "job.pickle"), Path(tmp, "result.pickle"), Path(tmp, "log.txt")
        job_path.write_bytes(pickle.dumps(job))
        env = dict(os.environ)
        env["PATH"] = os.pathsep.join([str(Path(sys.executable).parent), env.get("PATH", "")])
        env["PYTHONWARNINGS"] = "ignore"
        with open(log_path, "wb") as log:
            process = subprocess.Popen(bootstrap_command(sys.executable, "runner", [str(job_path), str(result_path)]),
                                       stdin=subprocess.DEVNULL, stdout=log, stderr=log, env=env,
                                       start_new_session=True, preexec_fn=_die_with_parent)
        with _RUNNING_LOCK:
            _RUNNING.add(process)
        try:
            process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            _kill(process)
            return failed_result(job, f"grading took longer than {timeout:g} s and was stopped")
        finally:
            with _RUNNING_LOCK:
                _RUNNING.discard(process)
        if result_path.is_file():
            result = pickle.loads(result_path.read_bytes())
            if isinstance(result, GradingResult):
                return result
        tail = log_path.read_bytes()[-1500:].decode("utf-8", "replace").strip()
        return failed_result(job, f"the grading process failed (exit status {process.returncode}): {tail}")


def _die_with_parent() -> None:
    """``preexec_fn``: the job gets SIGKILL when the thread that started it dies (a crashed or killed batch),
    so no orphaned job keeps grading (and writing to the gradebook) after its batch is gone."""
    import ctypes

    pr_set_pdeathsig = 1
    ctypes.CDLL(None, use_errno=True).prctl(pr_set_pdeathsig, signal.SIGKILL, 0, 0, 0)


def _kill(process: subprocess.Popen) -> None:
    try:
        os.killpg(process.pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass
    process.wait()


def stop_all() -> None:
    """Kill every job process this module started (after Ctrl-C)."""
    with _RUNNING_LOCK:
        running = list(_RUNNING)
    for process in running:
        _kill(process)


class LocalPool:
    """``workers`` job processes at a time on this machine."""

    def __init__(self, workers: int, gpus: list[GpuDevice] | None = None, job_timeout: float | None = None) -> None:
        if isinstance(workers, bool) or not isinstance(workers, int) or workers < 1:
            raise ValueError(f"workers must be a positive int, got {workers!r}")
        self.workers = workers
        self.gpus = list(gpus or [])
        self.job_timeout = job_timeout

    def run(self, jobs: Iterable[GradingJob], on_result: Callable[[GradingResult], None]) -> None:
        """Grade ``jobs``; ``on_result`` is called (in this thread) as each finishes."""
        slots: queue.Queue[int] = queue.Queue()
        for slot in range(self.workers):
            slots.put(slot)

        def work(job: GradingJob) -> GradingResult:
            slot = slots.get()
            try:
                if self.gpus:
                    job = replace(job, options=replace(job.options, gpu=self.gpus[slot % len(self.gpus)].__dict__))
                return run_job_subprocess(job, self.job_timeout)
            finally:
                slots.put(slot)

        executor = ThreadPoolExecutor(max_workers=self.workers, thread_name_prefix="grade")
        pending: dict[Future, GradingJob] = {}
        try:
            pending = {executor.submit(work, job): job for job in jobs}
            while pending:
                done, _ = wait(list(pending), timeout=0.5, return_when=FIRST_COMPLETED)
                for future in done:
                    job = pending.pop(future)
                    try:
                        result = future.result()
                    except Exception as error:  # noqa: BLE001 - one job's failure is that job's
                        result = failed_result(job, f"{type(error).__name__}: {error}")
                    on_result(result)
        except BaseException:
            for future in pending:
                future.cancel()
            stop_all()
            raise
        finally:
            executor.shutdown(wait=True, cancel_futures=True)
