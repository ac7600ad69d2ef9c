"""Mutants of a solution cell's graded functions: one small syntactic change each.

Operators (``kind``):

- ``constant``: an integer constant ``+1`` and ``-1`` (``True``/``False`` flipped);
- ``swap``: two neighbouring positional arguments of a call swapped (``transpose(2, 3)`` ->
  ``transpose(3, 2)``, ``max(a, b)`` -> ``max(b, a)``), two neighbouring subscript indices, and two
  neighbouring elements of a tuple (``sum(dim=(0, 1))``, ``kernel_size=(kh, kw)``);
- ``compare``: a comparison flipped (``<`` <-> ``<=``, ``>`` <-> ``>=``, ``==`` <-> ``!=``,
  ``is`` <-> ``is not``, ``in`` <-> ``not in``);
- ``sign``: ``+`` <-> ``-`` in a binary operation, a unary minus removed, ``not`` removed;
- ``drop``: one statement of a body replaced by ``pass`` (a docstring is never dropped);
- ``default``: a default argument changed (ints ``+1``, floats doubled, booleans flipped,
  ``None`` replaced by ``0``).

Only the code of the graded functions (top-level ``def`` and ``class`` of the solution cell)
is mutated. A mutant's identity is ``<function>-<hash>``, a hash of the mutated function's
source (comments and formatting excluded): it stays the same while the reference does not change.
"""

from __future__ import annotations

import ast
import copy
import difflib
import hashlib
from collections.abc import Iterator
from dataclasses import dataclass

_COMPARE_FLIPS = {
    ast.Lt: ast.LtE,
    ast.LtE: ast.Lt,
    ast.Gt: ast.GtE,
    ast.GtE: ast.Gt,
    ast.Eq: ast.NotEq,
    ast.NotEq: ast.Eq,
    ast.Is: ast.IsNot,
    ast.IsNot: ast.Is,
    ast.In: ast.NotIn,
    ast.NotIn: ast.In,
}


@dataclass(frozen=True)
class Mutant:
    """One mutant of the solution cell ``grade_id``: ``source`` is the whole mutated cell."""

    id: str
    function: str
    kind: str
    line: int
    description: str
    grade_id: str
    source: str
    diff: str


# A site is (walk index of the node, what to do, variant); see _sites and _apply.
_Site = tuple[int, str, object]


def _is_docstring(stmt: ast.stmt) -> bool:
    return isinstance(stmt, ast.Expr) and isinstance(stmt.value, ast.Constant) and isinstance(stmt.value.value, str)


def _sites(root: ast.AST, nodes: list[ast.AST]) -> Iterator[_Site]:
    """Every mutation of ``root`` (a function or class), as sites indexing ``nodes`` (``ast.walk`` of the cell)."""
    index = {id(n): i for i, n in enumerate(nodes)}
    inside = {id(n) for n in ast.walk(root)}
    subscripts = {id(n.slice) for n in ast.walk(root) if isinstance(n, ast.Subscript)}  # swapped as indices
    for node in ast.walk(root):
        i = index[id(node)]
        if isinstance(node, ast.Constant) and type(node.value) is bool:
            yield i, "constant", not node.value
        elif isinstance(node, ast.Constant) and type(node.value) is int:
            yield i, "constant", node.value + 1
            yield i, "constant", node.value - 1
        elif isinstance(node, ast.Call):
            for k in range(len(node.args) - 1):
                if not any(isinstance(a, ast.Starred) for a in node.args[k : k + 2]):
                    yield i, "swap", k
        elif isinstance(node, ast.Subscript) and isinstance(node.slice, ast.Tuple):
            for k in range(len(node.slice.elts) - 1):
                yield i, "swap-index", k
        elif isinstance(node, ast.Tuple) and isinstance(node.ctx, ast.Load) and id(node) not in subscripts:
            for k in range(len(node.elts) - 1):
                if not any(isinstance(e, ast.Starred) for e in node.elts[k : k + 2]):
                    yield i, "swap-tuple", k
        elif isinstance(node, ast.Compare):
            for k, op in enumerate(node.ops):
                if type(op) in _COMPARE_FLIPS:
                    yield i, "compare", k
        elif isinstance(node, ast.BinOp) and isinstance(node.op, (ast.Add, ast.Sub)):
            yield i, "sign", None
        elif isinstance(node, ast.AugAssign) and isinstance(node.op, (ast.Add, ast.Sub)):
            yield i, "sign", None
        elif isinstance(node, ast.UnaryOp) and isinstance(node.op, (ast.USub, ast.Not)):
            yield i, "sign", None
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            for k, default in enumerate([*node.args.defaults, *node.args.kw_defaults]):
                if default is not None and _changed_default(default) is not None:
                    yield i, "default", k
        for field in ("body", "orelse", "finalbody"):
            body = getattr(node, field, None)
            if isinstance(body, list) and body and isinstance(body[0], ast.stmt) and not isinstance(node, ast.ClassDef):
                for k, stmt in enumerate(body):
                    if not _is_docstring(stmt) and id(stmt) in inside:
                        yield i, "drop", (field, k)


def _changed_default(node: ast.expr) -> ast.expr | None:
    if isinstance(node, ast.Constant):
        v = node.value
        if type(v) is bool:
            return ast.Constant(not v)
        if type(v) is int:
            return ast.Constant(v + 1)
        if type(v) is float:
            return ast.Constant(v * 2 if v else 1.0)
        if v is None:
            return ast.Constant(0)
    if (
        isinstance(node, ast.UnaryOp)
        and isinstance(node.op, ast.USub)
        and isinstance(node.operand, ast.Constant)
        and type(node.operand.value) in (int, float)
    ):
        return ast.Constant(-node.operand.value + 1)
    return None


def _apply(node: ast.AST, kind: str, variant: object) -> str:
    """Mutate ``node`` in place; return a description."""
    if kind == "constant":
        old, node.value = node.value, variant
        return f"constant {old!r} -> {variant!r}"
    if kind == "swap":
        k = variant
        node.args[k], node.args[k + 1] = node.args[k + 1], node.args[k]
        return f"arguments {k + 1} and {k + 2} of {ast.unparse(node.func)}(...) swapped"
    if kind == "swap-index":
        k = variant
        elts = node.slice.elts
        elts[k], elts[k + 1] = elts[k + 1], elts[k]
        return f"indices {k + 1} and {k + 2} of {ast.unparse(node.value)}[...] swapped"
    if kind == "swap-tuple":
        k = variant
        before = ast.unparse(node)
        node.elts[k], node.elts[k + 1] = node.elts[k + 1], node.elts[k]
        return f"elements {k + 1} and {k + 2} of {before} swapped"
    if kind == "compare":
        old = node.ops[variant]
        node.ops[variant] = _COMPARE_FLIPS[type(old)]()
        return f"comparison {type(old).__name__} -> {type(node.ops[variant]).__name__}"
    if kind == "sign":
        if isinstance(node, (ast.BinOp, ast.AugAssign)):
            old = node.op
            node.op = ast.Sub() if isinstance(old, ast.Add) else ast.Add()
            return f"{'+' if isinstance(old, ast.Add) else '-'} -> {'-' if isinstance(old, ast.Add) else '+'}"
        return f"{'-' if isinstance(node.op, ast.USub) else 'not '} removed"  # replaced below
    if kind == "default":
        defaults = [*node.args.defaults, *node.args.kw_defaults]
        old = defaults[variant]
        new = _changed_default(old)
        if variant < len(node.args.defaults):
            node.args.defaults[variant] = new
        else:
            node.args.kw_defaults[variant - len(node.args.defaults)] = new
        return f"default {ast.unparse(old)} -> {ast.unparse(new)} in {node.name}()"
    if kind == "drop":
        field, k = variant
        body = getattr(node, field)
        text = ast.unparse(body[k]).split("\n")[0]
        body[k] = ast.Pass()
        return f"statement dropped: {text[:80]}"
    raise ValueError(f"unknown mutation {kind}")


class _RemoveUnary(ast.NodeTransformer):
    def __init__(self, target: ast.AST) -> None:
        self.target = target

    def visit_UnaryOp(self, node: ast.UnaryOp) -> ast.AST:
        if node is self.target:
            return node.operand
        return self.generic_visit(node)


def _definition(tree: ast.Module, name: str) -> ast.AST:
    return next(n for n in tree.body if isinstance(n, (ast.FunctionDef, ast.ClassDef)) and n.name == name)


def mutants_of_cell(source: str, grade_id: str, functions: set[str] | None = None) -> list[Mutant]:
    """Every distinct mutant of the graded functions of one solution cell.

    ``functions`` limits them to those names. Mutants that unparse to the original code, or to
    the same code as an earlier mutant, are left out.
    """
    tree = ast.parse(source)
    original = ast.unparse(tree)
    seen: set[str] = {original}
    out: list[Mutant] = []
    for top in tree.body:
        if not isinstance(top, (ast.FunctionDef, ast.ClassDef)) or (functions and top.name not in functions):
            continue
        before = ast.unparse(top)
        nodes = list(ast.walk(tree))
        for walk_index, kind, variant in list(_sites(top, nodes)):
            mutated = copy.deepcopy(tree)
            node = list(ast.walk(mutated))[walk_index]
            description = _apply(node, kind, variant)
            if kind == "sign" and isinstance(node, ast.UnaryOp):
                mutated = _RemoveUnary(node).visit(mutated)
            ast.fix_missing_locations(mutated)
            try:
                text = ast.unparse(mutated)
                compile(text, "<mutant>", "exec")
            except (SyntaxError, ValueError):
                continue
            if text in seen:
                continue
            seen.add(text)
            after = ast.unparse(_definition(mutated, top.name))
            digest = hashlib.sha1(after.encode()).hexdigest()[:10]
            diff = "".join(
                difflib.unified_diff(
                    (before + "\n").splitlines(True),
                    (after + "\n").splitlines(True),
                    f"{top.name} (reference)",
                    f"{top.name} (mutant)",
                    n=1,
                )
            )
            line = getattr(list(ast.walk(tree))[walk_index], "lineno", top.lineno)
            out.append(
                Mutant(f"{top.name}-{digest}", top.name, kind.split("-")[0], line, description, grade_id, text, diff)
            )
    return out
