"""The warm grader (segutils.grading.remote.warm): one preloaded process per worker slot forks each grader.

Each test starts a warm grader through the job server's :class:`WarmGraders`, hands it specs of locked
cells (which the grader runs without a student process) and reads the grader's records from the pipe.
"""

from __future__ import annotations

import json
import os
import select
import socket
import sys
import time

import pytest

from segutils.grading import sandbox
from segutils.grading.jobserver import WarmGraders
from segutils.grading.remote import warm


def _sandbox_works() -> bool:
    try:
        sandbox.check_sandbox()
    except sandbox.SandboxUnavailable:
        return False
    return True


MODES = [False, pytest.param(True, marks=pytest.mark.skipif(not _sandbox_works(), reason="no bubblewrap here"))]


def _request(sandboxed: bool, **limits) -> dict:
    return {
        "python": sys.executable,
        "sandboxed": sandboxed,
        "limits": sandbox.Limits(**limits).to_dict(),
        "gpu": None,
    }


def _spec(*sources: str) -> dict:
    cells = [{"index": i, "kind": "locked", "source": s, "grade_id": None} for i, s in enumerate(sources)]
    return {"cells": cells, "limits": sandbox.Limits().to_dict()}


def _grade(path: str, spec: dict, tmp_path, timeout: float = 120.0) -> tuple[list[dict], int]:
    """Run ``spec`` in a grader forked by the warm grader at ``path``: its records and its pid."""
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    listener.bind(str(tmp_path / f"channel-{time.monotonic_ns()}.sock"))
    listener.listen(1)
    read_fd, write_fd = os.pipe()
    with open(tmp_path / "grader.log", "ab") as log:
        child = warm.start(path, spec, listener.fileno(), write_fd, log.fileno())
    os.close(write_fd)
    listener.close()
    assert child is not None, (tmp_path / "grader.log").read_text()
    try:
        return _records(read_fd, timeout), child.pid
    finally:
        child.stop()
        os.close(read_fd)


def _records(read_fd: int, timeout: float) -> list[dict]:
    data, deadline = b"", time.monotonic() + timeout
    while b'"type": "end"' not in data:
        assert select.select([read_fd], [], [], max(0.0, deadline - time.monotonic()))[0], f"no end record: {data!r}"
        chunk = os.read(read_fd, 1 << 16)
        if not chunk:
            break
        data += chunk
    return [json.loads(line) for line in data.decode().splitlines() if line.strip()]


def _notes(records: list[dict]) -> list[str]:
    ends = [r for r in records if r.get("type") == "end"]
    assert len(ends) == 1, records
    return ends[0]["notes"]


def test_the_warm_grader_preloads_what_the_assignments_test_cells_import():
    cells = [
        {"source": "import math\nfrom segutils.data import ShapesDataset"},
        {"source": "%matplotlib inline\nimport matplotlib.pyplot as plt, torch\nfrom . import local"},
    ]
    modules = warm.preloaded_modules(cells)
    assert modules[: len(warm.PRELOAD)] == list(warm.PRELOAD)
    assert modules[len(warm.PRELOAD) :] == ["math", "segutils.data", "matplotlib.pyplot"]  # torch listed once


def test_the_warm_grader_imports_the_requested_modules_before_it_forks(tmp_path):
    """A module the request names is in the forked grader's ``sys.modules`` before its cell imports it, and
    one it does not name is not (the positive control that the first check can fail)."""
    check = "import sys\nassert 'xml.dom.minidom' in sys.modules, 'not preloaded'"
    graders = WarmGraders()
    try:
        path = graders.socket_for({**_request(False), "preload": [*warm.PRELOAD, "xml.dom.minidom"]})
        records, _ = _grade(path, _spec(check), tmp_path)
        assert _notes(records) == []
        path = graders.socket_for(_request(False))
        records, _ = _grade(path, _spec(check), tmp_path)
        assert any("not preloaded" in note for note in _notes(records)), _notes(records)
        assert graders.started == 2
    finally:
        graders.close()


@pytest.mark.parametrize("sandboxed", MODES)
def test_each_submission_gets_a_fresh_fork_of_the_preloaded_grader(sandboxed, tmp_path):
    graders = WarmGraders()
    try:
        path = graders.socket_for(_request(sandboxed))
        # The first grader changes what a second one would see if it ran in the same process.
        first, first_pid = _grade(
            path, _spec("import builtins, torch\nbuiltins.LEAKED = 1\ntorch.LEAKED = 1"), tmp_path
        )
        assert _notes(first) == []
        second, second_pid = _grade(
            path,
            _spec("import builtins, torch\nassert not hasattr(builtins, 'LEAKED') and not hasattr(torch, 'LEAKED')"),
            tmp_path,
        )
        assert _notes(second) == [], "a grader saw what the previous submission's grader changed"
        assert second_pid != first_pid
        # Positive control: a failing locked cell is reported, so an empty note list above means it passed.
        failed, _ = _grade(path, _spec("assert False, 'control'"), tmp_path)
        assert any("control" in note for note in _notes(failed)), _notes(failed)
        # PyTorch came with the fork: the test cell finds it imported before its own import.
        preloaded, _ = _grade(
            path, _spec("import sys\nassert 'torch' in sys.modules and 'IPython' in sys.modules"), tmp_path
        )
        assert _notes(preloaded) == []
        assert graders.started == 1
    finally:
        graders.close()


def test_the_same_sandbox_reuses_the_warm_grader_and_another_replaces_it(tmp_path):
    graders = WarmGraders()
    try:
        path = graders.socket_for(_request(False))
        process = graders.process
        assert graders.socket_for(_request(False)) == path and graders.process is process
        other = graders.socket_for(_request(False, threads=2))
        assert other != path and graders.process is not process and graders.started == 2
        assert process.poll() is not None, "the replaced warm grader still runs"
        records, _ = _grade(other, _spec("import os\nassert os.environ['OMP_NUM_THREADS'] == '2'"), tmp_path)
        assert _notes(records) == []
    finally:
        graders.close()
    assert graders.process is None and not graders.folder.exists()


def test_closing_the_connection_kills_the_grader(tmp_path):
    graders = WarmGraders()
    try:
        path = graders.socket_for(_request(False))
        listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        listener.bind(str(tmp_path / "channel.sock"))
        listener.listen(1)
        read_fd, write_fd = os.pipe()
        with open(tmp_path / "grader.log", "ab") as log:
            child = warm.start(path, _spec("import time\ntime.sleep(600)"), listener.fileno(), write_fd, log.fileno())
        os.close(write_fd)
        assert child is not None
        data = b""
        while b'"type": "start"' not in data:  # the child runs the cell now
            assert select.select([read_fd], [], [], 120)[0]
            data += os.read(read_fd, 1 << 16)
        child.stop()
        deadline = time.monotonic() + 20
        while os.read(read_fd, 1 << 16):  # EOF once the child (the pipe's only writer) is gone
            assert time.monotonic() < deadline, "the grader survived its job's connection"
        while _exists(child.pid):  # killed, and reaped by the warm grader
            assert time.monotonic() < deadline, f"the grader {child.pid} was not reaped"
            time.sleep(0.1)
        os.close(read_fd)
        listener.close()
    finally:
        graders.close()


def _exists(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def test_without_a_job_server_there_is_no_warm_grader_and_a_dead_one_is_refused(tmp_path):
    assert warm.BROKER is None and warm.request(_request(False)) is None
    graders = WarmGraders()
    try:
        path = graders.socket_for(_request(False))
        graders.stop()  # the process is gone and its socket removed: the job falls back to a fresh grader
        read_fd, write_fd = os.pipe()
        listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        with open(tmp_path / "grader.log", "ab") as log:
            assert warm.start(path, _spec("pass"), listener.fileno(), write_fd, log.fileno()) is None
        for fd in (read_fd, write_fd):
            os.close(fd)
        listener.close()
    finally:
        graders.close()


def test_a_malformed_request_is_closed_and_the_warm_grader_goes_on(tmp_path):
    graders = WarmGraders()
    try:
        path = graders.socket_for(_request(False))
        for payload, fds in [(b"hello", []), (b"grade", [0])]:
            intruder = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            intruder.settimeout(120)
            intruder.connect(path)
            socket.send_fds(intruder, [payload], fds)
            assert intruder.recv(64) == b"", "the warm grader answered a malformed request"
            intruder.close()
        records, _ = _grade(path, _spec("pass"), tmp_path)
        assert _notes(records) == []
    finally:
        graders.close()
