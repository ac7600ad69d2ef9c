"""``audit_assignment``: mutants and fixtures of one assignment through its test cells, and the report."""

from __future__ import annotations

import json
import random
from collections.abc import Iterable
from concurrent.futures import Future
from dataclasses import asdict, dataclass, field
from pathlib import Path

from .equivalents import FILE_NAME, read_equivalents
from .mutants import Mutant, mutants_of_cell
from .notebook import Cell, Fixture, graded_functions, read_cells, read_fixtures
from .runner import RunOutcome, make_pool, run_cells


@dataclass
class MutantResult:
    """One mutant or fixture and its fate: ``status`` is killed, survived, equivalent (listed) or timeout."""

    id: str
    function: str
    kind: str
    description: str
    status: str
    killed_by: list[str] = field(default_factory=list)
    diff: str = ""
    reason: str = ""


@dataclass
class AuditReport:
    """What the audit found for one assignment."""

    assignment: str
    test_cells: int
    reference_failures: dict[str, str]
    mutants_total: int
    mutants: list[MutantResult]
    fixtures: list[MutantResult]
    stale_equivalents: list[str]

    @property
    def survivors(self) -> list[MutantResult]:
        """Mutants no test caught and not listed as equivalent, and wrong fixtures no test caught."""
        return [m for m in [*self.mutants, *self.fixtures] if m.status == "survived"]

    @property
    def ok(self) -> bool:
        unfair = [f for f in self.fixtures if f.status == "correct but failed"]
        return not self.reference_failures and not self.survivors and not unfair

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=1)

    def text(self) -> str:
        """The report an instructor reads: per function, the survivors with their diffs."""
        lines = [
            f"audit of {self.assignment}: {len(self.mutants)} mutants run (of {self.mutants_total} generated), "
            f"{len(self.fixtures)} fixtures, {self.test_cells} graded test cells"
        ]
        if self.reference_failures:
            lines.append("THE REFERENCE FAILS test cells (fix these first; every mutant 'fails' them too):")
            lines += [f"  {cell}: {error}" for cell, error in self.reference_failures.items()]
        by_function: dict[str, list[MutantResult]] = {}
        for m in self.mutants:
            by_function.setdefault(m.function, []).append(m)
        for function, results in by_function.items():
            counts = {s: sum(r.status == s for r in results) for s in ("killed", "timeout", "equivalent", "survived")}
            lines.append(
                f"\n{function}: {len(results)} mutants, {counts['killed'] + counts['timeout']} killed "
                f"({counts['timeout']} by the time limit), {counts['equivalent']} listed as equivalent, "
                f"{counts['survived']} survived"
            )
            for r in results:
                if r.status == "survived":
                    lines.append(f"  SURVIVED {r.id}: {r.description}")
                    lines += [f"    {d}" for d in r.diff.rstrip("\n").splitlines()]
        if self.fixtures:
            lines.append("\nfixtures (tests/fixtures):")
            for f in self.fixtures:
                detail = f" (failed: {', '.join(f.killed_by)})" if f.killed_by else ""
                lines.append(f"  {f.status:<18} {f.id}{detail}")
        if self.stale_equivalents:
            lines.append(
                f"\nstale entries of {FILE_NAME} (no such mutant any more): {', '.join(self.stale_equivalents)}"
            )
        unexplained = len(self.survivors)
        lines.append(f"\n{unexplained} unexplained survivor(s)" if unexplained else "\nno unexplained survivor")
        return "\n".join(lines)


def _spread(mutants: list[Mutant], cap: int | None, seed: int) -> list[Mutant]:
    """At most ``cap`` mutants, taken round-robin over the functions (each list shuffled with ``seed``)."""
    if cap is None or cap >= len(mutants):
        return mutants
    groups: dict[str, list[Mutant]] = {}
    for m in mutants:
        groups.setdefault(m.function, []).append(m)
    rng = random.Random(seed)
    for group in groups.values():
        rng.shuffle(group)
    picked: list[Mutant] = []
    while len(picked) < cap:
        for group in groups.values():
            if group and len(picked) < cap:
                picked.append(group.pop(0))
    return picked


def audit_assignment(
    assignment: str,
    *,
    solutions: Path = Path("solutions"),
    fixtures: Path | None = None,
    equivalents: Path | None = None,
    functions: Iterable[str] | None = None,
    max_mutants: int | None = None,
    jobs: int = 2,
    timeout: float = 300.0,
    seed: int = 0,
    first_catch: bool = False,
) -> AuditReport:
    """Run the mutants of ``assignment``'s graded functions and its fixtures through its test cells.

    Args:
        assignment: the assignment id: the notebook is ``solutions/<id>/<id>.ipynb``.
        solutions: the folder of the source notebooks.
        fixtures: the folder of hand-written answers (default: ``tests/fixtures/<id>`` next to
            ``solutions``, when it exists).
        equivalents: the list of equivalent mutants (default: ``audit_equivalent.toml`` in the fixtures
            folder; not in ``solutions/<id>/``, which nbgrader copies into the student release).
        functions: only mutate these graded functions (default: all).
        max_mutants: run at most this many mutants, spread over the functions.
        seed: which sample ``max_mutants`` takes (another seed, another sample).
        jobs: worker processes.
        timeout: seconds one run (the whole notebook) may take.
        first_catch: stop each mutant's run at the first test cell that catches it (the report then names
            that cell only); the reference runs first, whole. Fixtures always run whole.

    Raises:
        FileNotFoundError: no such notebook. ValueError: a bad argument, notebook or fixture.
    """
    folder = Path(solutions) / assignment
    notebook = folder / f"{assignment}.ipynb"
    if not notebook.is_file():
        raise FileNotFoundError(f"no source notebook {notebook} (the assignment id is the folder name in {solutions})")
    if jobs < 1 or timeout <= 0 or (max_mutants is not None and max_mutants < 1):
        raise ValueError("jobs and max_mutants must be positive, timeout a positive number of seconds")
    cells = read_cells(notebook)
    graded = graded_functions(cells)
    wanted = set(functions) if functions else None
    if wanted and not wanted <= set(graded):
        raise ValueError(
            f"not graded functions of {assignment}: {sorted(wanted - set(graded))}; graded: {sorted(graded)}"
        )
    fixture_dir = (
        Path(fixtures) if fixtures is not None else Path(solutions).resolve().parent / "tests" / "fixtures" / assignment
    )
    fixture_list: list[Fixture] = read_fixtures(fixture_dir)
    listed = read_equivalents(Path(equivalents) if equivalents is not None else fixture_dir / FILE_NAME)

    by_grade_id = {c.grade_id: c for c in cells if c.kind == "solution"}
    all_mutants = [
        m for c in cells if c.kind == "solution" for m in mutants_of_cell(c.source, c.grade_id or "", wanted)
    ]
    chosen = _spread(all_mutants, max_mutants, seed)
    if wanted:
        fixture_list = [
            f for f in fixture_list if set(graded_functions([Cell(0, "solution", f.replaces, f.source)])) & wanted
        ]

    with make_pool(jobs, folder.resolve()) as pool:
        baseline_future = pool.submit(run_cells, cells, {}, timeout)
        stop = frozenset(baseline_future.result().failures) if first_catch else None
        futures: list[tuple[object, Future]] = []
        for m in chosen:
            futures.append((m, pool.submit(run_cells, cells, {by_grade_id[m.grade_id].index: m.source}, timeout, stop)))
        for f in fixture_list:
            if f.replaces not in by_grade_id:
                raise ValueError(
                    f"fixture {f.name} replaces {f.replaces!r}, which is not a solution cell of "
                    f"{assignment} ({sorted(g for g in by_grade_id if g)})"
                )
            futures.append((f, pool.submit(run_cells, cells, {by_grade_id[f.replaces].index: f.source}, timeout)))
        baseline: RunOutcome = baseline_future.result()
        results = [(item, future.result()) for item, future in futures]

    mutant_results, fixture_results = [], []
    for item, outcome in results:
        new_failures = sorted(set(outcome.failures) - set(baseline.failures))
        if isinstance(item, Mutant):
            if new_failures:
                status = "timeout" if outcome.timed_out else "killed"
            elif item.id in listed:
                status = "equivalent"
            else:
                status = "survived"
            mutant_results.append(
                MutantResult(
                    item.id,
                    item.function,
                    item.kind,
                    item.description,
                    status,
                    new_failures,
                    item.diff,
                    listed.get(item.id, ""),
                )
            )
        else:
            if item.correct:
                status = "correct but failed" if new_failures else "correct, passes"
            else:
                status = "caught" if new_failures else "survived"
            fixture_results.append(MutantResult(item.name, item.replaces, "fixture", "", status, new_failures))
    generated = {m.id for m in all_mutants}
    stale = sorted(i for i in listed if i not in generated) if not wanted else []
    return AuditReport(
        assignment,
        sum(c.kind == "test" for c in cells),
        baseline.failures,
        len(all_mutants),
        mutant_results,
        fixture_results,
        stale,
    )
