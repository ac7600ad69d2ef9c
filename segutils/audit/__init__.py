"""``segutils audit``: mutation analysis of an assignment's tests.

An assignment's tests are strong when every wrong answer loses points. The audit makes wrong
answers mechanically: it mutates the reference solution's graded functions (the top-level
functions and classes of the solution cells of ``solutions/<id>/<id>.ipynb``) one small change at
a time (:mod:`segutils.audit.mutants`), adds the hand-written wrong and alternative answers of
``tests/fixtures/<id>/``, runs each through the notebook's test cells in a fresh namespace, in
parallel worker processes with a per-mutant time limit (:mod:`segutils.audit.runner`), and
reports the mutants that no test cell catches, with a diff of each. A mutant that cannot be
caught because it computes the same thing (``max(a, b)`` for ``max(b, a)``) is listed, with the
reason, in ``tests/fixtures/<id>/audit_equivalent.toml`` (:mod:`segutils.audit.equivalents`); the
report counts those apart.

Python API: :func:`~segutils.audit.run.audit_assignment` returns an
:class:`~segutils.audit.run.AuditReport`; the command line is ``segutils audit ASSIGNMENT``.
"""

from __future__ import annotations

from .run import AuditReport, MutantResult, audit_assignment

__all__ = ["AuditReport", "MutantResult", "audit_assignment"]
