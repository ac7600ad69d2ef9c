"""The grader process: runs the notebook's test cells, with the student's names bound to proxies.

Started (sandboxed, with no view of the student's files) by
:class:`segutils.grading.preprocessors.SandboxedExecute` in two-process mode, through
``python -m segutils.grading.execute --grader``. It reads ``spec.json``: the cells it runs, in
notebook order: the locked cells that only use names of the grader's own cells (imports, helpers),
silently, and the graded test cells. Before each test cell it accepts the student's connection on
the listening socket it was handed (the student's kernel, at that cell's place in the notebook,
sends ``hello`` with the cell's index), then runs the test in an IPython shell whose namespace looks
up every name it does not define in the student's process (:class:`GraderNamespace`). It writes
one JSON line per test cell (outputs, status, the checks measured in the student's process) to the
result pipe: the score is computed from these records only.
"""

from __future__ import annotations

import argparse
import builtins
import json
import os
import signal
import socket
import sys
import time
from pathlib import Path
from typing import Any, TextIO

from segutils.grading.remote.channel import Channel, ChannelError, Endpoint, Policy
from segutils.grading.remote.codec import CodecError, decode
from segutils.grading.remote.proxy import grader_side_proxy

MAX_TRACEBACK_LINES = 200
_BUILTIN_NAMES = frozenset(vars(builtins))


class CellTimeoutError(Exception):
    """The test cell ran longer than the cell timeout."""


class GraderNamespace(dict):
    """The test cells' namespace: names the grader's cells bound, else the student's, looked up remotely.

    A name is looked up in the student's process the first time a cell reads it and kept for that
    cell; before the next cell every looked-up binding that is still in place is dropped (the
    student's namespace may have changed in between). Built-in names are never looked up: a student's
    ``tuple = ...`` or ``__import__`` does not reach the tests.
    """

    def __init__(self) -> None:
        super().__init__()
        self.endpoint: Endpoint | None = None
        self.fetched: dict[str, Any] = {}
        self._student_names: frozenset[str] | None = None

    def __missing__(self, name: str) -> Any:
        if self.endpoint is None or not isinstance(name, str) or name in _BUILTIN_NAMES or name.startswith("__"):
            raise KeyError(name)
        try:
            value = self.endpoint.request("lookup", name=name)
        except NameError:
            raise KeyError(name) from None
        dict.__setitem__(self, name, value)
        self.fetched[name] = value
        return value

    def __contains__(self, name: object) -> bool:
        """``"losses" in globals()`` holds for the student's names too (they are fetched like a read)."""
        if dict.__contains__(self, name):
            return True
        try:
            self.__missing__(name)  # type: ignore[arg-type]
        except KeyError:
            return False
        return True

    def forget_fetched(self) -> None:
        for name, value in self.fetched.items():
            if dict.get(self, name, None) is value:
                dict.__delitem__(self, name)
        self.fetched.clear()
        self._student_names = None

    def rebound(self) -> dict[str, Any]:
        """The student's names this namespace binds to values of the test's own (a function, data).

        In one process such a binding (``mock.patch.dict(globals(), extract_patches=reference)``)
        changes what the student's functions call; the endpoint sends these with every call so that
        it does two-process too (:func:`~segutils.grading.remote.channel.rebound`). The student's
        names are asked for once per cell, and only when the test binds a value that is not a proxy.
        """
        from segutils.grading.remote.proxy import ref_of

        own = {
            name: value
            for name, value in dict.items(self)
            if isinstance(name, str) and not name.startswith("__") and ref_of(value) is None and self._mirrorable(value)
        }
        if not own or self.endpoint is None:
            return {}
        if self._student_names is None:
            names = self.endpoint.request("names")
            self._student_names = (
                frozenset(n for n in names if isinstance(n, str)) if isinstance(names, list) else frozenset()
            )
        return {name: value for name, value in own.items() if name in self._student_names}

    def _mirrorable(self, value: Any) -> bool:
        """A value a test cell bound that can stand in the student's namespace during a call.

        Functions the test cells defined (their globals are this namespace) are called back, never sent
        as code; immutable numbers and strings are sent as data. Anything else (an imported function, a
        module, a tensor a locked cell made in both processes) stays where it is: a call back into the
        grader would run on copies, so an in-place change would not come back.
        """
        import types

        if isinstance(value, types.FunctionType):
            return value.__globals__ is self
        return isinstance(value, (bool, int, float, complex, str, bytes))


def _shell(namespace: GraderNamespace) -> Any:
    from IPython.core.interactiveshell import InteractiveShell

    class GraderShell(InteractiveShell):
        last_error: dict | None = None

        def _showtraceback(self, etype, evalue, stb):  # noqa: ANN001 - IPython's signature
            self.last_error = {
                "ename": getattr(etype, "__name__", str(etype)),
                "evalue": str(evalue),
                "traceback": list(stb)[-MAX_TRACEBACK_LINES:],
            }

    shell = GraderShell.instance(user_ns=namespace)
    shell.colors = "Linux"
    shell.history_manager.enabled = False
    return shell


def _real_segutils() -> None:
    """The test cells import ``segutils`` itself: replace the bootstrap's stub package by the real one."""
    import importlib

    stub = sys.modules.get("segutils")
    if stub is not None and getattr(stub, "__file__", None) is None:
        del sys.modules["segutils"]
        real = importlib.import_module("segutils")
        real.grading = sys.modules["segutils.grading"]  # type: ignore[attr-defined]


class Grader:
    """Runs the spec's cells; one record per test cell on ``sink``."""

    def __init__(self, spec: dict, listener: socket.socket, sink: TextIO) -> None:
        self.spec = spec
        self.listener = listener
        self.sink = sink
        limits = spec.get("limits", {})
        self.cell_timeout = float(limits.get("cell_timeout", 300.0))
        self.output_cap = int(limits.get("cell_output_bytes", 1 << 20))
        self.wait_timeout = float(limits.get("notebook_timeout", 1800.0))
        self.namespace = GraderNamespace()
        self.endpoint: Endpoint | None = None
        self.pending: tuple[socket.socket, int] | None = None

    def emit(self, record: dict) -> None:
        self.sink.write(json.dumps(record) + "\n")
        self.sink.flush()

    # -- the student's connection -----------------------------------------------------------
    def connect(self, index: int) -> str | None:
        """Attach the student's session for cell ``index``; why not, or ``None`` when attached."""
        deadline = time.monotonic() + self.wait_timeout
        while True:
            if self.pending is not None:
                sock, cell = self.pending
                if cell > index:
                    return "the student's process went past this test without serving it"
                self.pending = None
                if cell == index:
                    self._attach(sock)
                    return None
                sock.close()  # a stale session of an earlier cell
                continue
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return "the student's process never reached this test"
            self.listener.settimeout(remaining)
            try:
                sock, _ = self.listener.accept()
            except (TimeoutError, OSError):
                return "the student's process never reached this test"
            sock.setblocking(True)
            try:
                hello = decode(Channel(sock).receive(timeout=30))
            except (ChannelError, CodecError):
                sock.close()
                continue
            if not (isinstance(hello, dict) and hello.get("k") == "hello" and isinstance(hello.get("cell"), int)):
                sock.close()
                continue
            self.pending = (sock, hello["cell"])

    def _attach(self, sock: socket.socket) -> None:
        channel = Channel(sock)
        if self.endpoint is None:
            self.endpoint = Endpoint(channel, "g", Policy.grader(), grader_side_proxy, timeout=self.cell_timeout)
        else:
            self.endpoint.channel, self.endpoint.closed = channel, False
        self.namespace.endpoint = self.endpoint
        self.endpoint.bindings = self.namespace.rebound

    def detach(self) -> None:
        endpoint, self.namespace.endpoint = self.endpoint, None
        if endpoint is None or endpoint.closed:
            return
        try:
            endpoint.timeout = 10
            endpoint.request("resume")
        except Exception:  # noqa: BLE001 - the student's side may be gone or busy; it is closed either way
            pass
        finally:
            endpoint.channel.close()
            endpoint.closed = True
            endpoint.timeout = self.cell_timeout

    # -- cells --------------------------------------------------------------------------------
    def run_cell(self, shell: Any, source: str) -> dict:
        from IPython.utils.capture import capture_output

        from segutils.grading.remote import probes

        probes.take_measured()
        shell.last_error = None

        def on_alarm(signum: int, frame: Any) -> None:
            raise CellTimeoutError(f"the test ran longer than {self.cell_timeout:g} s")

        previous = signal.signal(signal.SIGALRM, on_alarm)
        signal.setitimer(signal.ITIMER_REAL, self.cell_timeout)
        started = time.monotonic()
        try:
            with capture_output(stdout=True, stderr=True, display=True) as captured:
                result = shell.run_cell(source, store_history=True, silent=False)
        finally:
            signal.setitimer(signal.ITIMER_REAL, 0)
            signal.signal(signal.SIGALRM, previous)
        outputs: list[dict] = []
        for name, text in (("stdout", captured.stdout), ("stderr", captured.stderr)):
            if text:
                outputs.append({"output_type": "stream", "name": name, "text": self._cap(text)})
        for rich in captured.outputs[:100]:
            outputs.append(
                {
                    "output_type": "display_data",
                    "data": {k: self._cap(v) if isinstance(v, str) else v for k, v in rich.data.items()},
                    "metadata": rich.metadata or {},
                }
            )
        record = {
            "status": "ok",
            "ename": "",
            "evalue": "",
            "traceback": [],
            "outputs": outputs,
            "execution_count": result.execution_count,
            "seconds": round(time.monotonic() - started, 3),
            "measured": probes.take_measured(),
            "notes": [],
        }
        if not result.success:
            error = shell.last_error or {
                "ename": "Error",
                "evalue": str(result.error_in_exec or result.error_before_exec),
                "traceback": [],
            }
            status = "timeout" if error["ename"] == "CellTimeoutError" else "error"
            record.update(
                status=status, ename=error["ename"], evalue=error["evalue"][:10_000], traceback=error["traceback"]
            )
            outputs.append({"output_type": "error", **{k: record[k] for k in ("ename", "evalue", "traceback")}})
        return record

    def _cap(self, text: str) -> str:
        if len(text) <= self.output_cap:
            return text
        return text[: self.output_cap] + "\n... [output truncated by the grader]\n"

    def run(self) -> None:
        _real_segutils()
        from segutils.grading.remote import probes

        started = time.monotonic()
        probes.install()
        shell = _shell(self.namespace)
        cuda = 0
        try:
            import torch

            cuda = int(torch.cuda.device_count()) if torch.cuda.is_available() else 0
        except Exception:  # noqa: BLE001
            cuda = 0
        self.emit({"type": "start", "cuda_devices": cuda})
        notes: list[str] = []
        for cell in self.spec["cells"]:
            index, source = int(cell["index"]), str(cell["source"])
            if cell["kind"] != "graded":
                record = self.run_cell(shell, source)
                if record["status"] != "ok":
                    notes.append(
                        f"the grader's copy of locked cell {index} failed: {record['ename']}: {record['evalue'][:300]}"
                    )
                continue
            problem = self.connect(index)
            if problem is not None:
                self.emit(
                    {
                        "type": "cell",
                        "index": index,
                        "status": "error",
                        "ename": "StudentProcessError",
                        "evalue": problem,
                        "traceback": [],
                        "outputs": [],
                        "execution_count": None,
                        "seconds": 0.0,
                        "measured": [],
                        "notes": [],
                    }
                )
                continue
            try:
                record = self.run_cell(shell, source)
            finally:
                self.detach()
                self.namespace.forget_fetched()
            self.emit({"type": "cell", "index": index, **record})
        self.emit({"type": "end", "seconds": round(time.monotonic() - started, 3), "notes": notes})


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m segutils.grading.execute --grader", description=__doc__.split("\n")[0]
    )
    parser.add_argument("--grader", action="store_true")
    parser.add_argument("--input", required=True, help="directory holding spec.json")
    parser.add_argument("--listen-fd", type=int, required=True, help="the listening Unix socket")
    parser.add_argument("--result-fd", type=int, required=True, help="file descriptor to write JSON lines to")
    parser.add_argument("--sandboxed", action="store_true")
    args = parser.parse_args(argv)
    spec = json.loads((Path(args.input) / "spec.json").read_text(encoding="utf-8"))
    return serve(spec, args.listen_fd, args.result_fd, sandboxed=args.sandboxed)


def serve(spec: dict, listen_fd: int, result_fd: int, *, sandboxed: bool) -> int:
    """Run ``spec``'s cells (the grader process's whole job, fresh or forked by the warm grader): the limits,
    then :class:`Grader` on the listening socket ``listen_fd``, its records on ``result_fd``. Exit status."""
    from segutils.grading.execute import report_crash
    from segutils.grading.sandbox import Limits, apply_limits, make_undumpable

    sink = os.fdopen(result_fd, "w", encoding="utf-8")
    make_undumpable()
    apply_limits(Limits.from_dict(spec["limits"]), processes=sandboxed)
    listener = socket.socket(fileno=listen_fd)
    home = os.environ.get("HOME", "/tmp")
    os.chdir(home if Path(home).is_dir() else "/tmp")
    try:
        Grader(spec, listener, sink).run()
    except Exception as error:  # noqa: BLE001 - reported to the trusted side
        return report_crash(sink, error)
    return 0


if __name__ == "__main__":
    sys.exit(main())
