"""nbgrader preprocessors of ``segutils grade``.

They plug into nbgrader's own converters through its configuration
(``Autograde.sanitize_preprocessors``, ``Autograde.autograde_preprocessors``,
``GenerateFeedback.preprocessors``; see :func:`segutils.grading.runner.nbgrader_config`):

- :class:`RestoreStructure` (sanitize step, before nbgrader's ``OverwriteCells``): puts every cell
  the gradebook knows back into the assignment's order, re-creates deleted ones from the gradebook,
  rebuilds their nbgrader metadata (points, locked, grade, solution) from the gradebook and strips
  nbgrader metadata and tags from every other cell. ``OverwriteCells`` then restores locked sources.
- :class:`SandboxedExecute` (autograde step, replaces nbgrader's ``Execute``): runs the notebook in
  :mod:`segutils.grading.execute` inside the sandbox and turns what it reports into cell outputs
  from which nbgrader's ``SaveAutoGrades`` computes the scores it would compute for an honest
  notebook: a test cell fails exactly when its execution failed (the kernel's reply, not what reached
  stderr), or when the integrity guard saw the test's tools replaced while it ran.
- :class:`CheckCellMetadataOnce` (both autograde steps, replaces nbgrader's ``CheckCellMetadata``): the
  same check, with nbgrader's JSON schema checked once per process instead of once per cell.
- :class:`RedactHiddenTests` (feedback step): hidden-test source and tracebacks out of the HTML
  feedback, pass/fail and the failure message kept.

Per-notebook details (notes, cell results, timings) go to :data:`DETAILS`, read by the runner.
"""

from __future__ import annotations

import ast
import contextlib
import functools
import json
import os
import re
import selectors
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import nbformat
from nbformat import NotebookNode
from nbgrader import utils
from nbgrader.api import Gradebook
from nbgrader.nbgraderformat import common as nbgrader_format
from nbgrader.preprocessors import CheckCellMetadata, Execute, NbGraderPreprocessor
from traitlets import Bool, Dict, Float, Integer, List, Unicode

from segutils.grading import sandbox
from segutils.grading.jobserver import kill_process_group
from segutils.grading.remote import warm
from segutils.grading.runner import TWO_PROCESS_DEFAULT

#: Details of the notebooks graded in this process, by notebook id (filled by the preprocessors).
DETAILS: dict[str, dict] = {}

#: Notebook metadata key that marks a substitute for a submission that could not be graded.
REJECTED_KEY = "segutils_grading"
_ANSI = re.compile(r"\x1b\[[0-9;]*[A-Za-z]")


def details(resources: dict) -> dict:
    notebook = resources["nbgrader"]["notebook"]
    return DETAILS.setdefault(notebook, {"notes": [], "cells": {}, "cuda_devices": 0, "seconds": 0.0})


def _nbgrader_meta(cell: NotebookNode) -> dict:
    meta = cell.get("metadata", {}).get("nbgrader")
    return meta if isinstance(meta, dict) else {}


class RestoreStructure(NbGraderPreprocessor):
    """Rebuild the notebook's graded structure from the gradebook (tamper protection).

    Cells whose ``grade_id`` the gradebook knows ("known cells") are put in the assignment's order;
    each keeps the cells the student wrote after it. A known cell missing from the submission is
    re-created from the gradebook (a solution cell as its unanswered stub). The nbgrader metadata of
    known cells is rebuilt from the gradebook, and every other cell loses its nbgrader metadata and
    its tags (``skip-execution`` would otherwise skip a test).
    """

    cell_order = Dict(help="notebook name -> grade_ids in the order of the release notebook").tag(config=True)
    release_sources = Dict(help="notebook name -> {grade_id: source in the release}").tag(config=True)

    def preprocess(self, nb: NotebookNode, resources: dict) -> tuple[NotebookNode, dict]:
        notebook_id = resources["nbgrader"]["notebook"]
        assignment_id = resources["nbgrader"]["assignment"]
        notes = details(resources)["notes"]
        with Gradebook(resources["nbgrader"]["db_url"]) as gb:
            source_nb = gb.find_notebook(notebook_id, assignment_id)
            sources = {c.name: c for c in source_nb.source_cells}
            points = {c.name: float(c.max_score) for c in source_nb.grade_cells}
            solutions = {c.name for c in source_nb.solution_cells}
            tasks = {c.name for c in source_nb.task_cells}
            known_specs = {
                name: {"cell_type": c.cell_type, "locked": bool(c.locked), "source": c.source}
                for name, c in sources.items()
            }
        order = [gid for gid in self.cell_order.get(notebook_id, []) if gid in known_specs]
        order += [gid for gid in known_specs if gid not in order]
        released = self.release_sources.get(notebook_id, {})

        known: dict[str, NotebookNode] = {}
        seen_order: list[str] = []
        after: dict[str | None, list[NotebookNode]] = {None: []}
        anchor: str | None = None
        for cell in nb.cells:
            gid = _nbgrader_meta(cell).get("grade_id")
            if gid in known_specs and gid not in known:
                known[gid] = cell
                seen_order.append(gid)
                anchor = gid
                after[gid] = []
            else:
                cell.metadata.pop("nbgrader", None)
                cell.metadata.pop("tags", None)
                after[anchor].append(cell)

        if seen_order != [gid for gid in order if gid in known]:
            notes.append("graded cells were out of the assignment's order and were moved back")
        cells: list[NotebookNode] = list(after[None])
        for gid in order:
            spec = known_specs[gid]
            cell = known.get(gid)
            if cell is None:
                kind = "test cell" if gid in points and gid not in solutions else "cell"
                notes.append(f"{kind} {gid!r} was missing from the submission and was restored")
                cell = _new_cell(spec["cell_type"], spec["source"])
            else:
                old = _nbgrader_meta(cell)
                if gid in points and "points" in old and _as_float(old.get("points")) != points[gid]:
                    notes.append(
                        f"cell {gid!r}: points changed to {old.get('points')!r} in the submission; "
                        f"restored to {points[gid]:g}"
                    )
                for flag, value in (
                    ("locked", spec["locked"]),
                    ("grade", gid in points),
                    ("solution", gid in solutions),
                ):
                    if bool(old.get(flag, False)) != value:
                        notes.append(f"cell {gid!r}: metadata {flag!r} changed in the submission; restored")
                if spec["locked"] and gid in released and cell.get("source") != released[gid]:
                    notes.append(f"locked cell {gid!r} was edited in the submission; its original was restored")
                if cell.get("cell_type") != spec["cell_type"]:
                    notes.append(f"cell {gid!r} was turned into a {cell.get('cell_type')} cell; restored")
            meta = {
                "grade": gid in points,
                "grade_id": gid,
                "locked": spec["locked"],
                "schema_version": 3,
                "solution": gid in solutions,
                "task": gid in tasks,
            }
            if gid in points:
                meta["points"] = points[gid]
            cell.metadata = nbformat.from_dict({"nbgrader": meta})
            if spec["locked"]:
                cell.metadata.update({"deletable": False, "editable": False})
            cells.append(cell)
            cells.extend(after.get(gid, []))
        nb.cells = cells
        return nb, resources


def _as_float(value: Any) -> float | None:
    try:
        return float(value)
    except (TypeError, ValueError):
        return None


def _new_cell(cell_type: str, source: str) -> NotebookNode:
    if cell_type == "code":
        return nbformat.v4.new_code_cell(source=source)
    if cell_type == "raw":
        return nbformat.v4.new_raw_cell(source=source)
    return nbformat.v4.new_markdown_cell(source=source)


# -- what the locked cells import ----------------------------------------------------------------
def imports_of(source: str) -> tuple[list[str], list[str]]:
    """Modules a cell imports and the names it binds to them (magics and shell lines ignored)."""
    lines = [line for line in source.splitlines() if not line.lstrip().startswith(("%", "!"))]
    try:
        tree = ast.parse("\n".join(lines))
    except SyntaxError:
        return [], []
    modules: list[str] = []
    names: list[str] = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                modules.append(alias.name)
                names.append(alias.asname or alias.name.split(".")[0])
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            modules.append(node.module)
            names += [alias.asname or alias.name for alias in node.names if alias.name != "*"]
    return list(dict.fromkeys(modules)), list(dict.fromkeys(names))


def cell_plan(nb: NotebookNode) -> tuple[list[dict], list[str]]:
    """The executor's plan (one entry per code cell) and the modules the guard should watch."""
    plan, modules = [], []
    for index, cell in enumerate(nb.cells):
        if cell.cell_type != "code":
            continue
        meta = _nbgrader_meta(cell)
        if utils.is_grade(cell) and not utils.is_solution(cell):
            kind = "graded"
        elif meta.get("locked"):
            kind = "locked"
        else:
            kind = "code"
        entry: dict[str, Any] = {"index": index, "kind": kind, "grade_id": meta.get("grade_id")}
        if kind == "locked":
            cell_modules, names = imports_of(cell.source)
            modules += cell_modules
            entry["pins"] = names
        plan.append(entry)
    return plan, list(dict.fromkeys(modules))


# -- validating what the sandbox reports -----------------------------------------------------------
def _text(value: Any, limit: int) -> str:
    if isinstance(value, list):
        value = "".join(str(v) for v in value)
    return str(value)[:limit]


def clean_output(output: Any, limit: int) -> NotebookNode | None:
    """A well-formed nbformat output from an untrusted dict, or ``None``."""
    if not isinstance(output, dict):
        return None
    kind = output.get("output_type")
    if kind == "stream" and output.get("name") in ("stdout", "stderr"):
        return nbformat.v4.new_output("stream", name=output["name"], text=_text(output.get("text", ""), limit))
    if kind == "error":
        tb = output.get("traceback", [])
        tb = [_text(line, 10_000) for line in tb[-sandbox_traceback_lines() :]] if isinstance(tb, list) else []
        return nbformat.v4.new_output(
            "error",
            ename=_text(output.get("ename", "Error"), 200),
            evalue=_text(output.get("evalue", ""), 10_000),
            traceback=tb,
        )
    if kind in ("display_data", "execute_result"):
        data = output.get("data", {})
        if not isinstance(data, dict):
            return None
        clean = {}
        for mime, value in data.items():
            if not isinstance(mime, str):
                continue
            clean[mime[:100]] = (
                value if mime.endswith("json") and isinstance(value, (dict, list)) else _text(value, limit)
            )
        metadata = output.get("metadata", {})
        metadata = metadata if isinstance(metadata, dict) else {}
        try:
            json.dumps(metadata)
        except (TypeError, ValueError):
            metadata = {}
        if kind == "execute_result":
            count = output.get("execution_count")
            return nbformat.v4.new_output(
                "execute_result",
                data=clean,
                metadata=metadata,
                execution_count=count if isinstance(count, int) else None,
            )
        return nbformat.v4.new_output("display_data", data=clean, metadata=metadata)
    return None


def sandbox_traceback_lines() -> int:
    return 200


def _error(ename: str, evalue: str, traceback: list[str] | None = None) -> NotebookNode:
    return nbformat.v4.new_output(
        "error", ename=ename, evalue=evalue, traceback=traceback or [f"\x1b[0;31m{ename}\x1b[0m: {evalue}"]
    )


class SandboxedExecute(Execute):
    """nbgrader's ``Execute``, run in a bubblewrap sandbox by :mod:`segutils.grading.execute`.

    Configured like ``Execute`` (``timeout`` is the per-cell timeout) plus the traits below. With
    ``sandbox = False`` the executor still runs in a child process with the resource limits, but
    without namespaces (the student's code has the grader's rights).
    """

    sandbox = Bool(True, help="run the notebook in a bubblewrap sandbox").tag(config=True)
    limits = Dict(help="segutils.grading.sandbox.Limits fields (timeout overrides cell_timeout)").tag(config=True)
    gpu = Dict(
        allow_none=True,
        default_value=None,
        help="the GPU this notebook may use: {bus_id, minor, uuid}; None for the CPU only",
    ).tag(config=True)
    stderr_fails = Bool(False, help="nbgrader's rule: any stderr output fails a test cell").tag(config=True)
    notebook_timeout = Float(0.0, help="wall seconds for the whole notebook (0: from the limits)").tag(config=True)
    max_kernel_deaths = Integer(3, help="kernel deaths tolerated before the remaining cells are not run").tag(
        config=True
    )
    python = Unicode(sys.executable, help="the interpreter that runs the executor and the kernel").tag(config=True)
    extra_guard_modules = List(Unicode(), help="modules the guard watches besides the locked cells' imports").tag(
        config=True
    )
    two_process = Bool(
        TWO_PROCESS_DEFAULT,
        help="run the test cells in a grader process of their own, the student's code in "
        "the student's (segutils.grading.remote); False: tests in the student's kernel, "
        "watched by the guard",
    ).tag(config=True)

    def _limits(self) -> sandbox.Limits:
        data = dict(self.limits)
        if self.timeout:
            data["cell_timeout"] = float(self.timeout)
        if self.notebook_timeout:
            data["notebook_timeout"] = float(self.notebook_timeout)
        return sandbox.Limits.from_dict(data)

    def preprocess(self, nb: NotebookNode, resources: dict) -> tuple[NotebookNode, dict]:
        info = details(resources)
        rejected = (
            nb.metadata.get(REJECTED_KEY, {}).get("rejected")
            if isinstance(nb.metadata.get(REJECTED_KEY), dict)
            else None
        )
        if rejected:
            for cell in nb.cells:
                if cell.cell_type == "code" and utils.is_grade(cell) and not utils.is_solution(cell):
                    cell.outputs = [_error("SubmissionRejected", rejected)]
                    info["cells"][_nbgrader_meta(cell)["grade_id"]] = {
                        "status": "rejected",
                        "ename": "SubmissionRejected",
                        "evalue": rejected,
                        "seconds": 0.0,
                    }
            return nb, resources
        limits = self._limits()
        plan, modules = cell_plan(nb)
        modules = list(dict.fromkeys(modules + list(self.extra_guard_modules)))
        build_dir = Path(resources.get("metadata", {}).get("path") or ".")
        name = f"{resources['nbgrader']['notebook']}.ipynb"
        staging = Path(tempfile.mkdtemp(prefix="segutils-exec-"))
        try:
            if self.two_process:
                records, end, problem = self._run_two_process(nb, plan, limits, build_dir, name, staging)
            else:
                records, end, problem = self._run(nb, plan, modules, limits, build_dir, name, staging)
        finally:
            shutil.rmtree(staging, ignore_errors=True)
        self._apply(nb, plan, records, end, problem, limits, info)
        if self.two_process:
            info["cuda_devices"] = int(getattr(self, "_cuda", 0))
            info["two_process"] = True
            info["warm_grader"] = bool(getattr(self, "_warm", False))
        return nb, resources

    # -- running the executor ----------------------------------------------------------------
    def _stage(self, nb, spec, build_dir, name, input_dir: Path) -> None:
        """The executor's input folder: ``spec.json`` and ``files/`` (the notebook and the files beside it)."""
        files = input_dir / "files"
        files.mkdir(parents=True)
        for path in build_dir.iterdir() if build_dir.is_dir() else []:
            if path.name == name or path.name.startswith("."):
                continue
            target = files / path.name
            if path.is_dir() and not path.is_symlink():
                shutil.copytree(path, target, symlinks=False, ignore_dangling_symlinks=True)
            elif path.is_file() and not path.is_symlink():
                shutil.copy2(path, target)
        clean = nbformat.from_dict(json.loads(json.dumps(nb)))
        nbformat.write(clean, files / name)
        (input_dir / "spec.json").write_text(json.dumps(spec), encoding="utf-8")
        _readable(input_dir)

    def _executor_command(self, args, staging, limits, env, gpu):
        """The student's executor (``segutils.grading.execute``) on ``staging/input``, in the sandbox or not."""
        return sandbox.execute_command(
            self.python,
            ["--input", sandbox.INPUT, "--work", f"{sandbox.SCRATCH}/work", *args],
            sandboxed=self.sandbox,
            input_dir=staging / "input",
            scratch=staging,
            limits=limits,
            env=env,
            gpu=gpu,
        )

    def _warm_grader(self, spec, listener, result_fd, staging, limits):
        """The worker slot's warm grader takes this submission's tests (:mod:`segutils.grading.remote.warm`);
        ``None``: there is none (or it did not answer), start a fresh grader process."""
        path = warm.request(
            {
                "python": self.python,
                "sandboxed": bool(self.sandbox),
                "limits": limits.to_dict(),
                "gpu": dict(self.gpu) if self.gpu else None,
                "preload": warm.preloaded_modules(spec["cells"]),
            }
        )
        if path is None:
            return None
        with open(staging / "grader.log", "wb") as log:
            return warm.start(path, spec, listener.fileno(), result_fd, log.fileno())

    def _run(self, nb, plan, modules, limits, build_dir, name, staging):
        spec = {
            "notebook": name,
            "cells": plan,
            "guard_modules": modules,
            "limits": limits.to_dict(),
            "max_kernel_deaths": int(self.max_kernel_deaths),
            "startup_timeout": int(self.startup_timeout or 120),
        }
        self._stage(nb, spec, build_dir, name, staging / "input")
        os.chmod(staging, 0o755)

        gpu = sandbox.GpuDevice(**self.gpu) if self.gpu else None
        env = sandbox.sandbox_env(limits, gpu, use_cuda=gpu is not None)
        read_fd, write_fd = os.pipe()
        command, popen_env = self._executor_command(["--result-fd", str(write_fd)], staging, limits, env, gpu)
        log_path = staging / "executor.log"
        records: dict[int, dict] = {}
        end: dict | None = None
        problem = ""
        deadline = time.monotonic() + limits.notebook_timeout
        max_line = 4 * limits.notebook_output_bytes + (1 << 20)
        cgroup = sandbox.PidsCgroup(limits.processes) if self.sandbox else None
        process = _start(command, log_path, popen_env, (write_fd,), cgroup)
        os.close(write_fd)
        buffer = b""
        selector = selectors.DefaultSelector()
        selector.register(read_fd, selectors.EVENT_READ)
        try:
            # In the sandbox, the "end" record is the last word: the kernel's shutdown (about a second)
            # is skipped by killing the sandbox, whose PID namespace takes every process with it.
            while not (end is not None and self.sandbox):
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    problem = f"the notebook ran longer than {limits.notebook_timeout:g} s and was stopped"
                    break
                if not selector.select(timeout=min(remaining, 1.0)):
                    continue
                chunk = os.read(read_fd, 1 << 20)
                if not chunk:
                    break
                buffer += chunk
                while b"\n" in buffer:
                    line, buffer = buffer.split(b"\n", 1)
                    kind, payload = _parse_record(line)
                    if kind == "cell" and payload["index"] not in records:
                        records[payload["index"]] = payload
                    elif kind == "end":
                        end = payload
                    elif kind == "crash":
                        problem = f"the executor failed: {payload.get('error', '')[:500]}"
                if len(buffer) > max_line:
                    problem = "the executor wrote an oversized record"
                    break
        finally:
            selector.close()
            os.close(read_fd)
            _kill_group(process)
            if cgroup is not None:
                cgroup.__exit__(None, None, None)
        if not problem and end is None:
            code = process.returncode
            tail = log_path.read_bytes()[-2000:].decode("utf-8", "replace") if log_path.exists() else ""
            problem = f"the sandbox stopped before the notebook finished (exit status {code}) {tail.strip()[-500:]}"
        return records, end, problem

    def _run_two_process(self, nb, plan, limits, build_dir, name, staging):
        """Two-process grading: the student's cells in one sandbox, the test cells in another.

        The student's sandbox gets the notebook *without* the test cells' sources; at each test cell
        its kernel connects to the grader's socket (bound into it as one file) and serves the
        grader's requests. The grader's sandbox gets only the cells it runs (no student file). The
        records of graded cells come from the grader alone."""
        os.chmod(staging, 0o755)
        student_nb = nbformat.from_dict(json.loads(json.dumps(nb)))
        for entry in plan:
            if entry["kind"] == "graded":
                student_nb.cells[entry["index"]].source = ""
        channel_host = staging / "channel.sock"
        channel = SANDBOX_CHANNEL if self.sandbox else str(channel_host)
        student_spec = {
            "notebook": name,
            "cells": plan,
            "guard_modules": [],
            "limits": limits.to_dict(),
            "max_kernel_deaths": int(self.max_kernel_deaths),
            "startup_timeout": int(self.startup_timeout or 120),
            "role": "student",
            "channel": channel,
        }
        self._stage(student_nb, student_spec, build_dir, name, staging / "input")
        grader_spec = {"cells": grader_cells(nb, plan), "limits": limits.to_dict()}
        grader_input = staging / "grader"
        grader_input.mkdir()
        (grader_input / "spec.json").write_text(json.dumps(grader_spec), encoding="utf-8")
        _readable(grader_input)

        listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        listener.bind(str(channel_host))
        listener.listen(8)
        os.chmod(channel_host, 0o777)
        gpu = sandbox.GpuDevice(**self.gpu) if self.gpu else None
        env = sandbox.sandbox_env(limits, gpu, use_cuda=gpu is not None)
        grader_read, grader_write = os.pipe()
        student_read, student_write = os.pipe()
        student_cmd, popen_env = self._executor_command(["--result-fd", str(student_write)], staging, limits, env, gpu)
        if self.sandbox:
            at = student_cmd.index("--chdir")
            student_cmd[at:at] = ["--bind", str(channel_host), SANDBOX_CHANNEL]
        # The student's process starts first: its kernel's start-up overlaps the grader's (the slot's first
        # job waits seconds for the warm grader's imports). It connects to the listener when it reaches a test.
        student_cgroup = sandbox.PidsCgroup(limits.processes) if self.sandbox else None
        processes = [_start(student_cmd, staging / "executor.log", popen_env, (student_write,), student_cgroup)]
        os.close(student_write)
        warm_child = self._warm_grader(grader_spec, listener, grader_write, staging, limits)
        self._warm = warm_child is not None
        grader_cgroup = sandbox.PidsCgroup(limits.processes) if self.sandbox and warm_child is None else None
        cgroups = [grader_cgroup, student_cgroup]
        if warm_child is None:
            grader_cmd, grader_env = grader_command(
                self.python,
                ["--grader", "--input", sandbox.INPUT, "--listen-fd", str(listener.fileno())]
                + ["--result-fd", str(grader_write)],
                sandboxed=self.sandbox,
                input_dir=grader_input,
                scratch=staging,
                limits=limits,
                gpu=gpu,
            )
            pass_fds = (grader_write, listener.fileno())
            processes.append(_start(grader_cmd, staging / "grader.log", grader_env, pass_fds, grader_cgroup))
        os.close(grader_write)
        listener.close()
        streams = {grader_read: "grader", student_read: "student"}
        found: dict[str, dict] = {"grader": {}, "student": {}}
        ends: dict[str, dict] = {}
        problems: dict[str, str] = {}
        buffers = {fd: b"" for fd in streams}
        deadline = time.monotonic() + limits.notebook_timeout
        max_line = 4 * limits.notebook_output_bytes + (1 << 20)
        selector = selectors.DefaultSelector()
        for fd in streams:
            selector.register(fd, selectors.EVENT_READ)
        open_fds = set(streams)
        student_gone: float | None = None
        try:
            while open_fds and not ("grader" in ends and "student" in ends):
                if student_gone is None and ("student" in ends or student_read not in open_fds):
                    student_gone = time.monotonic()
                if student_gone is not None and time.monotonic() - student_gone > 10 and "grader" not in ends:
                    # Nobody will serve the grader's remaining tests: they are not run.
                    problems["grader"] = "the student's process stopped before these tests"
                    break
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    problems["grader"] = f"the notebook ran longer than {limits.notebook_timeout:g} s and was stopped"
                    break
                for key, _ in selector.select(timeout=min(remaining, 1.0)):
                    fd, side = key.fd, streams[key.fd]
                    chunk = os.read(fd, 1 << 20)
                    if not chunk:
                        selector.unregister(fd)
                        open_fds.discard(fd)
                        continue
                    buffers[fd] += chunk
                    while b"\n" in buffers[fd]:
                        line, buffers[fd] = buffers[fd].split(b"\n", 1)
                        kind, payload = _parse_record(line)
                        if kind == "cell" and payload["index"] not in found[side]:
                            found[side][payload["index"]] = payload
                        elif kind == "start" and side == "grader":
                            ends.setdefault("start", payload)
                        elif kind == "end":
                            ends[side] = payload
                        elif kind == "crash":
                            problems[side] = f"the {side} process failed: {str(payload.get('error', ''))[:500]}"
                    if len(buffers[fd]) > max_line:
                        problems[side] = f"the {side} process wrote an oversized record"
                        selector.unregister(fd)
                        open_fds.discard(fd)
        finally:
            selector.close()
            for fd in streams:
                os.close(fd)
            if warm_child is not None:
                warm_child.stop()
            for process in processes:
                _kill_group(process)
            for cgroup in cgroups:
                if cgroup is not None:
                    cgroup.__exit__(None, None, None)
        graded = {e["index"] for e in plan if e["kind"] == "graded"}
        records = {i: r for i, r in found["student"].items() if i not in graded}
        for index in graded:
            if index in found["grader"]:
                record = dict(found["grader"][index])
                served = found["student"].get(index, {})
                notes = served.get("notes") if isinstance(served.get("notes"), list) else []
                record["notes"] = list(record.get("notes", []))[:10] + notes[:10]
                records[index] = record
        end = None
        if "grader" in ends:
            student_end = ends.get("student", {})
            end = {
                "seconds": float(student_end.get("seconds", 0.0) or 0.0)
                if isinstance(student_end.get("seconds"), (int, float))
                else 0.0,
                "notes": list(student_end.get("notes", []))[:50] + list(ends["grader"].get("notes", []))[:20],
                "kernel_deaths": student_end.get("kernel_deaths", 0),
            }
        problem = problems.get("grader", "")
        if problem and "grader" not in ends:
            end = {
                "seconds": 0.0,
                "notes": list(ends.get("student", {}).get("notes", []))[:50],
                "kernel_deaths": ends.get("student", {}).get("kernel_deaths", 0),
            }
        if not problem and "grader" not in ends:
            tail = (staging / "grader.log").read_bytes()[-2000:].decode("utf-8", "replace")
            problem = f"the grader process stopped before the notebook finished: {tail.strip()[-500:]}"
        if "student" in problems:
            end = end or {}
            end.setdefault("notes", []).append(problems["student"])
        if "start" in ends:
            self._cuda = int(ends["start"].get("cuda_devices", 0) or 0)
        return records, end, problem

    # -- turning reports into outputs ----------------------------------------------------------
    def _apply(self, nb, plan, records, end, problem, limits, info) -> None:
        info["seconds"] = float((end or {}).get("seconds", 0.0))
        info["kernel_deaths"] = int((end or {}).get("kernel_deaths", 0))
        for note in (end or {}).get("notes", [])[:50]:
            info["notes"].append(_text(note, 500))
        if problem:
            info["notes"].append(problem)
        starts = [r for r in records.values()]
        del starts
        limit = limits.cell_output_bytes
        for entry in plan:
            index = entry["index"]
            cell = nb.cells[index]
            record = records.get(index)
            graded = entry["kind"] == "graded"
            if record is None:
                reason = problem or "the notebook stopped before this cell"
                cell.outputs = [_error("NotRun", reason)] if graded else []
                status, ename, evalue, seconds, restored, tampered = "not_run", "NotRun", reason, 0.0, [], []
            else:
                outputs = [
                    o for o in (clean_output(o, limit) for o in record.get("outputs", [])[:1000]) if o is not None
                ]
                status = str(record.get("status", "error"))
                ename, evalue = _text(record.get("ename", ""), 200), _text(record.get("evalue", ""), 10_000)
                seconds = float(record.get("seconds", 0.0)) if isinstance(record.get("seconds"), (int, float)) else 0.0
                restored = (
                    [_text(x, 200) for x in record.get("restored", [])][:50]
                    if isinstance(record.get("restored"), list)
                    else []
                )
                tampered = (
                    [_text(x, 200) for x in record.get("tampered", [])][:50]
                    if isinstance(record.get("tampered"), list)
                    else []
                )
                if status != "ok" and not any(o.output_type == "error" for o in outputs):
                    tb = record.get("traceback") if isinstance(record.get("traceback"), list) else None
                    outputs.append(_error(ename or "Error", evalue, [_text(t, 10_000) for t in tb] if tb else None))
                if status == "ok" and ename == "OutputLimitExceeded":
                    status = "error"
                measured = (
                    [_text(x, 100) for x in record.get("measured", [])][:20]
                    if isinstance(record.get("measured"), list)
                    else []
                )
                if graded:
                    outputs = self._graded_outputs(outputs, status, tampered, restored)
                    if measured:
                        outputs.insert(
                            0,
                            nbformat.v4.new_output(
                                "stream",
                                name="stdout",
                                text="[grader] measured in the student's process (the student's "
                                "code could influence it): " + ", ".join(measured) + "\n",
                            ),
                        )
                count = record.get("execution_count")
                cell.execution_count = count if isinstance(count, int) else None
                for note in record.get("notes", [])[:10] if isinstance(record.get("notes"), list) else []:
                    info["notes"].append(f"cell {entry.get('grade_id') or index}: {_text(note, 300)}")
                cell.outputs = outputs
            if graded:
                if tampered:
                    status, ename = "error", "GradingIntegrityError"
                    evalue = "; ".join(tampered)
                info["cells"][entry["grade_id"]] = {
                    "status": status,
                    "ename": ename,
                    "evalue": evalue[:2000],
                    "seconds": round(seconds, 3),
                    "restored": restored,
                    "tampered": tampered,
                }
                if record is not None and measured:
                    info["cells"][entry["grade_id"]]["measured_in_student"] = measured
            elif record is not None and status != "ok":
                info["notes"].append(f"cell {entry.get('grade_id') or index} failed: {ename}: {evalue[:300]}")

    def _graded_outputs(self, outputs, status, tampered, restored):
        if tampered:
            outputs.append(
                _error(
                    "GradingIntegrityError",
                    "while this test ran, the notebook replaced what the tests rely on: " + ", ".join(tampered),
                )
            )
            status = "error"
        if status != "ok":
            # A failed test gets no partial credit from a value it printed: only the error counts.
            outputs = [
                nbformat.v4.new_output("display_data", data=o.data, metadata=o.metadata)
                if o.output_type == "execute_result"
                else o
                for o in outputs
            ]
            errors = [o for o in outputs if o.output_type == "error"]
            outputs = errors[:1] + [o for o in outputs if o is not errors[0]] if errors else outputs
        elif not self.stderr_fails:
            # The test passed (the kernel said so): stderr (a PyTorch warning, a progress bar) is not a failure.
            outputs = [
                nbformat.v4.new_output("stream", name="stdout", text=o.text)
                if o.output_type == "stream" and o.name == "stderr"
                else o
                for o in outputs
            ]
        if restored:
            outputs.insert(
                0,
                nbformat.v4.new_output(
                    "stream",
                    name="stdout",
                    text="[grader] restored before this test (the notebook had replaced them): "
                    + ", ".join(restored)
                    + "\n",
                ),
            )
        return outputs


def grader_command(
    python: str,
    args: list[str],
    *,
    sandboxed: bool,
    input_dir: Path,
    scratch: Path,
    limits: sandbox.Limits,
    gpu: sandbox.GpuDevice | None,
) -> tuple[list[str], dict[str, str] | None]:
    """The command (and environment) of a grader process of two-process grading, fresh (``--grader``) or warm
    (``--warm-grader``, see :mod:`segutils.grading.remote.warm`): the same sandbox as the student's, with
    ``input_dir`` as its only folder of the grading machine."""
    env = sandbox.sandbox_env(limits, gpu, use_cuda=gpu is not None)
    return sandbox.execute_command(
        python, args, sandboxed=sandboxed, input_dir=input_dir, scratch=scratch, limits=limits, env=env, gpu=gpu
    )


#: Where the grader's socket appears in the student's sandbox (two-process grading).
SANDBOX_CHANNEL = f"{sandbox.SANDBOX_TMP}/grading-channel.sock"


def _readable(folder: Path) -> None:
    """Make ``folder`` readable by the sandbox's user (a different uid inside its user namespace)."""
    os.chmod(folder, 0o755)
    for root, dirs, filenames in os.walk(folder):
        for d in dirs:
            os.chmod(Path(root) / d, 0o755)
        for f in filenames:
            os.chmod(Path(root) / f, 0o644)


def _names(source: str) -> tuple[set[str], set[str]]:
    """Names a cell reads and names it binds, anywhere in it (an over-approximation; magics ignored)."""
    lines = [line for line in source.splitlines() if not line.lstrip().startswith(("%", "!"))]
    tree = ast.parse("\n".join(lines))
    loaded, bound = set(), set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Name):
            (loaded if isinstance(node.ctx, ast.Load) else bound).add(node.id)
        elif isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            bound.add(node.name)
        elif isinstance(node, (ast.Import, ast.ImportFrom)):
            bound.update((a.asname or a.name.split(".")[0]) for a in node.names if a.name != "*")
        elif isinstance(node, ast.arg):
            bound.add(node.arg)
        elif isinstance(node, ast.ExceptHandler) and node.name:
            bound.add(node.name)
    return loaded, bound


def grader_cells(nb: NotebookNode, plan: list[dict]) -> list[dict]:
    """The cells the grader process runs, in notebook order: every graded test cell, and the locked
    cells that read only names of the grader's own cells (imports, helpers); a locked cell that uses
    a name of the student's (training the student's model, say) runs in the student's process only."""
    import builtins

    owned = set(vars(builtins))
    cells = []
    for entry in plan:
        source = nb.cells[entry["index"]].source
        if entry["kind"] not in ("graded", "locked"):
            continue
        try:
            loaded, bound = _names(source)
        except SyntaxError:
            loaded, bound = {"<syntax error>"}, set()
        if entry["kind"] == "graded" or not (loaded - bound - owned):
            cells.append(
                {"index": entry["index"], "kind": entry["kind"], "source": source, "grade_id": entry.get("grade_id")}
            )
            owned |= bound
    return cells


def _start(
    command: list[str],
    log_path: Path,
    env: dict[str, str] | None,
    pass_fds: tuple[int, ...],
    cgroup: sandbox.PidsCgroup | None,
) -> subprocess.Popen:
    """Start a sandboxed process (the executor or a grader) in a session of its own, in ``cgroup`` if given,
    its output going to ``log_path``."""
    with open(log_path, "wb") as log:
        return subprocess.Popen(
            command,
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=log,
            env=env,
            pass_fds=pass_fds,
            start_new_session=True,
            preexec_fn=cgroup.enter if cgroup and cgroup.path else None,
        )


def _parse_record(line: bytes) -> tuple[str, dict]:
    try:
        payload = json.loads(line.decode("utf-8"))
    except (UnicodeDecodeError, ValueError):
        return "", {}
    if not isinstance(payload, dict):
        return "", {}
    kind = payload.get("type")
    if kind == "cell" and not (isinstance(payload.get("index"), int) and isinstance(payload.get("outputs", []), list)):
        return "", {}
    return str(kind), payload


def _kill_group(process: subprocess.Popen) -> None:
    kill_process_group(process.pid)
    try:
        process.wait(timeout=30)
    except subprocess.TimeoutExpired:
        pass


@functools.lru_cache(maxsize=8)
def _schema_validator(schema_json: str) -> Any:
    """A validator of the JSON schema ``schema_json``, the schema itself checked once (``check_schema``)."""
    import jsonschema

    schema = json.loads(schema_json)
    validator_class = jsonschema.validators.validator_for(schema)
    validator_class.check_schema(schema)
    return validator_class(schema)


class _SchemaCheckedOnce:
    """Stands in for the ``jsonschema`` module inside nbgrader's metadata validator: ``validate`` raises
    what ``jsonschema.validate`` raises, without checking the (unchanging) schema again for every cell."""

    @staticmethod
    def validate(instance: Any, schema: dict) -> None:
        import jsonschema

        validator = _schema_validator(json.dumps(schema, sort_keys=True))
        error = jsonschema.exceptions.best_match(validator.iter_errors(instance))
        if error is not None:
            raise error


@contextlib.contextmanager
def _schema_checked_once():
    original = nbgrader_format.jsonschema
    nbgrader_format.jsonschema = _SchemaCheckedOnce
    try:
        yield
    finally:
        nbgrader_format.jsonschema = original


class CheckCellMetadataOnce(CheckCellMetadata):
    """nbgrader's ``CheckCellMetadata``, with the same verdicts and errors, faster.

    ``jsonschema.validate`` checks nbgrader's schema against the JSON-Schema meta-schema before it
    validates each cell's metadata; on a 50-cell notebook that is a quarter of a second of every
    graded notebook spent proving the same schema valid. Here the schema is checked once per process.
    """

    def preprocess(self, nb: NotebookNode, resources: dict) -> tuple[NotebookNode, dict]:
        with _schema_checked_once():
            return super().preprocess(nb, resources)


class RedactHiddenTests(NbGraderPreprocessor):
    """Feedback without the hidden tests' source: their region becomes a one-line comment and a failing
    test's traceback becomes its last line (``AssertionError: <message>``). Disabled unless enabled."""

    enabled = Bool(False, help="redact hidden tests in feedback").tag(config=True)
    begin = Unicode("BEGIN HIDDEN TESTS", help="start marker of a hidden-test region").tag(config=True)
    end = Unicode("END HIDDEN TESTS", help="end marker of a hidden-test region").tag(config=True)

    def preprocess(self, nb: NotebookNode, resources: dict) -> tuple[NotebookNode, dict]:
        """Redact every test cell; in two-process grading also the outputs of the student's cells after the
        first hidden test: code the tests called may have recorded the hidden tests' inputs and printed them."""
        if not self.enabled:
            return nb, resources
        try:
            two_process = bool(details(resources).get("two_process"))
        except (KeyError, TypeError):
            two_process = False
        after_hidden = False
        for index, cell in enumerate(nb.cells):
            if cell.cell_type != "code":
                continue
            graded = utils.is_grade(cell) and not utils.is_solution(cell)
            if graded:
                after_hidden = after_hidden or self.begin in cell.source
                self.preprocess_cell(cell, resources, index)
            elif two_process and after_hidden and cell.get("outputs"):
                cell.outputs = [
                    nbformat.v4.new_output(
                        "stream",
                        name="stdout",
                        text="[output not shown in feedback: this cell ran after hidden tests]\n",
                    )
                ]
        return nb, resources

    def preprocess_cell(self, cell: NotebookNode, resources: dict, cell_index: int) -> tuple[NotebookNode, dict]:
        if cell.cell_type != "code" or not utils.is_grade(cell) or self.begin not in cell.source:
            return cell, resources
        lines, kept, hidden, inside = cell.source.split("\n"), [], 0, False
        for line in lines:
            if self.begin in line:
                inside = True
                indent = line[: len(line) - len(line.lstrip())]
                kept.append(f"{indent}# [hidden tests: run when graded, source not shown]")
            elif self.end in line:
                inside = False
            elif inside:
                hidden += 1
            else:
                kept.append(line)
        cell.source = "\n".join(kept)
        for output in cell.get("outputs", []):
            if output.output_type == "error":
                output.traceback = [f"\x1b[0;31m{output.ename}\x1b[0m: {_ANSI.sub('', output.evalue)}"]
        return cell, resources
