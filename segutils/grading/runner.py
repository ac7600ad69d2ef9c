"""One student's grading job: nbgrader ``Autograde`` + ``GenerateFeedback`` in a private course copy.

A :class:`GradingJob` carries everything the job needs as bytes (the course's
``nbgrader_config.py``, the release notebooks, the source folder's other files, the student's
submitted files) plus the gradebook URL, so the same job runs in a local worker process or on a
Dask worker on another machine. :func:`grade` builds a throw-away course directory from it, runs
nbgrader's own converters there against the shared gradebook, and returns a
:class:`GradingResult` with the scores (read back from the gradebook), the autograded files and
the feedback files; the caller stores those in the real course directory.

Submissions nbgrader cannot read (an empty file, not JSON, not a notebook, the wrong assignment,
missing) are replaced, in the private copy only, by the release notebook marked as rejected: they
still go through nbgrader, every test cell scores 0 with the reason as its message, and the student
gets feedback saying why.

The local pool runs it as ``segutils.grading.runner JOB.pickle RESULT.pickle`` through
:func:`segutils.grading.sandbox.bootstrap_command` (``python -m segutils.grading.runner`` works too).
"""

from __future__ import annotations

import contextlib
import itertools
import json
import logging
import os
import pickle
import re
import shutil
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any

MAX_NOTEBOOK_BYTES = 64 << 20
#: Default caps on a submitted notebook (``--max-cells``, ``--max-depth``): the course's notebooks have
#: about 60 cells and a JSON nesting depth under 10 (20 with JSON outputs).
MAX_CELLS = 2000
MAX_DEPTH = 100
#: Whether ``segutils grade`` runs the tests in a grader process of their own when neither the command
#: line (``--two-process`` / ``--in-process``) nor the course (``c.SandboxedExecute.two_process``) says.
TWO_PROCESS_DEFAULT = True


def resolve_two_process(cfg: Any, chosen: bool | None) -> bool:
    """Two-process grading or not: ``chosen`` (the command line's) if given, else the course config's
    ``SandboxedExecute.two_process``, else :data:`TWO_PROCESS_DEFAULT`.

    Raises:
        ValueError: the course config sets ``SandboxedExecute.two_process`` to something other than a bool.
    """
    if chosen is not None:
        return bool(chosen)
    section = cfg.get("SandboxedExecute") if hasattr(cfg, "get") else None
    value = section.get("two_process") if hasattr(section, "get") else None
    if value is None:
        return TWO_PROCESS_DEFAULT
    if not isinstance(value, bool):
        raise ValueError(f"c.SandboxedExecute.two_process in the course config must be True or False, got {value!r}")
    return value


@dataclass
class GradingOptions:
    """How to grade (the same for every student of a batch)."""

    sandbox: bool = True
    limits: dict = field(default_factory=dict)
    timeout: float | None = None
    redact_hidden: bool = False
    gpu: Any = None  # None (CPU only), a GpuDevice dict, or "inherit" (the worker's CUDA_VISIBLE_DEVICES)
    stderr_fails: bool = False
    max_cells: int = MAX_CELLS
    max_depth: int = MAX_DEPTH
    #: Tests in a grader process of their own (segutils.grading.remote); None: the course config's choice.
    two_process: bool | None = None

    def fingerprint(self) -> dict:
        gpu = "gpu" if self.gpu else "cpu"
        return {
            "sandbox": self.sandbox,
            "limits": dict(sorted(self.limits.items())),
            "timeout": self.timeout,
            "redact_hidden": self.redact_hidden,
            "gpu": gpu,
            "stderr_fails": self.stderr_fails,
            "max_cells": self.max_cells,
            "max_depth": self.max_depth,
            **({"two_process": True} if self.two_process else {}),
        }


@dataclass
class GradingJob:
    """Everything one student's grading needs; picklable, no paths of the instructor's machine."""

    assignment: str
    student: str
    db_url: str
    config_text: str
    release_notebooks: dict[str, bytes]
    source_files: dict[str, bytes]
    submission: dict[str, bytes]
    digest: str
    options: GradingOptions = field(default_factory=GradingOptions)
    notes: list[str] = field(default_factory=list)
    #: Why the submission was refused when it was imported (an archive that cannot be unpacked); "" if not.
    rejected: str = ""
    #: The course's own Python modules (``late.py`` of a late-penalty plugin ``'late.SubMarks'``), by file name.
    course_modules: dict[str, bytes] = field(default_factory=dict)


@dataclass
class GradingResult:
    """What grading one student produced."""

    student: str
    status: str  # "graded", "rejected" or "failed"
    message: str
    score: float
    max_score: float
    cells: dict[str, dict]
    notes: list[str]
    seconds: float
    exec_seconds: float
    cuda_devices: int
    digest: str
    autograded: dict[str, bytes] = field(default_factory=dict)
    #: Two-process grading: the grader process was forked by the slot's warm grader (not started afresh).
    warm_grader: bool = False
    feedback: dict[str, bytes] = field(default_factory=dict)

    def summary(self) -> dict:
        """The result without the files (what the state file and the report keep)."""
        return {k: v for k, v in self.__dict__.items() if k not in ("autograded", "feedback")}


def safe_relpath(name: str) -> PurePosixPath:
    """``name`` as a relative path that stays inside its folder, or ``ValueError``."""
    path = PurePosixPath(name.replace("\\", "/"))
    if not name or path.is_absolute() or any(part in ("", "..") for part in path.parts) or ":" in path.parts[0]:
        raise ValueError(f"unsafe path {name!r}")
    return path


def _write_tree(root: Path, files: dict[str, bytes]) -> None:
    for name, data in files.items():
        target = root / safe_relpath(name)
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(data)


def _read_tree(root: Path) -> dict[str, bytes]:
    if not root.is_dir():
        return {}
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def load_course_config(config_file: Path):
    """The traitlets ``Config`` of a course's ``nbgrader_config.py`` (an empty one if there is none)."""
    from traitlets.config import Config
    from traitlets.config.loader import PyFileConfigLoader

    if not config_file.is_file():
        return Config()
    return PyFileConfigLoader(config_file.name, path=str(config_file.parent)).load_config()


def nbgrader_config(
    config_file: Path, *, root: Path, db_url: str, options: GradingOptions, cell_order: dict, release_sources: dict
):
    """The course's nbgrader config with the grading preprocessors swapped in."""
    from nbconvert.preprocessors import CSSHTMLHeaderPreprocessor
    from nbgrader.converters import Autograde
    from nbgrader.preprocessors import (
        CheckCellMetadata,
        ClearOutput,
        DeduplicateIds,
        Execute,
        GetGrades,
        OverwriteCells,
        OverwriteKernelspec,
    )

    from segutils.grading.preprocessors import (
        CheckCellMetadataOnce,
        RedactHiddenTests,
        RestoreStructure,
        SandboxedExecute,
    )
    from segutils.grading.sanitize import configure_feedback

    cfg = load_course_config(config_file)
    cfg.CourseDirectory.root = str(root)
    cfg.CourseDirectory.db_url = db_url
    sanitize = list(cfg.Autograde.get("sanitize_preprocessors", [])) or [
        ClearOutput,
        DeduplicateIds,
        OverwriteKernelspec,
        OverwriteCells,
        CheckCellMetadata,
    ]
    if RestoreStructure not in sanitize:
        at = sanitize.index(OverwriteCells) if OverwriteCells in sanitize else len(sanitize)
        sanitize.insert(at, RestoreStructure)
    autograde = list(cfg.Autograde.get("autograde_preprocessors", [])) or list(
        Autograde.class_traits()["autograde_preprocessors"].default()
    )
    substitutes = {
        Execute: SandboxedExecute,
        "nbgrader.preprocessors.Execute": SandboxedExecute,
        CheckCellMetadata: CheckCellMetadataOnce,
        "nbgrader.preprocessors.CheckCellMetadata": CheckCellMetadataOnce,
    }
    cfg.Autograde.sanitize_preprocessors = [substitutes.get(pp, pp) for pp in sanitize]
    cfg.Autograde.autograde_preprocessors = [substitutes.get(pp, pp) for pp in autograde]
    cfg.OverwriteCells.add_missing_cells = False  # RestoreStructure does it, robustly
    cfg.RestoreStructure.cell_order = cell_order
    cfg.RestoreStructure.release_sources = release_sources
    cfg.SandboxedExecute.sandbox = options.sandbox
    cfg.SandboxedExecute.limits = dict(options.limits)
    cfg.SandboxedExecute.stderr_fails = options.stderr_fails
    cfg.SandboxedExecute.gpu = options.gpu if isinstance(options.gpu, dict) else None
    if options.timeout:
        cfg.SandboxedExecute.timeout = int(options.timeout)
    cfg.GenerateFeedback.preprocessors = [GetGrades, RedactHiddenTests, CSSHTMLHeaderPreprocessor]
    cfg.RedactHiddenTests.enabled = options.redact_hidden
    if options.two_process is not None:  # else the course's own setting (c.SandboxedExecute.two_process) holds
        cfg.SandboxedExecute.two_process = bool(options.two_process)
    configure_feedback(cfg)  # the student's Markdown and outputs must not run in the reader's browser
    return cfg


def _resolve_gpu(options: GradingOptions) -> GradingOptions:
    if options.gpu != "inherit":
        return options
    from segutils.grading.sandbox import discover_gpus

    visible = os.environ.get("CUDA_VISIBLE_DEVICES", "").split(",")[0].strip()
    gpus = discover_gpus()
    chosen = None
    for index, gpu in enumerate(gpus):
        if visible and (visible == gpu.uuid or visible == str(index)):
            chosen = gpu
    if chosen is None and gpus and not visible:
        chosen = gpus[0]
    return GradingOptions(**{**options.__dict__, "gpu": chosen.__dict__ if chosen else None})


# -- checking what was submitted ------------------------------------------------------------------
def _graded_ids(nb: Any) -> set[str]:
    ids = set()
    for cell in nb.get("cells", []):
        meta = cell.get("metadata", {}).get("nbgrader", {})
        if isinstance(meta, dict) and (meta.get("grade") or meta.get("solution")) and meta.get("grade_id"):
            ids.add(str(meta["grade_id"]))
    return ids


_JSON_STRING = re.compile(rb'"(?:[^"\\]|\\.)*"', re.S)
_NOT_BRACKET = re.compile(rb"[^\[\]{}]+")


def json_depth(data: bytes) -> int:
    """How deeply the arrays and objects of the JSON text ``data`` nest (without parsing it: a
    recursive parser fails on deep nesting before it could say how deep)."""
    brackets = _NOT_BRACKET.sub(b"", _JSON_STRING.sub(b"", data))
    steps = brackets.translate(bytes.maketrans(b"[{]}", b"\x01\x01\xff\xff"))
    return max(itertools.accumulate((1 if b == 1 else -1 for b in steps), initial=0))


def check_submission(
    folder: Path, name: str, release: bytes, assignment: str, *, max_cells: int = MAX_CELLS, max_depth: int = MAX_DEPTH
) -> tuple[str | None, list[str]]:
    """Why ``folder/name`` cannot be graded (``None`` if it can), and notes about it.

    Besides what nbgrader cannot read, a notebook with more than ``max_cells`` cells or whose JSON
    nests deeper than ``max_depth`` is refused (before it is parsed or validated).
    """
    import nbformat

    path = folder / name
    notes: list[str] = []
    if not path.is_file():
        found = sorted(p.name for p in folder.glob("*.ipynb")) if folder.is_dir() else []
        extra = f" (found: {', '.join(found)})" if found else ""
        return f"the submission has no notebook named {name}{extra}", notes
    size = path.stat().st_size
    if size == 0:
        return f"{name} is an empty file", notes
    if size > MAX_NOTEBOOK_BYTES:
        return f"{name} is {size} bytes, more than the {MAX_NOTEBOOK_BYTES} a notebook may have", notes
    raw = path.read_bytes()
    depth = json_depth(raw)
    if depth > max_depth:
        return (
            f"{name} nests its JSON {depth} levels deep, more than the {max_depth} a notebook may have (--max-depth)"
        ), notes
    try:
        data = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, ValueError, RecursionError) as error:
        return f"{name} is not a notebook: it is not valid JSON ({str(error)[:120]})", notes
    cells = data.get("cells") if isinstance(data, dict) else None
    if isinstance(cells, list) and len(cells) > max_cells:
        return f"{name} has {len(cells)} cells, more than the {max_cells} a notebook may have (--max-cells)", notes
    try:
        nb = nbformat.reads(json.dumps(data), as_version=4)
        nbformat.validate(nb)
    except Exception as error:  # noqa: BLE001 - nbformat raises several kinds
        return f"{name} is not a valid Jupyter notebook ({(str(error).splitlines() or [''])[0][:200]})", notes
    expected = _graded_ids(json.loads(release))
    got = _graded_ids(nb)
    if expected and got and not (expected & got):
        return (
            f"{name} belongs to another assignment: none of its graded cells "
            f"({', '.join(sorted(got)[:5])}) is a cell of {assignment}"
        ), notes
    if expected and not got:
        notes.append(f"{name} has no nbgrader cells left; every graded cell is restored from the gradebook")
    kernel = nb.metadata.get("kernelspec", {})
    release_kernel = json.loads(release).get("metadata", {}).get("kernelspec", {})
    if isinstance(kernel, dict) and kernel.get("name") and kernel.get("name") != release_kernel.get("name"):
        notes.append(
            f"{name} asked for the kernel {kernel.get('name')!r}; graded with "
            f"{release_kernel.get('name', 'python3')!r}, the assignment's kernel"
        )
    return None, notes


def rejected_substitute(release: bytes, reason: str) -> bytes:
    """The release notebook, marked as standing in for a submission that could not be graded."""
    import nbformat

    from segutils.grading.preprocessors import REJECTED_KEY

    nb = nbformat.reads(release.decode("utf-8"), as_version=4)
    nb.metadata[REJECTED_KEY] = {"rejected": reason}
    nb.cells.insert(
        0, nbformat.v4.new_markdown_cell(f"**This submission could not be graded:** {reason}. Every test scores 0.")
    )
    return nbformat.writes(nb).encode("utf-8")


# -- running nbgrader --------------------------------------------------------------------------
class _LogCapture(logging.Handler):
    """Keeps nbgrader's log messages, formatted when they are logged.

    nbgrader logs gradebook rows lazily (``log.warning("%s is %s seconds late", submission, ...)``):
    formatted later, after its gradebook session has closed, their ``repr`` raises SQLAlchemy's
    ``DetachedInstanceError``. A message that cannot be formatted is kept as its template.
    """

    def __init__(self) -> None:
        super().__init__(logging.INFO)
        self.records: list[tuple[int, str]] = []
        self._last: logging.LogRecord | None = None

    def emit(self, record: logging.LogRecord) -> None:
        if record is self._last:  # the same record again, propagated to another watched logger
            return
        self._last = record
        try:
            message = record.getMessage()
        except Exception as error:  # noqa: BLE001 - a log message must never fail the job
            message = f"{record.msg} (arguments not shown: {type(error).__name__})"
        self.records.append((record.levelno, message))

    def messages(self, level: int) -> list[str]:
        return [message for levelno, message in self.records if levelno >= level]


@contextlib.contextmanager
def _captured_logs() -> Iterator[_LogCapture]:
    from traitlets.log import get_logger

    capture = _LogCapture()
    loggers = {get_logger(), logging.getLogger("traitlets"), logging.getLogger()}
    for logger in loggers:
        logger.addHandler(capture)
    try:
        yield capture
    finally:
        for logger in loggers:
            logger.removeHandler(capture)


def _submitted_grades(gb, assignment: str, student: str, notebooks: list[str]):
    """``(notebook, grade)`` for every graded cell of ``student``'s submitted ``notebooks`` in ``gb``."""
    from nbgrader.api import MissingEntry

    for notebook in notebooks:
        try:
            submitted = gb.find_submission_notebook(notebook, assignment, student)
        except MissingEntry:
            continue
        for grade in submitted.grades:
            yield notebook, grade


def _scores(db_url: str, assignment: str, student: str, notebooks: list[str]) -> tuple[float, float, dict]:
    from nbgrader.api import Gradebook

    cells: dict[str, dict] = {}
    total = maximum = 0.0
    with Gradebook(db_url) as gb:
        for notebook, grade in _submitted_grades(gb, assignment, student, notebooks):
            score = float(grade.score or 0.0)
            cells[grade.name] = {
                "notebook": notebook,
                "score": score,
                "max_score": float(grade.max_score),
                "auto": grade.auto_score is not None,
            }
            total += score
            maximum += float(grade.max_score)
    return total, maximum, cells


def lateness_note(db_url: str, assignment: str, student: str, notebooks: list[str]) -> str | None:
    """``"submitted 2 h 5 min after the due date; late penalty: 3 points"`` (``None`` when on time)."""
    from nbgrader.api import Gradebook, MissingEntry

    with Gradebook(db_url) as gb:
        try:
            submission = gb.find_submission(assignment, student)
        except MissingEntry:
            return None
        seconds = float(submission.total_seconds_late or 0.0)
        if seconds <= 0:
            return None
        penalty = 0.0
        for notebook in notebooks:
            try:
                penalty += float(
                    gb.find_submission_notebook(notebook, assignment, student).late_submission_penalty or 0
                )
            except MissingEntry:
                continue
    minutes = int(seconds // 60)
    late = f"{minutes // 60} h {minutes % 60} min" if minutes else f"{seconds:.0f} s"
    return f"submitted {late} after the due date; late penalty: {penalty:g} points"


def zero_grades(db_url: str, assignment: str, student: str, notebooks: list[str]) -> None:
    """Give every graded cell of ``student`` 0 points and flag it for manual grading (a failed job)."""
    from nbgrader.api import Gradebook

    with Gradebook(db_url) as gb:
        gb.update_or_create_student(student)
        gb.update_or_create_submission(assignment, student)
        for _, grade in _submitted_grades(gb, assignment, student, notebooks):
            grade.auto_score = 0
            grade.needs_manual_grade = True
        gb.db.commit()


@contextlib.contextmanager
def _importable(course: Path, modules: dict[str, bytes]) -> Iterator[None]:
    """The course's own modules importable by name while nbgrader runs (as from the course directory,
    where ``nbgrader autograde`` runs): a late-penalty plugin configured as ``'late.SubMarks'``."""
    names = [Path(n).stem for n in modules]
    sys.path.insert(0, str(course))
    try:
        yield
    finally:
        with contextlib.suppress(ValueError):
            sys.path.remove(str(course))
        for name in names:
            sys.modules.pop(name, None)


def grade(job: GradingJob) -> GradingResult:
    """Grade one student (see the module docstring)."""
    from nbgrader.converters import Autograde, GenerateFeedback
    from nbgrader.coursedir import CourseDirectory

    from segutils.grading import preprocessors

    started = time.monotonic()
    options = _resolve_gpu(job.options)
    os.environ["PATH"] = os.pathsep.join([str(Path(sys.executable).parent), os.environ.get("PATH", "")])
    staging = Path(tempfile.mkdtemp(prefix=f"segutils-grade-{job.student}-"))
    notebooks = [Path(n).stem for n in sorted(job.release_notebooks)]
    notes = list(job.notes)
    try:
        course = staging / "course"
        course.mkdir()
        config_file = course / "nbgrader_config.py"
        config_file.write_text(job.config_text, encoding="utf-8")
        for module_name, data in job.course_modules.items():
            if re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*\.py", module_name) and module_name != "nbgrader_config.py":
                (course / module_name).write_bytes(data)
        layout = CourseDirectory(config=load_course_config(config_file))
        _write_tree(course / layout.source_directory / job.assignment, job.source_files)
        _write_tree(course / layout.release_directory / job.assignment, job.release_notebooks)
        submitted = course / layout.submitted_directory / job.student / job.assignment
        submitted.mkdir(parents=True)
        _write_tree(submitted, job.submission)
        rejections = []
        for name, release in sorted(job.release_notebooks.items()):
            if job.rejected:
                reason, more = job.rejected, []
            else:
                reason, more = check_submission(
                    submitted, name, release, job.assignment, max_cells=options.max_cells, max_depth=options.max_depth
                )
            notes += more
            if reason:
                rejections.append(reason)
                (submitted / name).write_bytes(rejected_substitute(release, reason))
        releases = {Path(n).stem: json.loads(data) for n, data in job.release_notebooks.items()}
        cell_order = {
            nb: [
                c["metadata"]["nbgrader"]["grade_id"]
                for c in data["cells"]
                if isinstance(c.get("metadata", {}).get("nbgrader"), dict) and c["metadata"]["nbgrader"].get("grade_id")
            ]
            for nb, data in releases.items()
        }
        release_sources = {
            nb: {
                c["metadata"]["nbgrader"]["grade_id"]: "".join(c["source"])
                if isinstance(c["source"], list)
                else c["source"]
                for c in data["cells"]
                if isinstance(c.get("metadata", {}).get("nbgrader"), dict) and c["metadata"]["nbgrader"].get("grade_id")
            }
            for nb, data in releases.items()
        }
        cfg = nbgrader_config(
            config_file,
            root=course,
            db_url=job.db_url,
            options=options,
            cell_order=cell_order,
            release_sources=release_sources,
        )
        preprocessors.DETAILS.clear()
        status, message = ("rejected", "; ".join(dict.fromkeys(rejections))) if rejections else ("graded", "")
        with _captured_logs() as logs, _importable(course, job.course_modules):
            try:
                for converter_class in (Autograde, GenerateFeedback):
                    coursedir = CourseDirectory(config=cfg)
                    coursedir.assignment_id = job.assignment
                    coursedir.student_id = job.student
                    converter = converter_class(coursedir=coursedir, config=cfg)
                    converter.force = True
                    converter.start()
            except Exception as error:  # noqa: BLE001 - any failure is reported, never fatal to the batch
                errors = [m for m in logs.messages(logging.ERROR) if "Traceback" not in m][-3:]
                status, message = "failed", "; ".join(errors) or f"{type(error).__name__}: {error}"
                zero_grades(job.db_url, job.assignment, job.student, notebooks)
            duplicates = [m for m in logs.messages(logging.WARNING) if "exists multiple times" in m]
        notes += [
            f"{m.replace('Cell with id', 'the cell')}: the last copy was graded, the others ran as ordinary cells"
            for m in duplicates
        ][:20]
        score, max_score, cells = _scores(job.db_url, job.assignment, job.student, notebooks)
        late = lateness_note(job.db_url, job.assignment, job.student, notebooks)
        if late:
            notes.append(late)
        exec_seconds, cuda, warm_grader = 0.0, 0, False
        for notebook, info in preprocessors.DETAILS.items():
            warm_grader = warm_grader or bool(info.get("warm_grader"))
            notes += [f"{notebook}: {n}" if len(job.release_notebooks) > 1 else n for n in info["notes"]]
            exec_seconds += float(info.get("seconds", 0.0))
            cuda = max(cuda, int(info.get("cuda_devices", 0)))
            for gid, cell in info["cells"].items():
                cells.setdefault(gid, {}).update(cell)
        autograded = _read_tree(course / layout.autograded_directory / job.student / job.assignment)
        feedback = _read_tree(course / layout.feedback_directory / job.student / job.assignment)
        return GradingResult(
            student=job.student,
            status=status,
            message=message,
            score=score,
            max_score=max_score,
            cells=cells,
            notes=list(dict.fromkeys(notes)),
            seconds=round(time.monotonic() - started, 3),
            exec_seconds=round(exec_seconds, 3),
            cuda_devices=cuda,
            digest=job.digest,
            warm_grader=warm_grader,
            autograded=autograded,
            feedback=feedback,
        )
    finally:
        _rmtree(staging)


def _rmtree(path: Path) -> None:
    def unlock(func, target, _):  # nbgrader writes autograded files read-only
        os.chmod(target, 0o700)
        func(target)

    shutil.rmtree(path, onerror=unlock)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if len(argv) != 2:
        print("usage: python -m segutils.grading.runner JOB.pickle RESULT.pickle", file=sys.stderr)
        return 2
    # Run as __main__, this module's classes are not the ones the job was pickled with.
    from segutils.grading import runner

    job = pickle.loads(Path(argv[0]).read_bytes())
    if not isinstance(job, runner.GradingJob):
        print(f"{argv[0]} does not hold a GradingJob", file=sys.stderr)
        return 2
    result = runner.grade(job)
    tmp = Path(argv[1] + ".tmp")
    tmp.write_bytes(pickle.dumps(result))
    os.replace(tmp, argv[1])
    return 0


if __name__ == "__main__":
    sys.exit(main())
