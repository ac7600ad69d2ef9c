"""``segutils grade``: a whole assignment, from submissions to gradebook, feedback, CSV and report.

Steps (:func:`grade_assignment`):

1. open the gradebook (created when missing) and make sure the assignment is in it (running
   nbgrader's ``generate_assignment`` when it is not);
2. import the submissions into ``submitted/`` (:mod:`segutils.grading.importer`);
3. skip every student whose submission is unchanged since their last grading (:mod:`segutils.grading.state`);
4. grade the others in parallel (:class:`~segutils.grading.pool.LocalPool` or
   :class:`~segutils.grading.cluster.DaskPool`), storing each student's autograded notebook,
   feedback and state as soon as they are done, with a progress bar;
5. export ``grades.csv`` with nbgrader's CSV exporter and write ``reports/<assignment>/report.html``.
"""

from __future__ import annotations

import datetime
import os
import sys
import threading
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from segutils.grading import state
from segutils.grading.runner import (
    MAX_CELLS,
    MAX_DEPTH,
    GradingJob,
    GradingOptions,
    GradingResult,
    load_course_config,
    resolve_two_process,
)

SQLITE_BUSY_TIMEOUT = 120


class GradingError(RuntimeError):
    """The batch cannot start (bad arguments, no assignment, no sandbox...)."""


@dataclass
class BatchOptions:
    """The options of ``segutils grade`` (see :func:`segutils.grading.cli.add_grade_parser`)."""

    assignment: str
    course: Path = Path(".")
    submissions: Path | None = None
    workers: int = 1
    db_url: str | None = None
    scheduler: str | None = None
    sandbox: bool = True
    timeout: float | None = None
    redact_hidden: bool = False
    force: bool = False
    students: list[str] = field(default_factory=list)
    gpus: int | None = None
    limits: dict = field(default_factory=dict)
    progress: bool = True
    max_cells: int = MAX_CELLS
    max_depth: int = MAX_DEPTH
    #: Tests in a grader process of their own; None: the course config's choice, else the default.
    two_process: bool | None = None


@dataclass
class BatchSummary:
    """What a batch did."""

    graded: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)
    failed: list[str] = field(default_factory=list)
    rejected: list[str] = field(default_factory=list)
    interrupted: bool = False
    report: Path | None = None
    csv: Path | None = None
    problems: list[str] = field(default_factory=list)
    seconds: float = 0.0


def default_db_url(course: Path, cfg: Any) -> str:
    """The course's gradebook URL: its config's ``CourseDirectory.db_url``, else ``<course>/gradebook.db``."""
    url = cfg.CourseDirectory.get("db_url") if "CourseDirectory" in cfg else None
    if isinstance(url, str) and url:
        if url.startswith("sqlite:///") and not url.startswith("sqlite:////"):
            path = Path(url[len("sqlite:///") :].split("?")[0])
            if not path.is_absolute():
                return f"sqlite:///{(course / path).resolve()}"
        return url
    return f"sqlite:///{(course / 'gradebook.db').resolve()}"


def with_busy_timeout(db_url: str) -> str:
    """A SQLite URL waits up to :data:`SQLITE_BUSY_TIMEOUT` s for a lock (several writers at once)."""
    if db_url.startswith("sqlite") and "timeout=" not in db_url:
        return db_url + ("&" if "?" in db_url else "?") + f"timeout={SQLITE_BUSY_TIMEOUT}"
    return db_url


def _ensure_path() -> None:
    # nbgrader shells out to alembic when it creates a gradebook: this interpreter's bin/ first.
    bin_dir = str(Path(sys.executable).parent)
    if os.environ.get("PATH", "").split(os.pathsep)[0] != bin_dir:
        os.environ["PATH"] = os.pathsep.join([bin_dir, os.environ.get("PATH", "")])


def _ensure_course_row(db_url: str, course_id: str) -> None:
    """Give an empty ``course_id`` (nbgrader's default) its row in the ``course`` table.

    nbgrader never creates the row for ``""``; SQLite does not enforce foreign keys, so it works
    there, but PostgreSQL refuses every assignment of that course without it.
    """
    from nbgrader.api import Course, Gradebook

    if course_id or db_url.startswith("sqlite"):
        return
    with Gradebook(db_url) as gb:
        if gb.db.query(Course).filter(Course.id == course_id).one_or_none() is None:
            gb.db.add(Course(id=course_id))
            gb.db.commit()


def _ensure_assignment(course: Path, cfg: Any, db_url: str, assignment: str, layout: Any) -> None:
    from nbgrader.api import Gradebook, MissingEntry
    from nbgrader.converters import GenerateAssignment
    from nbgrader.coursedir import CourseDirectory

    _ensure_course_row(db_url, layout.course_id)
    release = course / layout.release_directory / assignment
    with Gradebook(db_url, layout.course_id) as gb:
        try:
            known = bool(gb.find_assignment(assignment).notebooks)
        except MissingEntry:
            known = False
    if known and release.is_dir():
        return
    source = course / layout.source_directory / assignment
    if not source.is_dir():
        raise GradingError(f"assignment {assignment!r} is neither in the gradebook nor in {source}")
    cfg = cfg.copy()
    cfg.CourseDirectory.root = str(course)
    cfg.CourseDirectory.db_url = db_url
    coursedir = CourseDirectory(config=cfg)
    coursedir.assignment_id = assignment
    converter = GenerateAssignment(coursedir=coursedir, config=cfg)
    converter.force = True
    converter.start()


def _note_meta(options: BatchOptions, gpus: list, cuda_seen: bool) -> list[str]:
    sandbox = "bubblewrap" if options.sandbox else "OFF (--no-sandbox): student code ran with the grader rights"
    notes = [
        f"sandbox: {sandbox}",
        "tests: in a grader process of their own (two-process grading)"
        if options.two_process
        else "tests: in the student's kernel, watched by the guard (in-process grading)",
    ]
    if not gpus and not cuda_seen:
        notes.append(
            "no GPU: the tests ran on the CPU only; the CUDA parts of the hidden tests "
            "(segutils.testing.devices()) were skipped"
        )
    elif gpus:
        notes.append(f"GPUs: {len(gpus)} ({', '.join(g.uuid for g in gpus)})")
    return notes


def _progress(total: int, enabled: bool):
    from tqdm.auto import tqdm

    return tqdm(total=total, desc="grading", unit="student", disable=not enabled, dynamic_ncols=True)


def grade_assignment(options: BatchOptions) -> BatchSummary:
    """Run the whole batch (see the module docstring)."""
    import time

    from nbgrader.coursedir import CourseDirectory

    from segutils.grading import importer, sandbox

    started = time.monotonic()
    course = Path(options.course).resolve()
    if not course.is_dir():
        raise GradingError(f"course directory {course} does not exist")
    if not importer.valid_student_id(options.assignment):
        raise GradingError(f"{options.assignment!r} is not a valid assignment id")
    if options.workers < 1:
        raise GradingError(f"--workers must be at least 1, got {options.workers}")
    _ensure_path()
    config_file = course / "nbgrader_config.py"
    cfg = load_course_config(config_file)
    try:
        two_process = resolve_two_process(cfg, options.two_process)
    except ValueError as error:
        raise GradingError(str(error)) from None
    if two_process != options.two_process:
        options = replace(options, two_process=two_process)  # the jobs and their fingerprint say which mode ran
    cfg.CourseDirectory.root = str(course)
    layout = CourseDirectory(config=cfg)
    db_url = with_busy_timeout(options.db_url or default_db_url(course, cfg))
    if options.sandbox:
        try:
            sandbox.check_sandbox()
        except sandbox.SandboxUnavailable as error:
            raise GradingError(str(error)) from None
    gpus = sandbox.discover_gpus()
    if options.gpus is not None:
        if options.gpus > len(gpus) and not options.scheduler:
            raise GradingError(f"--gpus {options.gpus}: this machine has {len(gpus)} NVIDIA GPUs")
        gpus = gpus[: options.gpus]

    pool: Any
    if options.scheduler:
        from segutils.grading.cluster import ClusterConfigError, DaskPool

        try:
            pool = DaskPool(options.scheduler, db_url, gpus=options.gpus or 0)
        except ClusterConfigError as error:
            raise GradingError(str(error)) from None
    else:
        from segutils.grading.pool import LocalPool

        limits = sandbox.Limits.from_dict({**sandbox.Limits().to_dict(), **options.limits})
        if options.timeout:
            limits = sandbox.Limits.from_dict({**limits.to_dict(), "cell_timeout": float(options.timeout)})
        # Created before the submissions are read: its job servers import nbgrader meanwhile.
        pool = LocalPool(options.workers, gpus, job_timeout=limits.notebook_timeout * 1.5 + 600)

    try:
        return _grade_with(
            pool, options, course=course, cfg=cfg, layout=layout, db_url=db_url, gpus=gpus, started=started
        )
    finally:
        pool.close()


def _grade_with(
    pool: Any, options: BatchOptions, *, course: Path, cfg: Any, layout: Any, db_url: str, gpus: list, started: float
) -> BatchSummary:
    """Steps 1-5 of the module docstring, with ``pool`` ready."""
    import time

    from nbgrader.api import Gradebook, MissingEntry

    from segutils.grading import importer
    from segutils.grading.report import prepare_report, write_report

    config_file = course / "nbgrader_config.py"
    _ensure_assignment(course, cfg, db_url, options.assignment, layout)
    release_dir = course / layout.release_directory / options.assignment
    release_notebooks = {p.name: p.read_bytes() for p in sorted(release_dir.glob("*.ipynb"))}
    if not release_notebooks:
        raise GradingError(f"no release notebooks in {release_dir}")
    source_dir = course / layout.source_directory / options.assignment
    source_files = (
        {
            p.relative_to(source_dir).as_posix(): p.read_bytes()
            for p in sorted(source_dir.rglob("*"))
            if p.is_file()
            and p.suffix != ".ipynb"
            and not any(part in (".ipynb_checkpoints", "__pycache__") for part in p.parts)
        }
        if source_dir.is_dir()
        else {}
    )

    submitted = course / layout.submitted_directory
    source = Path(options.submissions).resolve() if options.submissions else submitted
    if not source.is_dir():
        raise GradingError(f"no submissions folder {source}")
    imported = importer.import_submissions(source, submitted, options.assignment, sorted(release_notebooks))
    students = imported.students
    if options.students:
        unknown = sorted(set(options.students) - set(students))
        if unknown:
            raise GradingError(f"--student {', '.join(unknown)}: no submission of {options.assignment} in {submitted}")
        students = [s for s in students if s in options.students]

    grading_options = GradingOptions(
        sandbox=options.sandbox,
        limits=dict(options.limits),
        timeout=options.timeout,
        redact_hidden=options.redact_hidden,
        gpu=None,
        max_cells=options.max_cells,
        max_depth=options.max_depth,
        two_process=options.two_process,
    )
    course_modules = _course_modules(course)
    fingerprint = state.assignment_fingerprint(db_url, options.assignment)
    config_text = config_file.read_text(encoding="utf-8") if config_file.is_file() else ""
    summary = BatchSummary(problems=list(imported.problems))
    jobs: list[GradingJob] = []
    with Gradebook(db_url, layout.course_id) as gb:
        for student in students:
            folder = submitted / student / options.assignment
            files = {
                p.relative_to(folder).as_posix(): p.read_bytes()
                for p in sorted(folder.rglob("*"))
                if p.is_file() and not p.is_symlink()
            }
            rejected = imported.rejected.get(student, "")
            digest = state.submission_digest(
                {**files, **({"\0rejected": rejected.encode()} if rejected else {})},
                fingerprint,
                grading_options.fingerprint(),
            )
            previous = state.load_state(course, options.assignment, student)
            if not options.force and previous and previous.get("digest") == digest:
                try:
                    gb.find_submission(options.assignment, student)
                    present = (course / layout.autograded_directory / student / options.assignment).is_dir()
                except MissingEntry:
                    present = False
                if present:
                    summary.skipped.append(student)
                    continue
            jobs.append(
                GradingJob(
                    assignment=options.assignment,
                    student=student,
                    db_url=db_url,
                    config_text=config_text,
                    release_notebooks=release_notebooks,
                    source_files=source_files,
                    submission=files,
                    digest=digest,
                    options=grading_options,
                    notes=list(imported.notes.get(student, [])),
                    rejected=rejected,
                    course_modules=course_modules,
                )
            )

    bar = _progress(len(jobs), options.progress)
    counts = {"done": 0, "failed": 0}
    cuda_seen = False
    workers = getattr(pool, "workers", 1)

    def on_result(result: GradingResult) -> None:
        nonlocal cuda_seen
        _store(course, layout, options.assignment, result)
        cuda_seen = cuda_seen or result.cuda_devices > 0
        {"failed": summary.failed, "rejected": summary.rejected}.get(result.status, summary.graded).append(
            result.student
        )
        counts["failed" if result.status == "failed" else "done"] += 1
        bar.update(1)
        remaining = len(jobs) - sum(counts.values())
        bar.set_postfix(done=counts["done"], failed=counts["failed"], remaining=remaining)
        if remaining == workers - 1:  # from now on a slot is idle: the report's imports can use it
            threading.Thread(target=prepare_report, name="prepare-report", daemon=True).start()

    try:
        if jobs:
            pool.run(jobs, on_result)
    except KeyboardInterrupt:
        summary.interrupted = True
    finally:
        bar.close()
        pool.close()  # idempotent; the workers' processes end while the report is written

    summary.csv = _export_csv(course, db_url, layout)
    results = [s for s in (state.load_state(course, options.assignment, st) for st in imported.students) if s]
    if results:
        meta = {
            "when": f"Generated {datetime.datetime.now().isoformat(timespec='seconds')}.",
            "notes": _note_meta(options, gpus, cuda_seen or any(r.get("cuda_devices") for r in results))
            + [f"import: {p}" for p in summary.problems],
        }
        summary.report = write_report(
            state.report_dir(course, options.assignment) / "report.html", options.assignment, results, meta
        )
    summary.seconds = time.monotonic() - started
    return summary


def _course_modules(course: Path, limit: int = 1 << 20) -> dict[str, bytes]:
    """The Python files at the top of the course directory besides its config (a late-penalty plugin
    ``late.py`` that the config names as ``'late.SubMarks'``), for jobs that run elsewhere."""
    return {
        p.name: p.read_bytes()
        for p in sorted(course.glob("*.py"))
        if p.name != "nbgrader_config.py" and p.is_file() and p.stat().st_size <= limit
    }


def _store(course: Path, layout: Any, assignment: str, result: GradingResult) -> None:
    """Put a student's files in place, then their state (last: it marks the student as done)."""
    if result.autograded:
        state.replace_folder(course / layout.autograded_directory / result.student / assignment, result.autograded)
    if result.feedback:
        state.replace_folder(course / layout.feedback_directory / result.student / assignment, result.feedback)
    data = result.summary()
    data["graded_at"] = datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")
    if result.status == "failed":
        data["digest"] = ""  # never skipped: the next run tries again
    state.save_state(course, assignment, result.student, data)


def _export_csv(course: Path, db_url: str, layout: Any) -> Path:
    from nbgrader.api import Gradebook
    from nbgrader.plugins.export import CsvExportPlugin

    path = course / "grades.csv"
    plugin = CsvExportPlugin()
    plugin.to = str(path)
    with Gradebook(db_url, layout.course_id) as gb:
        plugin.export(gb)
    return path
