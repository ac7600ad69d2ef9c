"""Grading jobs on this machine: N worker slots, each running one student at a time.

Every job runs in a process of its own, in its own session (a Ctrl-C at the terminal reaches only
the batch, which then stops the jobs it started); a job that crashes its process is reported as
failed and the batch goes on. :class:`LocalPool` gives each slot a :mod:`segutils.grading.jobserver`
that forks the slot's jobs with nbgrader already imported; :func:`run_job_subprocess` (used on Dask
workers) starts a fresh interpreter per job through :func:`segutils.grading.sandbox.bootstrap_command`.
Slot ``i`` gets GPU ``i % len(gpus)`` (each slot one GPU when there are as many GPUs as workers).
Jobs never outlive the batch: each process is killed when its parent dies (``PR_SET_PDEATHSIG``).
"""

from __future__ import annotations

import json
import os
import pickle
import queue
import select
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterable
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from dataclasses import replace
from pathlib import Path

from segutils.grading.jobserver import die_with_parent, kill_process_group
from segutils.grading.runner import GradingJob, GradingResult
from segutils.grading.sandbox import GpuDevice, bootstrap_command

_RUNNING: set[int] = set()  # process ids of running jobs, each the leader of its session
_RUNNING_LOCK = threading.Lock()


def failed_result(job: GradingJob, message: str) -> GradingResult:
    return GradingResult(
        student=job.student,
        status="failed",
        message=message,
        score=0.0,
        max_score=0.0,
        cells={},
        notes=list(job.notes),
        seconds=0.0,
        exec_seconds=0.0,
        cuda_devices=0,
        digest="",
    )


def _timed_out(job: GradingJob, timeout: float | None) -> GradingResult:
    return failed_result(job, f"grading took longer than {timeout:g} s and was stopped")


def _job_files(job: GradingJob, tmp: str) -> tuple[Path, Path, Path]:
    """Write ``job`` into ``tmp``; the paths of the job, its result and its log."""
    job_path, result_path, log_path = Path(tmp, "job.pickle"), Path(tmp, "result.pickle"), Path(tmp, "log.txt")
    job_path.write_bytes(pickle.dumps(job))
    return job_path, result_path, log_path


def _job_environment() -> dict[str, str]:
    env = dict(os.environ)
    env["PATH"] = os.pathsep.join([str(Path(sys.executable).parent), env.get("PATH", "")])
    env["PYTHONWARNINGS"] = "ignore"
    return env


def _collect(job: GradingJob, result_path: Path, log_path: Path, exit_status: int | None) -> GradingResult:
    """The job's result, or a failed one quoting the end of its log."""
    if result_path.is_file():
        result = pickle.loads(result_path.read_bytes())
        if isinstance(result, GradingResult):
            return result
    tail = log_path.read_bytes()[-1500:].decode("utf-8", "replace").strip() if log_path.is_file() else ""
    return failed_result(job, f"the grading process failed (exit status {exit_status}): {tail}")


class _Tracked:
    """``with _Tracked(pid):`` the job is killed by :func:`stop_all` while it runs."""

    def __init__(self, pid: int) -> None:
        self.pid = pid

    def __enter__(self) -> None:
        with _RUNNING_LOCK:
            _RUNNING.add(self.pid)

    def __exit__(self, *exc: object) -> None:
        with _RUNNING_LOCK:
            _RUNNING.discard(self.pid)


def stop_all() -> None:
    """Kill every running job this module started (after Ctrl-C); their threads collect them."""
    with _RUNNING_LOCK:
        running = list(_RUNNING)
    for pid in running:
        kill_process_group(pid)


def run_job_subprocess(job: GradingJob, timeout: float | None = None) -> GradingResult:
    """Run ``job`` in a fresh ``segutils.grading.runner`` interpreter and return its result."""
    with tempfile.TemporaryDirectory(prefix="segutils-job-") as tmp:
        job_path, result_path, log_path = _job_files(job, tmp)
        with open(log_path, "wb") as log:
            process = subprocess.Popen(
                bootstrap_command(sys.executable, "runner", [str(job_path), str(result_path)]),
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=log,
                env=_job_environment(),
                start_new_session=True,
                preexec_fn=die_with_parent,
            )
        with _Tracked(process.pid):
            try:
                process.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                kill_process_group(process.pid)
                process.wait()
                return _timed_out(job, timeout)
        return _collect(job, result_path, log_path, process.returncode)


class JobServerStopped(RuntimeError):
    """The job server died or answered nonsense."""


class JobServer:
    """One :mod:`segutils.grading.jobserver` process and the jobs it forks, one at a time.

    It is killed when the thread that creates it dies; :meth:`close` ends it.
    """

    def __init__(self) -> None:
        self._stderr = tempfile.TemporaryFile()
        self.process = subprocess.Popen(
            bootstrap_command(sys.executable, "jobserver", []),
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=self._stderr,
            env=_job_environment(),
            start_new_session=True,
            preexec_fn=die_with_parent,
        )
        self._buffer = b""

    def alive(self) -> bool:
        return self.process.poll() is None

    def run(self, job: GradingJob, timeout: float | None = None) -> GradingResult:
        """Grade ``job`` in a process forked by the server; raises :class:`JobServerStopped` if the server died."""
        with tempfile.TemporaryDirectory(prefix="segutils-job-") as tmp:
            job_path, result_path, log_path = _job_files(job, tmp)
            self._send({"job": str(job_path), "result": str(result_path), "log": str(log_path)})
            pid = int(self._receive(None)["pid"])
            with _Tracked(pid):
                answer = self._receive(timeout)
                if answer is None:
                    kill_process_group(pid)
                    self._receive(None)
                    return _timed_out(job, timeout)
            return _collect(job, result_path, log_path, int(answer["exit"]))

    def _send(self, request: dict) -> None:
        try:
            self.process.stdin.write((json.dumps(request) + "\n").encode())
            self.process.stdin.flush()
        except OSError as error:
            raise JobServerStopped(self._why(error)) from None

    def _receive(self, timeout: float | None) -> dict | None:
        """The next answer, or ``None`` when ``timeout`` seconds pass first."""
        fd = self.process.stdout.fileno()
        deadline = None if timeout is None else time.monotonic() + timeout
        while b"\n" not in self._buffer:
            remaining = None if deadline is None else deadline - time.monotonic()
            if remaining is not None and remaining <= 0:
                return None
            if not select.select([fd], [], [], remaining)[0]:
                return None
            chunk = os.read(fd, 1 << 16)
            if not chunk:
                raise JobServerStopped(self._why(None))
            self._buffer += chunk
        line, self._buffer = self._buffer.split(b"\n", 1)
        try:
            answer = json.loads(line)
        except ValueError:
            raise JobServerStopped(f"the job server answered {line[:200]!r}") from None
        if not isinstance(answer, dict):
            raise JobServerStopped(f"the job server answered {line[:200]!r}")
        return answer

    def _why(self, error: Exception | None) -> str:
        try:
            self.process.wait(timeout=5)
        except subprocess.TimeoutExpired:
            pass
        self._stderr.seek(0)
        tail = self._stderr.read()[-1000:].decode("utf-8", "replace").strip()
        return f"the job server stopped (exit status {self.process.returncode}{f'; {error}' if error else ''}): {tail}"

    def close(self) -> None:
        self.end_input()
        try:
            self.process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
        self.process.stdout.close()
        self._stderr.close()

    def end_input(self) -> None:
        """Close the server's stdin: it stops its warm grader and exits once its job (if any) has ended."""
        try:
            self.process.stdin.close()
        except OSError:
            pass


class LocalPool:
    """``workers`` job processes at a time on this machine, each slot with its own :class:`JobServer`.

    The servers start here (they import nbgrader while the caller gets the jobs ready) and die with
    the thread that creates the pool; :meth:`close` ends them.
    """

    def __init__(self, workers: int, gpus: list[GpuDevice] | None = None, job_timeout: float | None = None) -> None:
        if isinstance(workers, bool) or not isinstance(workers, int) or workers < 1:
            raise ValueError(f"workers must be a positive int, got {workers!r}")
        self.workers = workers
        self.gpus = list(gpus or [])
        self.job_timeout = job_timeout
        self._servers: dict[int, JobServer] = {slot: JobServer() for slot in range(workers)}

    def run(self, jobs: Iterable[GradingJob], on_result: Callable[[GradingResult], None]) -> None:
        """Grade ``jobs``; ``on_result`` is called (in this thread) as each finishes."""
        servers = self._servers
        slots: queue.Queue[int] = queue.Queue()
        for slot in range(self.workers):
            slots.put(slot)

        def work(job: GradingJob) -> GradingResult:
            slot = slots.get()
            try:
                if self.gpus:
                    job = replace(job, options=replace(job.options, gpu=self.gpus[slot % len(self.gpus)].__dict__))
                if slot not in servers or not servers[slot].alive():
                    servers[slot] = JobServer()  # lives as long as this worker thread, i.e. this run
                try:
                    return servers[slot].run(job, self.job_timeout)
                except JobServerStopped as error:
                    return failed_result(job, str(error))
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

    def close(self) -> None:
        """End the job servers (idempotent), all at once."""
        for server in self._servers.values():
            server.end_input()
        while self._servers:
            _, server = self._servers.popitem()
            server.close()
