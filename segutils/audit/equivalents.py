"""The list of surviving mutants an instructor has judged equivalent, ``audit_equivalent.toml``.

The file sits with the fixtures (``tests/fixtures/<id>/audit_equivalent.toml``), not next to the source
notebook: ``nbgrader generate_assignment`` copies every file of ``solutions/<id>/`` into the student
release, and this one quotes the reference solution::

    # Mutants that compute what the reference computes; the audit does not count them as missed.
    [[equivalent]]
    id = "extract_patches-3f2a9c01de"   # as the audit prints it
    reason = "padding=(p // 2, p // 2) and (p // 2,) * 2 are the same tuple"

Every entry needs an ``id`` and a non-empty ``reason``. An id that no longer matches a mutant
(the reference changed) is reported as stale.
"""

from __future__ import annotations

from pathlib import Path

import tomllib

FILE_NAME = "audit_equivalent.toml"


def read_equivalents(path: Path) -> dict[str, str]:
    """``mutant id -> reason`` from ``path``; empty if the file does not exist.

    Raises:
        ValueError: the file is not valid TOML or an entry lacks an id or a reason.
    """
    if not path.is_file():
        return {}
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except tomllib.TOMLDecodeError as error:
        raise ValueError(f"{path}: not valid TOML: {error}") from None
    entries = data.get("equivalent", [])
    if not isinstance(entries, list):
        raise ValueError(f"{path}: 'equivalent' must be an array of tables ([[equivalent]] entries)")
    found: dict[str, str] = {}
    for n, entry in enumerate(entries, start=1):
        mutant_id, reason = entry.get("id"), entry.get("reason")
        if not isinstance(mutant_id, str) or not mutant_id:
            raise ValueError(f"{path}: entry {n} has no id (the mutant id the audit printed)")
        if not isinstance(reason, str) or not reason.strip():
            raise ValueError(f"{path}: entry {n} ({mutant_id}) has no reason: say why the mutant computes the same")
        found[mutant_id] = reason.strip()
    return found
