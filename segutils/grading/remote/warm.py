"""A warm grader: one process per worker slot that imports PyTorch and IPython once and forks a grader per submission.

A grader process started afresh spends about 3 s of CPU importing PyTorch, IPython and ``segutils.testing``
before it runs a test, once per submission, on the cores the notebooks run on. The warm grader pays that once:

- **Who starts it.** The job server (:mod:`segutils.grading.jobserver`) of a worker slot, when a job asks
  through the broker socket it inherits (:func:`request`), with the sandbox the job would give a fresh grader
  (same limits, environment and GPU; an empty input folder): ``python -m segutils.grading.execute
  --warm-grader --listen-fd N``. A later job asking for the same sandbox reuses it; another sandbox replaces it.
  It dies with the job server (bubblewrap's ``--die-with-parent``, ``PR_SET_PDEATHSIG`` without a sandbox).
- **One submission.** The job connects to its Unix socket and sends, with ``SCM_RIGHTS``, four file
  descriptors: a memfd holding the spec (the cells the grader runs, the limits), the listening socket the
  student's kernel connects to, the result pipe, and the log. The warm grader forks; the child applies the
  limits and runs :func:`segutils.grading.remote.grader.serve` exactly as a fresh grader process would. When
  the job's connection closes (the job is done, or was killed) the child's process group is killed.
- **Nothing carries over.** The warm grader never runs a test cell or reads a submission: each child is a fork
  of its state right after the imports, and nothing a child does reaches the parent or the next child. Like a
  fresh grader it sees no student file (its sandbox binds none) and holds nothing of the student's process
  but data sent over the channel.

The job falls back to a fresh grader process whenever the warm one is unavailable (no job server, as on Dask
workers; it failed to start; it did not answer within :data:`ANSWER_SECONDS`).
"""

from __future__ import annotations

import argparse
import importlib
import json
import os
import re
import select
import signal
import socket
import sys
from dataclasses import dataclass

from segutils.grading.jobserver import die_with_parent, kill_process_group

#: Modules every warm grader imports once: what every grader needs and what test cells almost always use. The
#: modules the assignment's own test cells import come on top (:func:`preloaded_modules`); a module neither
#: list names (``torchvision``, ``matplotlib.pyplot``: about 2 s together) is imported by the child that needs it.
PRELOAD = (
    "torch",
    "torch.nn.functional",
    "torch.fx.experimental.symbolic_shapes",  # torch.autograd.grad imports it (and SymPy) at its first call
    "numpy",
    "IPython.core.interactiveshell",
    "IPython.utils.capture",
    "stack_data",  # IPython's tracebacks of failed tests
    "segutils",
    "segutils.testing",
    "segutils.metrics",
    "segutils.grading.remote.grader",
    "segutils.grading.remote.probes",
)
_MODULE_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)*")


def preloaded_modules(cells: list[dict]) -> list[str]:
    """What a warm grader for ``cells`` (the grader's cells, ``{"source": ...}``) imports: :data:`PRELOAD`
    and every module the cells import, in that order, each once."""
    from segutils.grading.preprocessors import imports_of

    imported = [module for cell in cells for module in imports_of(cell["source"])[0]]
    return list(dict.fromkeys([*PRELOAD, *imported]))


#: Seconds a job waits for the warm grader to take its submission (it may still be importing) before it
#: starts a fresh grader process instead.
ANSWER_SECONDS = 60.0
REQUEST = b"grade"
#: The job's end of the broker socket to its job server (set in the forked job; ``None`` elsewhere).
BROKER: socket.socket | None = None


# -- the job's side ------------------------------------------------------------------------------
def request(sandbox_request: dict) -> str | None:
    """The socket path of this slot's warm grader for ``sandbox_request``, or ``None`` (no job server, or it
    could not start one). ``sandbox_request`` is what :func:`segutils.grading.preprocessors.grader_command`
    needs: ``python``, ``sandboxed``, ``limits`` (a dict) and ``gpu`` (a dict or ``None``), and ``preload``, the
    modules to import once (:func:`preloaded_modules`)."""
    if BROKER is None:
        return None
    try:
        BROKER.settimeout(ANSWER_SECONDS)
        BROKER.sendall((json.dumps(sandbox_request) + "\n").encode())
        answer = b""
        while not answer.endswith(b"\n"):
            chunk = BROKER.recv(4096)
            if not chunk:
                return None
            answer += chunk
        path = json.loads(answer).get("socket")
    except (OSError, ValueError, AttributeError):
        return None
    return path if isinstance(path, str) else None


@dataclass
class WarmGraderChild:
    """A grader forked by the warm grader for one submission; :meth:`stop` kills it."""

    connection: socket.socket
    pid: int

    def stop(self) -> None:
        """Close the connection: the warm grader kills the child's process group."""
        try:
            self.connection.close()
        except OSError:
            pass


def start(socket_path: str, spec: dict, listen_fd: int, result_fd: int, log_fd: int) -> WarmGraderChild | None:
    """Hand one submission's grading to the warm grader at ``socket_path``; ``None`` if it did not take it."""
    memfd = os.memfd_create("grader-spec", os.MFD_CLOEXEC)
    try:
        os.write(memfd, json.dumps(spec).encode())
        connection = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        connection.settimeout(ANSWER_SECONDS)
        try:
            connection.connect(socket_path)
            socket.send_fds(connection, [REQUEST], [memfd, listen_fd, result_fd, log_fd])
            answer = b""
            while not answer.endswith(b"\n"):
                chunk = connection.recv(64)
                if not chunk:
                    raise OSError("the warm grader closed the connection")
                answer += chunk
            pid = int(json.loads(answer)["pid"])
        except (OSError, ValueError, KeyError, TypeError):
            connection.close()
            return None
        connection.settimeout(None)
        return WarmGraderChild(connection, pid)
    finally:
        os.close(memfd)


# -- the warm grader's side ----------------------------------------------------------------------
def preload(modules: list[str]) -> None:
    """Import ``modules`` (what fails to import is left to the child, which reports it as usual)."""
    from segutils.grading.remote.grader import _real_segutils

    _real_segutils()
    for name in modules:
        if not _MODULE_NAME.fullmatch(name):
            continue
        try:
            importlib.import_module(name)
        except Exception:  # noqa: BLE001, S112 - an optional module; the test cells import what they need
            continue


def _receive(connection: socket.socket) -> list[int] | None:
    """The four descriptors of a request, or ``None`` for anything else (whose descriptors are closed)."""
    try:
        data, fds, _, _ = socket.recv_fds(connection, len(REQUEST), 8)
    except OSError:
        return None
    if data != REQUEST or len(fds) != 4:
        for fd in fds:
            os.close(fd)
        return None
    return fds


def _child(fds: list[int], listener: socket.socket, connections: list[socket.socket], sandboxed: bool) -> int:
    """The forked grader: its own process group, the job's log as stdout and stderr, then the grader."""
    os.setpgid(0, 0)
    die_with_parent()
    memfd, listen_fd, result_fd, log_fd = fds
    for sock in (listener, *connections):
        sock.close()
    for sig in (signal.SIGCHLD, signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, signal.SIG_DFL)
    os.dup2(log_fd, 1)
    os.dup2(log_fd, 2)
    os.close(log_fd)
    null = os.open(os.devnull, os.O_RDONLY)
    os.dup2(null, 0)
    os.close(null)
    with os.fdopen(memfd, "rb") as spec_file:
        spec_file.seek(0)
        spec = json.loads(spec_file.read())
    from segutils.grading.remote.grader import serve

    return serve(spec, listen_fd, result_fd, sandboxed=sandboxed)


def serve_forever(listener: socket.socket, sandboxed: bool) -> None:
    """Accept submissions on ``listener`` until the process is killed; one forked child each."""
    children: dict[socket.socket, int] = {}
    listener.setblocking(True)
    while True:
        readable, _, _ = select.select([listener, *children], [], [], 0.5)
        for sock in readable:
            if sock is listener:
                connection, _ = listener.accept()
                connection.settimeout(10)
                fds = _receive(connection)
                if fds is None:
                    connection.close()
                    continue
                pid = os.fork()
                if pid == 0:
                    code = 1
                    try:
                        code = _child(fds, listener, [connection, *children], sandboxed)
                    finally:
                        sys.stdout.flush()
                        sys.stderr.flush()
                        os._exit(code if isinstance(code, int) else 1)
                for fd in fds:
                    os.close(fd)
                try:
                    connection.sendall(json.dumps({"pid": pid}).encode() + b"\n")
                except OSError:
                    pass
                children[connection] = pid
            else:  # the job closed its connection (or wrote to it, which it never does): the child goes
                kill_process_group(children.pop(sock))
                sock.close()
        _reap()


def _reap() -> None:
    """Collect every ended child (in the sandbox this process is PID 1, the reaper of orphans too)."""
    while True:
        try:
            pid, _ = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            return
        if pid == 0:
            return


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m segutils.grading.execute --warm-grader", description=__doc__)
    parser.add_argument("--warm-grader", action="store_true")
    parser.add_argument("--listen-fd", type=int, required=True, help="the listening Unix socket jobs connect to")
    parser.add_argument("--sandboxed", action="store_true")
    parser.add_argument("--preload", default=",".join(PRELOAD), help="comma-separated modules to import once")
    args = parser.parse_args(argv)
    from segutils.grading.sandbox import make_undumpable

    make_undumpable()
    if not args.sandboxed:
        die_with_parent()
    signal.signal(signal.SIGPIPE, signal.SIG_IGN)
    preload([name for name in args.preload.split(",") if name])
    serve_forever(socket.socket(fileno=args.listen_fd), args.sandboxed)
    return 0
