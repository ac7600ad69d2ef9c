"""The notebook executor that runs inside the sandbox: ``python -m segutils.grading.execute``.

It is started by :class:`segutils.grading.preprocessors.SandboxedExecute` (in the trusted grading
process) with a spec file and a pipe, and it

1. applies the resource limits (:func:`segutils.grading.sandbox.apply_limits`) and makes itself
   undumpable, so that student code (same user) can neither read its memory nor write to its pipe;
2. copies the notebook and its files into the writable work directory and starts a Python kernel
   there (always ``python3`` from this interpreter, whatever the notebook's kernelspec says),
   with the kernel's own stdout/stderr going to a log file, not to the pipe;
3. installs :mod:`segutils.grading.guard` in the kernel before any student code;
4. runs the code cells in order, and around each graded test cell asks the guard to restore,
   then check, what tests rely on;
5. writes one JSON line per cell to the pipe as soon as the cell is done (so a notebook killed for
   its wall time still has every finished cell graded).

Failure handling, per cell: a cell that runs longer than the cell timeout is interrupted, and the
kernel killed if the interrupt does not stop it; a cell whose output passes the cap is interrupted;
a cell that kills the kernel (``os._exit``, a signal, the memory limit) is recorded as such. After a
kernel death every process of the sandbox is killed, a fresh kernel started, and the earlier
non-test cells (except those that killed a kernel) are replayed silently before the notebook goes
on. After ``max_kernel_deaths`` deaths the remaining cells are reported as not run.

Everything this process reports is *data* to the trusted side: it decides scores from it, and
validates it before use.
"""

from __future__ import annotations

import argparse
import ast
import asyncio
import json
import os
import secrets
import shutil
import signal
import sys
import time
from pathlib import Path
from typing import Any, TextIO

from segutils.grading.sandbox import Limits, apply_limits, make_undumpable

MAX_TRACEBACK_LINES = 200
_GUARD_MODULE = "segutils.grading.guard"


class _Record:
    """What happened to one code cell."""

    def __init__(self, index: int) -> None:
        self.index = index
        self.status = "not_run"
        self.ename = ""
        self.evalue = ""
        self.traceback: list[str] = []
        self.outputs: list[dict] = []
        self.execution_count: int | None = None
        self.seconds = 0.0
        self.output_truncated = False
        self.restored: list[str] = []
        self.tampered: list[str] = []
        self.notes: list[str] = []

    def to_json(self) -> dict:
        return {
            "type": "cell",
            "index": self.index,
            "status": self.status,
            "ename": self.ename,
            "evalue": self.evalue[:10_000],
            "traceback": self.traceback[-MAX_TRACEBACK_LINES:],
            "outputs": self.outputs,
            "execution_count": self.execution_count,
            "seconds": round(self.seconds, 3),
            "output_truncated": self.output_truncated,
            "restored": self.restored,
            "tampered": self.tampered,
            "notes": self.notes,
        }


def _client_class():
    from nbclient import NotebookClient

    class CappedClient(NotebookClient):
        """nbclient with output caps: output past the cap is dropped and the cell interrupted."""

        cell_cap = 1 << 20
        notebook_cap = 8 << 20
        notebook_used = 0
        cell_used = 0
        truncated = False

        def reset_cell(self) -> None:
            self.cell_used = 0
            self.truncated = False

        def output(self, outs, msg, display_id, cell_index):  # type: ignore[override]
            if self.truncated:
                return None
            content = msg.get("content", {})
            size = len(json.dumps(content, default=str))
            room = min(self.cell_cap - self.cell_used, self.notebook_cap - self.notebook_used)
            if size > room:
                self.truncated = True
                asyncio.ensure_future(self._interrupt())
                if msg.get("msg_type") != "stream" or room <= 0:
                    return None
                text = str(content.get("text", ""))[:room] + "\n... [output truncated by the grader]\n"
                msg = {**msg, "content": {**content, "text": text}}
                size = room
            self.cell_used += size
            self.notebook_used += size
            return super().output(outs, msg, display_id, cell_index)

        async def _interrupt(self) -> None:
            try:
                await self.km.interrupt_kernel()
            except Exception:  # noqa: BLE001 - the kernel may be gone already
                pass

    return CappedClient


class Executor:
    """Runs one notebook's code cells in a kernel it (re)starts as needed."""

    def __init__(self, spec: dict, work_dir: Path, sink: TextIO, sandboxed: bool) -> None:
        import nbformat

        self.spec = spec
        self.limits = Limits.from_dict(spec["limits"])
        self.work_dir = work_dir
        self.sink = sink
        self.sandboxed = sandboxed
        self.nb = nbformat.read(work_dir / spec["notebook"], as_version=4)
        self.plan = {int(c["index"]): c for c in spec["cells"]}
        self.max_deaths = int(spec.get("max_kernel_deaths", 3))
        self.deaths = 0
        self.killers: set[int] = set()
        self.executed: list[int] = []
        self.client: Any = None
        self.kernel_log = Path(spec.get("kernel_log", str(work_dir.parent / "kernel.log")))
        self.cuda_devices = 0
        self.notes: list[str] = []
        # "kernel": the tests run here, watched by the guard; "student": two-process grading, where this
        # process never sees a test and serves the grader (segutils.grading.remote) where each test stands.
        self.role = str(spec.get("role", "kernel"))
        self.channel = str(spec.get("channel", ""))

    # -- output -------------------------------------------------------------------------------
    def emit(self, record: dict) -> None:
        self.sink.write(json.dumps(record) + "\n")
        self.sink.flush()

    # -- kernel lifecycle ---------------------------------------------------------------------
    async def start_kernel(self) -> None:
        cls = _client_class()
        limits = self.limits
        client = cls(
            self.nb,
            timeout=int(limits.cell_timeout),
            kernel_name="python3",
            allow_errors=True,
            interrupt_on_timeout=True,
            raise_on_iopub_timeout=True,
            iopub_timeout=int(min(30, max(5, limits.cell_timeout))),
            startup_timeout=int(self.spec.get("startup_timeout", 120)),
            shutdown_kernel="immediate",
            skip_cells_with_tag="\0never",
            record_timing=False,
            coalesce_streams=True,
            extra_arguments=["--HistoryManager.hist_file=:memory:"],
            error_on_timeout={
                "ename": "CellTimeoutError",
                "evalue": f"the cell ran longer than {limits.cell_timeout:g} s",
                "traceback": [
                    f"CellTimeoutError: the cell ran longer than {limits.cell_timeout:g} s and was interrupted"
                ],
            },
        )
        client.cell_cap = limits.cell_output_bytes
        client.notebook_cap = limits.notebook_output_bytes
        if self.client is not None:
            client.notebook_used = self.client.notebook_used
        client.on_cell_executed = self._capture_reply
        client.km = client.create_kernel_manager()
        log = open(self.kernel_log, "ab")  # noqa: SIM115 - handed to the kernel process
        try:
            await client.async_start_new_kernel(cwd=str(self.work_dir), stdout=log, stderr=log)
        finally:
            log.close()
        await client.async_start_new_kernel_client()
        self.client = client
        if self.role == "student":
            return
        answer = await self.guard("install", self.spec.get("guard_modules", []))
        if answer is not None:
            self.cuda_devices = int(answer.get("cuda_devices", 0))
            for failed in answer.get("failed_imports", []):
                self.notes.append(f"a module of the locked cells could not be imported: {failed}")

    def _capture_reply(self, cell: Any, cell_index: int, execute_reply: dict) -> None:
        self._reply = execute_reply

    def kernel_pid(self) -> int | None:
        km = self.client.km if self.client is not None else None
        process = getattr(getattr(km, "provisioner", None), "process", None)
        return getattr(process, "pid", None)

    def kernel_exit(self) -> str:
        km = self.client.km if self.client is not None else None
        process = getattr(getattr(km, "provisioner", None), "process", None)
        code = process.poll() if process is not None else None
        if code is None:
            return "it stopped responding"
        if code < 0:
            try:
                return f"killed by signal {signal.Signals(-code).name}"
            except ValueError:
                return f"killed by signal {-code}"
        return f"exit status {code}"

    async def kill_everything(self) -> None:
        """Kill the kernel and, in the sandbox, every other process of it."""
        if self.sandboxed and os.getpid() == 1:
            for _ in range(100):  # PID 1 of the sandbox's namespace: kill(-1) hits everything but ourselves
                try:
                    os.kill(-1, signal.SIGKILL)
                except ProcessLookupError:
                    break
                self.reap()
                time.sleep(0.01)
        else:
            pid = self.kernel_pid()
            if pid is not None:
                try:
                    os.killpg(os.getpgid(pid), signal.SIGKILL)
                except (ProcessLookupError, PermissionError):
                    pass
        if self.client is not None:
            try:
                await asyncio.wait_for(self.client._async_cleanup_kernel(), 30)
            except Exception:  # noqa: BLE001 - the kernel is dead; only its bookkeeping is left
                pass
        self.reap()

    def reap(self) -> None:
        """As PID 1, collect orphaned zombies (they count against the process limit until reaped).

        The kernel itself is left to its ``Popen`` (which needs its exit status)."""
        if not (self.sandboxed and os.getpid() == 1):
            return
        kernel = self.kernel_pid()
        for pid, state, ppid in _processes():
            if state == "Z" and ppid == 1 and pid != kernel:
                try:
                    os.waitpid(pid, os.WNOHANG)
                except ChildProcessError:
                    pass

    def stray_processes(self) -> list[int]:
        """Live processes of the sandbox other than this executor and the kernel."""
        if not (self.sandboxed and os.getpid() == 1):
            return []
        keep = {1, self.kernel_pid()}
        return [pid for pid, state, _ in _processes() if pid not in keep and state != "Z"]

    def kill_strays(self, record: _Record) -> None:
        strays = self.stray_processes()
        if len(strays) <= int(self.spec.get("max_stray_processes", 16)):
            return
        for sig in (signal.SIGSTOP, signal.SIGKILL):
            for pid in strays:
                try:
                    os.kill(pid, sig)
                except ProcessLookupError:
                    pass
        self.reap()
        record.notes.append(f"{len(strays)} processes the cell left behind were killed")

    # -- guard ----------------------------------------------------------------------------------
    async def guard(self, function: str, *args: Any) -> dict | None:
        """Call ``segutils.grading.guard.<function>(nonce, *args)`` silently; ``None`` if it did not answer."""
        nonce = secrets.token_hex(8)
        call = f"__import__({_GUARD_MODULE!r}, fromlist=['_']).{function}({nonce!r}, *{list(args)!r})"
        kc = self.client.kc
        try:
            msg_id = kc.execute("", silent=True, store_history=False, user_expressions={"r": call})
            deadline = time.monotonic() + 60
            while True:
                msg = await kc.shell_channel.get_msg(timeout=max(0.1, deadline - time.monotonic()))
                if msg["parent_header"].get("msg_id") == msg_id:
                    break
            result = msg["content"].get("user_expressions", {}).get("r", {})
            text = result.get("data", {}).get("text/plain", "")
            answer = json.loads(ast.literal_eval(text))
        except Exception:  # noqa: BLE001 - no answer, a wrong answer, a dead kernel: all mean "cannot vouch"
            return None
        if not isinstance(answer, dict) or answer.get("nonce") != nonce or "error" in answer:
            return None
        return answer

    # -- cells ------------------------------------------------------------------------------------
    async def execute(self, index: int, record: _Record | None, source: str | None = None) -> str:
        """Execute cell ``index`` (or ``source`` in its place, silently); fill ``record`` (``None`` for a
        silent run). Returns the status."""
        from nbclient.exceptions import CellTimeoutError, DeadKernelError

        cell = self.nb.cells[index] if record is not None else _copy_cell(self.nb.cells[index])
        if source is not None:
            cell.source = source
        client = self.client
        client.reset_cell()
        self._reply = None
        started = time.monotonic()
        limit = self.limits.cell_timeout + client.iopub_timeout + 30
        try:
            await asyncio.wait_for(client.async_execute_cell(cell, index, store_history=record is not None), limit)
            reply = self._reply or {"content": {"status": "ok"}}
            content = reply.get("content", {})
            status = "error" if content.get("status") == "error" else "ok"
            if content.get("ename") == "CellTimeoutError":
                status = "timeout"
        except DeadKernelError:
            status, content = (
                "died",
                {"ename": "KernelDied", "evalue": f"the kernel died while this cell ran ({self.kernel_exit()})"},
            )
        except (CellTimeoutError, asyncio.TimeoutError):
            status = "hung"
            content = {
                "ename": "CellTimeoutError",
                "evalue": f"the cell ran longer than {self.limits.cell_timeout:g} s and did not stop when "
                "interrupted; the kernel was killed",
            }
        if record is None:
            return status
        record.seconds = time.monotonic() - started
        record.execution_count = cell.get("execution_count")
        record.outputs = [dict(o) for o in cell.get("outputs", [])]
        record.output_truncated = client.truncated
        record.status = "ok" if status == "ok" else ("timeout" if status in ("timeout", "hung") else status)
        if status != "ok":
            record.ename = str(content.get("ename", "Error"))
            record.evalue = str(content.get("evalue", ""))
            record.traceback = [str(line) for line in content.get("traceback", [])][-MAX_TRACEBACK_LINES:]
        if client.truncated:
            record.notes.append(f"output beyond {client.cell_cap} bytes was dropped and the cell interrupted")
            if record.status == "ok":
                record.status = "error"
            if record.ename in ("", "KeyboardInterrupt"):
                record.ename = "OutputLimitExceeded"
                record.evalue = f"the cell printed more than {client.cell_cap} bytes and was stopped"
        return status

    async def serve_test(self, index: int, record: _Record) -> str:
        """Two-process grading: where test cell ``index`` stands, the kernel serves the grader's requests
        (:func:`segutils.grading.remote.student.serve`); nothing it prints is kept."""
        started = time.monotonic()
        status = await self.execute(index, None, source=serve_source(self.channel, index))
        record.seconds = time.monotonic() - started
        record.status = "served" if status in ("ok", "error") else status
        if status == "died":
            record.notes.append(f"the kernel died while the grader ran this test ({self.kernel_exit()})")
        elif status in ("timeout", "hung"):
            record.notes.append("the kernel was still busy when the cell timeout passed and was interrupted")
        return status

    async def recover(self, upto: int) -> bool:
        """After a kernel death: kill everything, start a kernel, replay cells before ``upto``."""
        self.deaths += 1
        await self.kill_everything()
        if self.deaths > self.max_deaths:
            return False
        await self.start_kernel()
        for index in self.executed:
            if index >= upto or index in self.killers or self.plan[index]["kind"] == "graded":
                continue
            status = await self.execute(index, None)
            if status in ("died", "hung"):
                self.killers.add(index)
                self.notes.append(f"cell {index} killed the kernel again while it was replayed")
                return await self.recover(upto)
            await self._pin(index)
        return True

    async def _pin(self, index: int) -> None:
        pins = self.plan[index].get("pins") or []
        if pins and self.role != "student":
            await self.guard("pin", pins)

    async def run(self) -> None:
        started = time.monotonic()
        await self.start_kernel()
        self.emit({"type": "start", "cuda_devices": self.cuda_devices})
        code_cells = sorted(self.plan)
        alive = True
        for index in code_cells:
            record = _Record(index)
            if not alive:
                record.notes.append(f"not run: the kernel died {self.max_deaths + 1} times")
                self.emit(record.to_json())
                continue
            if not await self.client.km.is_alive():
                previous = self.executed[-1] if self.executed else None
                if previous is not None:
                    self.killers.add(previous)
                self.notes.append(f"the kernel stopped after cell {previous} finished ({self.kernel_exit()})")
                alive = await self.recover(index)
                if not alive:
                    record.notes.append(f"not run: the kernel died {self.max_deaths + 1} times")
                    self.emit(record.to_json())
                    continue
            graded = self.plan[index]["kind"] == "graded"
            if graded and self.role == "student":
                status = await self.serve_test(index, record)
                if status in ("died", "hung"):
                    self.killers.add(index)
                    alive = await self.recover(index + 1)
                self.kill_strays(record)
                self.emit(record.to_json())
                continue
            if graded:
                answer = await self.guard("restore")
                if answer is None:
                    record.tampered.append("the grader's integrity check did not answer before the test")
                else:
                    record.restored = list(answer.get("changed", []))
            status = await self.execute(index, record)
            self.executed.append(index)
            if status in ("died", "hung"):
                self.killers.add(index)
                alive = await self.recover(index + 1)
            elif graded:
                answer = await self.guard("check")
                if answer is None:
                    record.tampered.append("the grader's integrity check did not answer after the test")
                else:
                    record.tampered += list(answer.get("changed", []))
                    if answer.get("changed"):
                        await self.guard("restore")
            elif status == "ok":
                await self._pin(index)
            self.kill_strays(record)
            self.emit(record.to_json())
        self.emit(
            {
                "type": "end",
                "seconds": round(time.monotonic() - started, 3),
                "notes": self.notes,
                "kernel_deaths": self.deaths,
            }
        )
        await self.kill_everything()


def serve_source(path: str, cell: int) -> str:
    """The code the student's kernel runs where test cell ``cell`` stands: serve the grader on socket ``path``
    (:func:`segutils.grading.remote.student.serve`). Kept here, not beside ``serve``, because the
    executor must not import the student side's modules: they import PyTorch (1.5 s a job)."""
    return f"__import__('segutils.grading.remote.student', fromlist=['serve']).serve({path!r}, {int(cell)})"


def _processes() -> list[tuple[int, str, int]]:
    """``(pid, state, ppid)`` of every process this PID namespace shows in ``/proc``."""
    found = []
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        try:
            stat = Path(f"/proc/{name}/stat").read_text()
        except OSError:
            continue
        fields = stat[stat.rindex(")") + 2 :].split()
        found.append((int(name), fields[0], int(fields[1])))
    return found


def _copy_cell(cell: Any) -> Any:
    import copy

    return copy.deepcopy(cell)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if "--grader" in argv:  # the grader process of two-process grading (started through the same bootstrap)
        from segutils.grading.remote.grader import main as grader_main

        return grader_main(argv)
    if "--warm-grader" in argv:  # a worker slot's warm grader, which forks the grader processes
        from segutils.grading.remote.warm import main as warm_main

        return warm_main(argv)
    parser = argparse.ArgumentParser(prog="python -m segutils.grading.execute", description=__doc__.split("\n")[0])
    parser.add_argument("--input", required=True, help="directory holding spec.json and files/")
    parser.add_argument("--work", required=True, help="writable directory to run the notebook in")
    parser.add_argument("--result-fd", type=int, required=True, help="file descriptor to write JSON lines to")
    parser.add_argument("--sandboxed", action="store_true", help="running inside bubblewrap (PID 1 of its namespace)")
    args = parser.parse_args(argv)
    sink = os.fdopen(args.result_fd, "w", encoding="utf-8")
    make_undumpable()
    for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP, signal.SIGPIPE):
        signal.signal(sig, signal.SIG_IGN)
    input_dir, work = Path(args.input), Path(args.work)
    spec = json.loads((input_dir / "spec.json").read_text(encoding="utf-8"))
    apply_limits(Limits.from_dict(spec["limits"]), processes=args.sandboxed)
    if work.exists():
        shutil.rmtree(work)
    shutil.copytree(input_dir / "files", work)
    for path in (Path(os.environ.get("HOME", work.parent / "home")),):
        path.mkdir(parents=True, exist_ok=True)
    spec.setdefault("kernel_log", str(work.parent / "kernel.log"))
    executor = Executor(spec, work, sink, sandboxed=args.sandboxed)
    try:
        asyncio.run(executor.run())
    except Exception as error:  # noqa: BLE001 - reported to the trusted side, which decides
        return report_crash(sink, error)
    return 0


def report_crash(sink: TextIO, error: Exception) -> int:
    """Write the "crash" record the trusted side reads for a process that failed as a whole; exit status 1."""
    sink.write(json.dumps({"type": "crash", "error": f"{type(error).__name__}: {error}"}) + "\n")
    sink.flush()
    return 1


if __name__ == "__main__":
    sys.exit(main())
