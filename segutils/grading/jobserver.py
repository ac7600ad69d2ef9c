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
"""

from __future__ import annotations

import json
import os
import sys
import traceback


def preload() -> None:
    """Import what every job needs (the server runs under ``bootstrap_command``, which already keeps
    jsonschema's ``rfc3987_syntax`` plug-in out)."""
    import nbgrader.converters  # noqa: F401
    import nbgrader.plugins.export  # noqa: F401

    import segutils.grading.preprocessors  # noqa: F401
    import segutils.grading.runner  # noqa: F401


def die_with_parent() -> None:
    """``prctl(PR_SET_PDEATHSIG, SIGKILL)``: this process is killed when its parent (thread) dies."""
    import ctypes
    import signal

    pr_set_pdeathsig = 1
    ctypes.CDLL(None, use_errno=True).prctl(pr_set_pdeathsig, signal.SIGKILL, 0, 0, 0)


def _job(request: dict, protocol_fds: tuple[int, int], server: int) -> int:
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
    from segutils.grading import runner

    return runner.main([request["job"], request["result"]])


def main(argv: list[str] | None = None) -> int:
    answers = os.fdopen(os.dup(1), "w", encoding="utf-8")
    os.dup2(2, 1)  # whatever else writes to stdout (an import, say) must not corrupt the answers
    preload()
    requests = sys.stdin
    protocol_fds = (0, answers.fileno())
    server = os.getpid()
    for line in requests:
        request = json.loads(line)
        pid = os.fork()
        if pid == 0:
            code = 1
            try:
                code = _job(request, protocol_fds, server)
            except BaseException:  # noqa: BLE001 - whatever happens, the child must not return into the loop
                traceback.print_exc()
            finally:
                sys.stdout.flush()
                sys.stderr.flush()
                os._exit(code if isinstance(code, int) else 1)
        answers.write(json.dumps({"pid": pid}) + "\n")
        answers.flush()
        _, status = os.waitpid(pid, 0)
        answers.write(json.dumps({"exit": os.waitstatus_to_exitcode(status)}) + "\n")
        answers.flush()
    return 0
