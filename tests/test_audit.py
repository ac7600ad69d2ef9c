"""Tests of ``segutils audit``: a toy nbgrader assignment, written here, with a weak and a strong test.

``clip(x, lo=0, hi=10)`` is the graded function. The weak test calls ``clip(5)`` only, so most mutants
(``hi=11``, ``lo > hi`` -> ``lo >= hi``...) survive it; the strong tests probe both bounds and the input check,
and kill them. ``max(lo, ...)`` or ``min(x, hi)`` with their arguments swapped compute the same: those two
survive every test until they are listed in ``audit_equivalent.toml``.
"""

from __future__ import annotations

import json
from pathlib import Path

import nbformat
import pytest

from segutils.audit import audit_assignment
from segutils.audit.mutants import mutants_of_cell
from segutils.audit.run import _spread
from segutils.cli import main

SOLUTION = """def clip(x, lo=0, hi=10):
    ### BEGIN SOLUTION
    if lo > hi:
        raise ValueError(f"lo must not exceed hi, got {lo} > {hi}")
    return max(lo, min(x, hi))
    ### END SOLUTION
"""
WEAK_TEST = "assert clip(5) == 5\n"
STRONG_TESTS = {
    "clip_bounds": "assert clip(-3) == 0 and clip(15) == 10 and clip(0) == 0 and clip(10) == 10 and clip(5) == 5\n",
    "clip_arguments": "assert clip(5, 6, 8) == 6 and clip(9, 6, 8) == 8\n",
    "clip_checks": (
        "try:\n    clip(1, 2, 1)\nexcept ValueError:\n    pass\nelse:\n    raise AssertionError('no ValueError')\n"
        "assert clip(1, 1, 1) == 1\n"
    ),
}
SYMMETRIC_SWAPS = ("max(min(x, hi), lo)", "min(hi, x)")


def write_assignment(root: Path, tests: dict[str, str], loop: bool = False) -> Path:
    """solutions/toy/toy.ipynb with a set-up cell, the solution cell and the graded test cells."""
    nb = nbformat.v4.new_notebook()
    nb.cells.append(
        nbformat.v4.new_code_cell("import math", metadata={"nbgrader": {"grade_id": "setup", "locked": True}})
    )
    source = SOLUTION
    if loop:  # a loop whose counter a mutant freezes: that mutant never ends
        source += "\n\ndef count_up(n):\n    i = 0\n    while i < n:\n        i += 1\n    return i\n"
        tests = {**tests, "count_up": "assert count_up(3) == 3\n"}
    nb.cells.append(
        nbformat.v4.new_code_cell(
            source, metadata={"nbgrader": {"grade_id": "clip", "solution": True, "grade": False, "locked": False}}
        )
    )
    for grade_id, test in tests.items():
        nb.cells.append(
            nbformat.v4.new_code_cell(
                test,
                metadata={
                    "nbgrader": {"grade_id": grade_id, "grade": True, "solution": False, "locked": True, "points": 1}
                },
            )
        )
    folder = root / "solutions" / "toy"
    folder.mkdir(parents=True)
    nbformat.write(nb, str(folder / "toy.ipynb"))
    return root / "solutions"


def survivors(report) -> list[str]:
    return [m.diff for m in report.survivors]


def test_mutants_cover_every_operator_and_leave_the_reference_unchanged_elsewhere():
    source = SOLUTION.replace("    ### BEGIN SOLUTION\n", "").replace("    ### END SOLUTION\n", "")
    mutants = mutants_of_cell(source + "\n\ndef width(lo, hi):\n    return -(lo - hi), (lo, hi)\n", "clip")
    kinds = {m.kind for m in mutants}
    assert kinds == {"constant", "swap", "compare", "sign", "drop", "default"}, kinds
    assert len({m.id for m in mutants}) == len(mutants)
    descriptions = {m.description for m in mutants}
    assert "default 10 -> 11 in clip()" in descriptions and "comparison Gt -> GtE" in descriptions
    for m in mutants:
        assert m.diff.count("\n-") >= 1 and m.diff.count("\n+") >= 1
    assert {m.function for m in mutants} == {"clip", "width"}
    assert {"- -> +", "- removed", "elements 1 and 2 of (lo, hi) swapped"} <= descriptions
    assert len(mutants_of_cell(source, "clip", {"width"})) == 0


def test_a_capped_audit_samples_every_function_and_the_seed_picks_the_sample():
    source = SOLUTION + "\n\ndef width(lo, hi):\n    return hi - lo + 1\n"
    mutants = mutants_of_cell(source, "clip")
    first, second = _spread(list(mutants), 4, seed=0), _spread(list(mutants), 4, seed=1)
    assert len(first) == 4 and {m.function for m in first} == {"clip", "width"}
    assert {m.id for m in first} != {m.id for m in second}
    assert _spread(list(mutants), None, seed=0) == mutants


def test_the_audit_reports_the_mutants_a_weak_test_misses(tmp_path):
    solutions = write_assignment(tmp_path, {"clip_weak": WEAK_TEST})
    report = audit_assignment("toy", solutions=solutions, jobs=2, timeout=30)
    assert not report.reference_failures
    diffs = survivors(report)
    assert any("+def clip(x, lo=0, hi=11):" in d for d in diffs), report.text()
    assert any("if lo >= hi:" in d for d in diffs)
    text = report.text()
    assert "SURVIVED clip-" in text and "+def clip(x, lo=0, hi=11):" in text
    assert not report.ok


def test_a_strong_test_kills_them_and_the_equivalent_file_explains_the_rest(tmp_path):
    solutions = write_assignment(tmp_path, STRONG_TESTS)
    report = audit_assignment("toy", solutions=solutions, jobs=2, timeout=30)
    assert not report.reference_failures
    left = report.survivors
    assert sorted(next(s for s in SYMMETRIC_SWAPS if s in m.diff) for m in left) == sorted(SYMMETRIC_SWAPS), (
        report.text()
    )  # only the swapped arguments of max and min survive
    assert any(m.status == "killed" and "hi=11" in m.diff for m in report.mutants)

    listed = tmp_path / "tests" / "fixtures" / "toy" / "audit_equivalent.toml"  # the default place
    listed.parent.mkdir(parents=True)
    listed.write_text("".join(f'[[equivalent]]\nid = "{m.id}"\nreason = "max and min are symmetric"\n\n' for m in left))
    report = audit_assignment("toy", solutions=solutions, jobs=2, timeout=30)
    assert report.ok and not report.survivors, report.text()
    assert {m.reason for m in report.mutants if m.status == "equivalent"} == {"max and min are symmetric"}


def test_first_catch_stops_a_mutant_at_the_first_test_that_catches_it_with_the_same_verdicts(tmp_path):
    """``hi=11`` fails clip_bounds and (later in the notebook) nothing else; ``lo >= hi`` fails clip_checks only;
    a mutant caught by two cells is reported with only the first under first_catch, and every verdict is the same."""
    tests = {
        "clip_bounds": STRONG_TESTS["clip_bounds"],
        "clip_bounds_again": STRONG_TESTS["clip_bounds"],
        "clip_checks": STRONG_TESTS["clip_checks"],
    }
    solutions = write_assignment(tmp_path, tests)
    whole = audit_assignment("toy", solutions=solutions, jobs=2, timeout=30)
    fast = audit_assignment("toy", solutions=solutions, jobs=2, timeout=30, first_catch=True)
    assert {m.id: m.status for m in fast.mutants} == {m.id: m.status for m in whole.mutants}
    twice = [m for m in whole.mutants if m.killed_by[:2] == ["clip_bounds", "clip_bounds_again"]]
    assert twice, whole.text()  # the control: some mutant fails both copies
    first = {m.id: m.killed_by for m in fast.mutants}
    assert all(first[m.id] == ["clip_bounds"] for m in twice)
    assert any(m.killed_by == ["clip_checks"] for m in fast.mutants)  # a later catch is still found


def test_fixtures_are_run_and_a_missed_wrong_fixture_is_reported(tmp_path):
    solutions = write_assignment(tmp_path, {"clip_weak": WEAK_TEST})
    fixtures = tmp_path / "fixtures"
    fixtures.mkdir()
    (fixtures / "upper_bound_ignored.py").write_text(
        '"""Forgets the upper bound."""\nREPLACES = "clip"\nEXPECTED_FAILURES = {"clip_weak"}\n\n'
        "def clip(x, lo=0, hi=10):\n    return max(lo, x)\n"
    )
    (fixtures / "correct_branches.py").write_text(
        '"""Branches instead of min and max."""\nREPLACES = "clip"\nEXPECTED_FAILURES = set()\n\n'
        "def clip(x, lo=0, hi=10):\n    return lo if x < lo else hi if x > hi else x\n"
    )
    report = audit_assignment(
        "toy", solutions=solutions, fixtures=fixtures, functions=["clip"], max_mutants=3, jobs=1, timeout=30
    )
    status = {f.id: f.status for f in report.fixtures}
    assert status == {"upper_bound_ignored": "survived", "correct_branches": "correct, passes"}
    assert len(report.mutants) == 3


def test_a_mutant_that_never_ends_is_stopped_by_the_time_limit(tmp_path):
    solutions = write_assignment(tmp_path, STRONG_TESTS, loop=True)
    report = audit_assignment("toy", solutions=solutions, functions=["count_up"], jobs=2, timeout=3)
    frozen = [m for m in report.mutants if "+        i -= 1" in m.diff or "+        pass" in m.diff]
    assert frozen and all(m.status == "timeout" for m in frozen), report.text()


def test_the_command_line_exit_status_and_json(tmp_path, capsys):
    solutions = write_assignment(tmp_path, {"clip_weak": WEAK_TEST})
    out = tmp_path / "report.json"
    assert (
        main(["audit", "toy", "--solutions", str(solutions), "--max-mutants", "4", "--jobs", "1", "--json", str(out)])
        == 1
    )
    assert "unexplained survivor" in capsys.readouterr().out
    assert len(json.loads(out.read_text())["mutants"]) == 4
    assert main(["audit", "nothing", "--solutions", str(solutions)]) == 2
    assert "no source notebook" in capsys.readouterr().err
    assert main(["audit", "toy", "--solutions", str(solutions), "--functions", "nope"]) == 2


@pytest.mark.parametrize(
    "text, problem",
    [
        ("[[equivalent]]\nid = 'x'\n", "has no reason"),
        ("[[equivalent]]\nreason = 'same'\n", "has no id"),
        ("equivalent = [", "not valid TOML"),
    ],
)
def test_a_broken_equivalents_file_is_an_error(tmp_path, text, problem):
    solutions = write_assignment(tmp_path, {"clip_weak": WEAK_TEST})
    listed = tmp_path / "tests" / "fixtures" / "toy" / "audit_equivalent.toml"
    listed.parent.mkdir(parents=True)
    listed.write_text(text)
    with pytest.raises(ValueError, match=problem):
        audit_assignment("toy", solutions=solutions, jobs=1)


def test_no_equivalents_file_sits_where_nbgrader_would_release_it():
    """nbgrader generate_assignment copies every file of solutions/<id>/ into the student release."""
    solutions = Path(__file__).resolve().parents[1] / "solutions"
    assert not list(solutions.glob("*/audit_equivalent.toml")), "move it to tests/fixtures/<id>/"
