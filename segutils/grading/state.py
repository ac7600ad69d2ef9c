"""What has been graded, from which submission: ``reports/<assignment>/state/<student>.json``.

A student is graded again only when the digest of their submission (its files, the assignment's
cells in the gradebook and the grading options) differs from the one stored after their last
grading, or when their autograded notebook or gradebook entry is gone. The state file is written
last, after the gradebook, ``autograded/`` and ``feedback/``: a batch stopped at any point (Ctrl-C,
a crash, a lost worker) leaves every finished student recorded and every unfinished one to grade.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

REPORTS = "reports"


def report_dir(course: Path, assignment: str) -> Path:
    return Path(course) / REPORTS / assignment


def state_path(course: Path, assignment: str, student: str) -> Path:
    return report_dir(course, assignment) / "state" / f"{student}.json"


def submission_digest(files: dict[str, bytes], assignment_fingerprint: str, options: dict) -> str:
    """SHA-256 of a submission's files, the assignment's fingerprint and the grading options."""
    digest = hashlib.sha256()
    for name in sorted(files):
        digest.update(name.encode() + b"\0" + hashlib.sha256(files[name]).digest())
    digest.update(assignment_fingerprint.encode())
    digest.update(json.dumps(options, sort_keys=True, default=str).encode())
    return digest.hexdigest()


def assignment_fingerprint(db_url: str, assignment: str) -> str:
    """Hash of the assignment's cells as the gradebook holds them (changes when it is regenerated)."""
    from nbgrader.api import Gradebook

    digest = hashlib.sha256()
    with Gradebook(db_url) as gb:
        for notebook in sorted(gb.find_assignment(assignment).notebooks, key=lambda n: n.name):
            digest.update(notebook.name.encode())
            for cell in sorted(notebook.source_cells, key=lambda c: c.name):
                digest.update(f"{cell.name}\0{cell.checksum}\0{cell.locked}".encode())
            for cell in sorted(notebook.grade_cells, key=lambda c: c.name):
                digest.update(f"{cell.name}\0{cell.max_score}".encode())
    return digest.hexdigest()


def load_state(course: Path, assignment: str, student: str) -> dict[str, Any] | None:
    path = state_path(course, assignment, student)
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def write_atomic(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    with os.fdopen(fd, "wb") as handle:
        handle.write(data)
    os.chmod(tmp, 0o644)
    os.replace(tmp, path)


def save_state(course: Path, assignment: str, student: str, data: dict[str, Any]) -> None:
    write_atomic(state_path(course, assignment, student), json.dumps(data, indent=1, default=str).encode())


def replace_folder(folder: Path, files: dict[str, bytes]) -> None:
    """Make ``folder`` hold exactly ``files``, swapping in a complete copy (never a half-written one)."""
    folder.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{folder.name}.", dir=folder.parent))
    for name, data in files.items():
        target = staging / name
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(data)
        os.chmod(target, 0o644)
    os.chmod(staging, 0o755)
    old = None
    if folder.exists():
        old = folder.with_name(f".{folder.name}.old")
        if old.exists():
            _rmtree(old)
        folder.rename(old)
    staging.rename(folder)
    if old is not None:
        _rmtree(old)


def _rmtree(path: Path) -> None:
    def unlock(func, target, _):
        os.chmod(target, 0o700)
        func(target)

    shutil.rmtree(path, onerror=unlock)
