"""A grading job server: one preloaded process per worker slot that forks each student's job.

:class:`segutils.grading.pool.LocalPool` starts one per slot (``python -c BOOT jobserver``, see
:func:`segutils.grading.sandbox.bootstrap_command`). The server imports nbgrader, nbconvert and
SQLAlchemy once; every job is then a fresh ``fork()`` of it that starts in milliseconds instead of
spending about 1.5 s of CPU on those imports, on the cores the notebooks run on. Nothing a job does
reaches the next one: each is its own process, and the server itself runs no grading code.

Protocol, one JSON object per line: the pool writes ``{"job": PATH, "result": PATH, "log": PATH}``
on the server's stdin; the server forks, answers ``{"pid": PID}`` at once (so the pool can kill the
job), then ``{"exit": STATUS}`` when the job has ended (``-N``: killed by signal ``N``). One job at a
time; the server exits at the end of its stdin.

Lifetime: the server gets ``SIGKILL`` when the thread that started it dies, and each job when the
server dies (``PR_SET_PDEATHSIG``), so no job outlives a killed batch.

The server also keeps the slot's warm grader (:mod:`segutils.grading.remote.warm`): each job inherits one
end of a socket pair (the *broker*) on which it may ask, one JSON line, for a warm grader in a given sandbox;
the server starts one (or reuses the one it has, if the sandbox is the same) and answers the path of its
socket (``{"socket": PATH}``, or ``{"error": WHY}``).
"""

from __future__ import annotations

import json
import os
import select
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import traceback
from pathlib import Path


def preload() -> None:
    """Import what every job needs (the server runs under ``bootstrap_command``, which already keeps
    jsonschema's ``rfc3987_syntax`` plug-in out) and compile the feedback page's templates once."""
    import nbgrader.converters  # noqa: F401
    import nbgrader.plugins.export  # noqa: F401

    import segutils.grading.preprocessors  # noqa: F401
    import segutils.grading.runner  # noqa: F401
    from segutils.grading.sanitize import warm_feedback_exporter

    try:
        warm_feedback_exporter()
    except Exception:  # a cold cache costs time, not correctness: each job then compiles for itself
        traceback.print_exc()


def die_with_parent() -> None:
    """``prctl(PR_SET_PDEATHSIG, SIGKILL)``: this process is killed when its parent (thread) dies."""
    import ctypes
    import signal

    pr_set_pdeathsig = 1
    ctypes.CDLL(None, use_errno=True).prctl(pr_set_pdeathsig, signal.SIGKILL, 0, 0, 0)


def kill_process_group(pid: int) -> None:
    """SIGKILL the process group led by ``pid``, or ``pid`` alone if it leads none (yet); gone is fine."""
    for kill in (os.killpg, os.kill):
        try:
            kill(pid, signal.SIGKILL)
            return
        except (ProcessLookupError, PermissionError):
            continue


class WarmGraders:
    """The slot's warm grader: started for the first job that asks, kept while jobs ask for the same sandbox."""

    def __init__(self) -> None:
        self.folder = Path(tempfile.mkdtemp(prefix="segutils-warm-grader-"))
        os.chmod(self.folder, 0o711)
        for sub in ("input", "home"):
            (self.folder / sub).mkdir(mode=0o755)
        self.key: str | None = None
        self.process: subprocess.Popen | None = None
        self.socket_path = ""
        self.started = 0

    def socket_for(self, request: dict) -> str:
        """The socket path of a warm grader for ``request`` (see :func:`segutils.grading.remote.warm.request`)."""
        key = json.dumps(request, sort_keys=True)
        if self.key == key and self.process is not None and self.process.poll() is None:
            return self.socket_path
        self.stop()
        from segutils.grading.preprocessors import grader_command
        from segutils.grading.sandbox import GpuDevice, Limits

        limits = Limits.from_dict(request["limits"])
        gpu = GpuDevice(**request["gpu"]) if request.get("gpu") else None
        self.started += 1
        path = self.folder / f"grader-{self.started}.sock"
        listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            listener.bind(str(path))
            listener.listen(16)
            command, env = grader_command(
                str(request["python"]),
                ["--warm-grader", "--listen-fd", str(listener.fileno()), *_preload_arguments(request)],
                sandboxed=bool(request["sandboxed"]),
                input_dir=self.folder / "input",
                scratch=self.folder,
                limits=limits,
                gpu=gpu,
            )
            with open(self.folder / "warm-grader.log", "ab") as log:
                self.process = subprocess.Popen(
                    command,
                    stdin=subprocess.DEVNULL,
                    stdout=log,
                    stderr=log,
                    env=env,
                    pass_fds=(listener.fileno(),),
                    start_new_session=True,
                    preexec_fn=die_with_parent,
                )
        finally:
            listener.close()
        self.key, self.socket_path = key, str(path)
        return self.socket_path

    def stop(self) -> None:
        if self.process is not None:
            try:
                os.killpg(self.process.pid, signal.SIGKILL)
            except (ProcessLookupError, PermissionError):
                pass
            self.process.wait()
        if self.socket_path:
            Path(self.socket_path).unlink(missing_ok=True)
        self.process, self.key, self.socket_path = None, None, ""

    def close(self) -> None:
        self.stop()
        shutil.rmtree(self.folder, ignore_errors=True)


def _preload_arguments(request: dict) -> list[str]:
    """``--preload`` for the modules the request names (none named: the warm grader's default list)."""
    modules = request.get("preload")
    if not isinstance(modules, list) or not modules:
        return []
    return ["--preload", ",".join(str(name) for name in modules)]


def _serve(pid: int, broker: socket.socket, warm_graders: WarmGraders) -> int:
    """Answer the job's broker requests until the job ends; its wait status."""
    pidfd = os.pidfd_open(pid)
    watched: list = [pidfd, broker]
    buffer = b""
    try:
        while True:
            readable, _, _ = select.select(watched, [], [])
            if pidfd in readable:
                return os.waitpid(pid, 0)[1]
            chunk = broker.recv(1 << 16)
            if not chunk:
                watched.remove(broker)
                continue
            buffer += chunk
            while b"\n" in buffer:
                line, buffer = buffer.split(b"\n", 1)
                try:
                    answer = {"socket": warm_graders.socket_for(json.loads(line))}
                except Exception as error:  # noqa: BLE001 - the job then starts a fresh grader
                    answer = {"error": f"{type(error).__name__}: {error}"}
                try:
                    broker.sendall((json.dumps(answer) + "\n").encode())
                except OSError:
                    pass
    finally:
        os.close(pidfd)


def _job(request: dict, protocol_fds: tuple[int, int], server: int, broker: socket.socket) -> int:
    """The forked job: its own session, output to its log, then the runner."""
    os.setsid()
    die_with_parent()
    if os.getppid() != server:  # the server died before the line above: nobody waits for this job
        return 1
    log = os.open(request["log"], os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
    null = os.open(os.devnull, os.O_RDONLY)
    os.dup2(null, 0)
    os.dup2(log, 1)
    os.dup2(log, 2)
    for fd in {log, null, *protocol_fds} - {0, 1, 2}:
        os.close(fd)
    from segutils.grading.remote import warm

    warm.BROKER = broker
    from segutils.grading import runner

    return runner.main([request["job"], request["result"]])


def main(argv: list[str] | None = None) -> int:
    answers = os.fdopen(os.dup(1), "w", encoding="utf-8")
    os.dup2(2, 1)  # whatever else writes to stdout (an import, say) must not corrupt the answers
    preload()
    requests = sys.stdin
    protocol_fds = (0, answers.fileno())
    server = os.getpid()
    warm_graders = WarmGraders()
    try:
        for line in requests:
            request = json.loads(line)
            broker, job_broker = socket.socketpair()
            pid = os.fork()
            if pid == 0:
                code = 1
                try:
                    broker.close()
                    code = _job(request, protocol_fds, server, job_broker)
                except BaseException:  # noqa: BLE001 - whatever happens, the child must not return into the loop
                    traceback.print_exc()
                finally:
                    sys.stdout.flush()
                    sys.stderr.flush()
                    os._exit(code if isinstance(code, int) else 1)
            job_broker.close()
            answers.write(json.dumps({"pid": pid}) + "\n")
            answers.flush()
            status = _serve(pid, broker, warm_graders)
            broker.close()
            answers.write(json.dumps({"exit": os.waitstatus_to_exitcode(status)}) + "\n")
            answers.flush()
    finally:
        warm_graders.close()
    return 0
