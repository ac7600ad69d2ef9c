"""Submissions intake: nbgrader's ``submitted/`` layout from whatever the instructor has.

Two inputs are understood:

- nbgrader's layout, ``<dir>/<student>/<assignment>/...`` (used in place when ``<dir>`` is the
  course's ``submitted/``, copied there otherwise);
- a flat folder as a learning platform exports it: ``<student>.ipynb`` (single-notebook
  assignments; an optional ``<student>.timestamp.txt`` beside it) or ``<student>.zip``.

Zips are unpacked member by member, never with ``extractall``: members whose path is absolute or
climbs out of the folder (``../``), links, and members past the size and count limits are refused
and noted; a zip holding one folder is unpacked from inside that folder; a lone notebook with
another name is renamed to the assignment's. A ``timestamp.txt`` inside a zip is the student's
own file and is dropped with a note: the submission time is the collection's
(``<student>.timestamp.txt`` beside the zip, or nbgrader's layout), else the student could backdate
a late submission. A zip that cannot be stored as files (a member that is both a file and a
folder, a name longer than the file system allows) rejects that student only
(:attr:`ImportReport.rejected`, graded as rejected with the reason). Contents are not judged here
(an empty or non-JSON notebook is imported as is; the runner rejects it with a message and a
score of 0).
"""

from __future__ import annotations

import re
import shutil
import stat
import tempfile
import zipfile
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath

STUDENT_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.@+-]{0,127}$")
MAX_MEMBERS = 500
MAX_TOTAL_BYTES = 256 << 20
MAX_FILE_BYTES = 64 << 20
#: Longest file or folder name (bytes, UTF-8) and longest path inside a submission (bytes).
MAX_NAME_BYTES = 255
MAX_PATH_BYTES = 1024
_JUNK = ("__MACOSX/", ".ipynb_checkpoints/", ".DS_Store", "Thumbs.db")


class ArchiveRejected(ValueError):
    """A submitted archive that cannot be stored as files (the student's submission is rejected)."""


@dataclass
class ImportReport:
    """What an import found."""

    students: list[str] = field(default_factory=list)
    notes: dict[str, list[str]] = field(default_factory=dict)
    problems: list[str] = field(default_factory=list)
    #: Students whose submission could not be stored, with the reason (graded as rejected).
    rejected: dict[str, str] = field(default_factory=dict)

    def note(self, student: str, message: str) -> None:
        self.notes.setdefault(student, []).append(message)


def valid_student_id(student: str) -> bool:
    return bool(STUDENT_ID.match(student)) and student not in (".", "..")


def is_nbgrader_layout(source: Path, assignment: str) -> bool:
    """Whether ``source`` holds ``<student>/<assignment>/`` folders."""
    return any((d / assignment).is_dir() for d in source.iterdir() if d.is_dir())


def import_submissions(source: Path, submitted: Path, assignment: str, notebooks: list[str]) -> ImportReport:
    """Bring the submissions of ``assignment`` found in ``source`` into ``submitted/<student>/<assignment>/``.

    Args:
        source: a folder in either layout (see the module docstring).
        submitted: the course's ``submitted/`` folder.
        assignment: the assignment id.
        notebooks: file names of the assignment's notebooks (``["a1.ipynb"]``).

    Returns:
        The students now having a submission of ``assignment``, per-student notes, and the files
        that could not be attributed to anyone.
    """
    source, submitted = Path(source), Path(submitted)
    if not source.is_dir():
        raise FileNotFoundError(f"submissions folder {source} does not exist")
    if not notebooks:
        raise ValueError(f"assignment {assignment!r} has no notebooks")
    report = ImportReport()
    if is_nbgrader_layout(source, assignment):
        _import_layout(source, submitted, assignment, report)
    else:
        _import_flat(source, submitted, assignment, notebooks, report)
    if submitted.is_dir():
        report.students = sorted(
            d.name for d in submitted.iterdir() if (d / assignment).is_dir() and valid_student_id(d.name)
        )
    return report


def _import_layout(source: Path, submitted: Path, assignment: str, report: ImportReport) -> None:
    same = submitted.exists() and source.resolve() == submitted.resolve()
    for folder in sorted(d for d in source.iterdir() if d.is_dir()):
        if not (folder / assignment).is_dir():
            continue
        if not valid_student_id(folder.name):
            report.problems.append(f"{folder.name}/: not a valid student id; skipped")
            continue
        if same:
            continue
        files: dict[str, bytes] = {}
        for path in sorted((folder / assignment).rglob("*")):
            relative = path.relative_to(folder / assignment).as_posix()
            if path.is_symlink():
                report.note(folder.name, f"link {relative} ignored")
            elif path.is_file() and not any(j in relative for j in _JUNK):
                files[relative] = path.read_bytes()
        _store(submitted / folder.name / assignment, files, folder.name, report)


def _import_flat(source: Path, submitted: Path, assignment: str, notebooks: list[str], report: ImportReport) -> None:
    by_student: dict[str, dict[str, Path]] = {}
    for path in sorted(p for p in source.iterdir() if p.is_file()):
        name = path.name
        if name.endswith(".timestamp.txt"):
            student, kind = name[: -len(".timestamp.txt")], "timestamp"
        elif path.suffix.lower() in (".ipynb", ".zip"):
            student, kind = path.stem, path.suffix.lower()[1:]
        else:
            report.problems.append(f"{name}: neither <student>.ipynb nor <student>.zip; skipped")
            continue
        if not valid_student_id(student):
            report.problems.append(f"{name}: {student!r} is not a valid student id; skipped")
            continue
        by_student.setdefault(student, {})[kind] = path
    for student, found in sorted(by_student.items()):
        if "zip" in found:
            if "ipynb" in found:
                report.note(student, f"both {student}.zip and {student}.ipynb were submitted; the zip was graded")
            try:
                files = unpack_zip(found["zip"], assignment, notebooks, lambda m, s=student: report.note(s, m))
            except ArchiveRejected as error:
                report.rejected[student] = f"{found['zip'].name} cannot be unpacked: {error}"
                files = {}
        elif "ipynb" in found:
            if len(notebooks) != 1:
                report.note(
                    student,
                    f"{assignment} has {len(notebooks)} notebooks: a single .ipynb cannot be "
                    "matched to them (submit a zip)",
                )
                files = {}
            else:
                files = {notebooks[0]: found["ipynb"].read_bytes()}
        else:
            report.problems.append(f"{found['timestamp'].name}: no submission beside it; skipped")
            continue
        if "timestamp" in found:
            stamp = found["timestamp"].read_bytes()
            if _valid_timestamp(stamp, lambda m, s=student: report.note(s, m)):
                files["timestamp.txt"] = stamp
        _store(submitted / student / assignment, files, student, report)


def _store(folder: Path, files: dict[str, bytes], student: str, report: ImportReport) -> None:
    """:func:`_replace`, or, when the file system refuses the files, the student rejected (an empty folder)."""
    try:
        _replace(folder, files)
    except OSError as error:
        report.rejected[student] = f"the submitted files could not be stored ({error.strerror or error})"
        _replace(folder, {"timestamp.txt": files["timestamp.txt"]} if "timestamp.txt" in files else {})


def _valid_timestamp(data: bytes, note) -> bool:
    from nbgrader.utils import parse_utc

    try:
        parse_utc(data.decode("utf-8").strip())
        return True
    except (UnicodeDecodeError, ValueError, TypeError, OverflowError):
        note("timestamp.txt could not be parsed as a date and was dropped")
        return False


def _member_path(info: zipfile.ZipInfo) -> PurePosixPath:
    name = info.filename.replace("\\", "/")
    path = PurePosixPath(name)
    if name.startswith("/") or any(part == ".." for part in path.parts) or (path.parts and ":" in path.parts[0]):
        raise ValueError("its path leaves the submission folder")
    if stat.S_ISLNK(info.external_attr >> 16):
        raise ValueError("it is a link")
    return PurePosixPath(*[p for p in path.parts if p not in ("", ".")])


def _check_storable(files: dict[str, bytes]) -> None:
    """:class:`ArchiveRejected` unless every name fits the file system and none is both a file and a folder."""
    folders = {str(parent) for name in files for parent in PurePosixPath(name).parents if str(parent) != "."}
    for name in sorted(files):
        if "\0" in name:
            raise ArchiveRejected(f"member {name!r} has a NUL character in its name")
        if len(name.encode("utf-8", "surrogateescape")) > MAX_PATH_BYTES:
            raise ArchiveRejected(f"member {name[:60]!r}... has a path longer than {MAX_PATH_BYTES} bytes")
        for part in PurePosixPath(name).parts:
            if len(part.encode("utf-8", "surrogateescape")) > MAX_NAME_BYTES:
                raise ArchiveRejected(
                    f"member {name[:60]!r}... has a name longer than the {MAX_NAME_BYTES} bytes a file system allows"
                )
        if name in folders:
            raise ArchiveRejected(f"{name!r} is both a file and a folder in the archive")


def unpack_zip(path: Path, assignment: str, notebooks: list[str], note) -> dict[str, bytes]:
    """The files of a submitted zip, safely (see the module docstring); ``note`` gets every refusal.

    Raises:
        ArchiveRejected: the files cannot be stored (a file/folder clash, an over-long name).
    """
    try:
        archive = zipfile.ZipFile(path)
    except (zipfile.BadZipFile, OSError) as error:
        note(f"{path.name} is not a zip file ({error}); nothing was imported")
        return {}
    files: dict[str, bytes] = {}
    total = 0
    with archive:
        members = [m for m in archive.infolist() if not m.is_dir() and not any(j in m.filename for j in _JUNK)]
        if len(members) > MAX_MEMBERS:
            note(f"{path.name} has {len(members)} files; only the first {MAX_MEMBERS} were imported")
            members = members[:MAX_MEMBERS]
        for info in members:
            try:
                relative = _member_path(info)
            except ValueError as error:
                note(f"zip member {info.filename!r} refused: {error}")
                continue
            if not relative.parts:
                continue
            data = _read_member(archive, info, min(MAX_FILE_BYTES, MAX_TOTAL_BYTES - total))
            if data is None:
                note(f"zip member {info.filename!r} refused: larger than the size limit")
                continue
            total += len(data)
            files[relative.as_posix()] = data
    files = _strip_common_folder(files)
    _check_storable(files)
    if files.pop("timestamp.txt", None) is not None:
        note(
            "the timestamp.txt inside the zip was ignored: the submission time is the collection's "
            "(<student>.timestamp.txt beside the zip), never the student's own file"
        )
    found = [name for name in files if name.endswith(".ipynb")]
    if len(notebooks) == 1 and notebooks[0] not in files and len(found) == 1:
        note(f"notebook {found[0]} renamed to {notebooks[0]}")
        files[notebooks[0]] = files.pop(found[0])
    return files


def _read_member(archive: zipfile.ZipFile, info: zipfile.ZipInfo, limit: int) -> bytes | None:
    if info.file_size > limit:
        return None
    chunks, size = [], 0
    with archive.open(info) as stream:  # the header's size may lie: count what comes out
        while chunk := stream.read(1 << 20):
            size += len(chunk)
            if size > limit:
                return None
            chunks.append(chunk)
    return b"".join(chunks)


def _strip_common_folder(files: dict[str, bytes]) -> dict[str, bytes]:
    tops = {PurePosixPath(name).parts[0] for name in files}
    if len(tops) == 1 and all(len(PurePosixPath(name).parts) > 1 for name in files):
        top = tops.pop()
        return {PurePosixPath(name).relative_to(top).as_posix(): data for name, data in files.items()}
    return files


def _replace(folder: Path, files: dict[str, bytes]) -> None:
    """Make ``folder`` hold exactly ``files`` (untouched when it already does)."""
    if folder.is_dir():
        current = {p.relative_to(folder).as_posix(): p for p in folder.rglob("*") if p.is_file()}
        if set(current) == set(files) and all(current[n].read_bytes() == d for n, d in files.items()):
            return
    folder.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=".import-", dir=folder.parent))
    try:
        for name, data in files.items():
            target = staging / name
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_bytes(data)
    except OSError:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    if folder.exists():
        shutil.rmtree(folder)
    staging.rename(folder)
