"""``assert_no_delegation``: the function does its own work instead of calling the course package."""

from __future__ import annotations

import contextlib
import dis
import functools
import inspect
import sys
import types
from collections.abc import Callable, Iterator, Sequence
from typing import Any

from ._common import T, _describe, _in_modules

__all__ = ["assert_no_delegation"]


def _code_roots(obj: Any) -> list[Any]:
    """The functions and classes whose code makes up ``obj``."""
    if isinstance(obj, functools.partial):
        return _code_roots(obj.func)
    if isinstance(obj, types.MethodType):
        return [obj.__func__]
    if isinstance(obj, (types.FunctionType, type)):
        return [obj]
    return [type(obj)]  # an nn.Module or another callable object


def _loaded_names(code: types.CodeType) -> Iterator[tuple[str, str, list[str]]]:
    """``(opcode, name, attributes)`` for every global or free variable loaded, with the attributes
    read from it right away: ``segutils.models.f(x)`` gives ``("LOAD_GLOBAL", "segutils", ["models", "f"])``."""
    chain: tuple[str, str, list[str]] | None = None
    for ins in dis.get_instructions(code):
        if ins.opname in ("LOAD_ATTR", "LOAD_METHOD") and chain is not None:
            chain[2].append(ins.argval)
            continue
        if chain is not None:
            yield chain
            chain = None
        if ins.opname in ("LOAD_GLOBAL", "LOAD_NAME", "LOAD_DEREF", "LOAD_CLASSDEREF"):
            chain = (ins.opname, ins.argval, [])
    if chain is not None:
        yield chain


def _static_references(fn: Any, forbidden: tuple[str, ...], allowed: tuple[str, ...]) -> list[str]:
    """Forbidden functions (and base classes) that ``fn``'s code refers to, following the functions
    and classes of ``fn``'s own module that it refers to.

    Only functions are reported, not classes a name refers to: ``isinstance(m, SomeClass)`` is
    fine; building an instance of a forbidden class is caught when the code runs.
    """
    roots = _code_roots(fn)
    home = getattr(roots[0], "__module__", None)
    found: list[str] = []
    seen: set[int] = set()

    def forbidden_module(module: Any) -> bool:
        return isinstance(module, str) and _in_modules(module, forbidden) and not _in_modules(module, allowed)

    def check(value: Any, path: str) -> None:
        if inspect.isroutine(value) and not inspect.ismethod(value):
            if forbidden_module(getattr(value, "__module__", None)):
                found.append(f"{path} ({value.__module__}.{value.__qualname__})")
            elif isinstance(value, types.FunctionType) and value.__module__ == home:
                visit(value)
        elif isinstance(value, type) and value.__module__ == home:
            visit(value)

    def visit_code(code: types.CodeType, namespace: dict[str, Any], cells: dict[str, Any]) -> None:
        for opname, var, attrs in _loaded_names(code):
            scope = cells if opname in ("LOAD_DEREF", "LOAD_CLASSDEREF") else namespace
            if var not in scope:
                continue
            value, path = scope[var], var
            for attr in attrs:
                if not isinstance(value, types.ModuleType) or not hasattr(value, attr):
                    break
                value, path = getattr(value, attr), f"{path}.{attr}"
            check(value, path)
        for const in code.co_consts:
            if isinstance(const, types.CodeType):
                visit_code(const, namespace, {})

    def visit(obj: Any) -> None:
        if id(obj) in seen:
            return
        seen.add(id(obj))
        if isinstance(obj, type):
            for base in obj.__mro__[1:]:
                if forbidden_module(base.__module__):
                    found.append(f"base class {base.__module__}.{base.__qualname__}")
            for attr in vars(obj).values():
                attr = getattr(attr, "__func__", attr)  # staticmethod, classmethod
                if isinstance(attr, property):
                    attrs = [attr.fget, attr.fset, attr.fdel]
                else:
                    attrs = [attr]
                for a in attrs:
                    if isinstance(a, types.FunctionType) and a.__module__ == home:
                        visit(a)
            return
        cells = {}
        for var, cell in zip(obj.__code__.co_freevars, obj.__closure__ or ()):
            with contextlib.suppress(ValueError):  # an empty cell
                cells[var] = cell.cell_contents
        visit_code(obj.__code__, obj.__globals__, cells)
        for default in [*(obj.__defaults__ or ()), *(obj.__kwdefaults__ or {}).values()]:
            check(default, f"a default argument of {obj.__qualname__}")

    for root in roots:
        if not forbidden_module(getattr(root, "__module__", None)):
            visit(root)
        else:
            found.append(f"{root.__module__}.{root.__qualname__} itself")
    return found


_GENERATOR_FLAGS = inspect.CO_GENERATOR | inspect.CO_COROUTINE | inspect.CO_ASYNC_GENERATOR


def assert_no_delegation(
    fn: Callable[..., T],
    /,
    *args: Any,
    forbidden_modules: Sequence[str] = ("segutils", "torchmetrics"),
    allowed_modules: Sequence[str] = ("segutils.testing", "segutils.device"),
    **kwargs: Any,
) -> T:
    """Run ``fn(*args, **kwargs)`` and check that it does its own work; return its output.

    A student must not hand the work to the course package (which holds the answers) or to a
    library that does the job. Two checks:

    - before the call, ``fn``'s code (and the code of the functions and classes of its own
      module it refers to, e.g. the notebook's ``__main__``) must not refer to a function of
      a forbidden module (``segutils.models.sliding_window_logits``, even on a branch the test
      does not reach) nor inherit from a forbidden class;
    - during the call, code outside PyTorch and the forbidden modules (the student's) must not
      call a function of a forbidden module, nor build an instance of its classes.

    Calls made by PyTorch are not counted: a forbidden ``nn.Module`` the test passes in (a
    classifier to apply, say) may be used, as may the methods of forbidden objects passed in.
    ``fn`` may be a function, a class (it is instantiated) or an ``nn.Module`` (its forward).

    Args:
        fn: what to check; called with ``args`` and ``kwargs``.
        forbidden_modules: module names whose code ``fn`` must not call (submodules included).
        allowed_modules: exceptions among them (harmless helpers such as ``get_device``).

    Raises:
        AssertionError: ``fn`` refers to or calls a forbidden function.
    """
    if not callable(fn):
        raise TypeError(f"fn must be callable, got {type(fn).__name__}")
    forbidden, allowed = tuple(forbidden_modules), tuple(allowed_modules)
    if isinstance(forbidden_modules, str) or isinstance(allowed_modules, str) or not forbidden:
        raise TypeError(
            "forbidden_modules and allowed_modules must be sequences of module names, forbidden_modules not empty"
        )
    what = _describe(fn)
    references = _static_references(fn, forbidden, allowed)
    if references:
        raise AssertionError(
            f"{what} should do the work itself, but its code uses {', '.join(references)}; the course package "
            f"and libraries that do the job ({', '.join(forbidden)}) may not be used here: write it yourself"
        )

    calls: list[str] = []

    def profile(frame: types.FrameType, event: str, arg: Any) -> None:
        if event != "call":
            return
        module = frame.f_globals.get("__name__") or ""
        if not _in_modules(module, forbidden) or _in_modules(module, allowed):
            return
        code = frame.f_code
        qualname = getattr(code, "co_qualname", code.co_name)
        method = qualname.rsplit("<locals>.", 1)[-1]
        if code.co_flags & _GENERATOR_FLAGS or qualname == "<module>":
            return  # a generator resumed (its creation is invisible here), or an import
        if "." in method and not method.endswith((".__init__", ".__new__")):
            return  # a method of an object the code was given
        caller = frame.f_back
        caller_module = (caller.f_globals.get("__name__") or "") if caller is not None else ""
        if _in_modules(caller_module, (*forbidden, "torch")):
            return
        where = f" (in {caller.f_code.co_name}, line {caller.f_lineno})" if caller is not None else ""
        calls.append(f"{module}.{qualname}{where}")

    previous = sys.getprofile()
    sys.setprofile(profile)
    try:
        output = fn(*args, **kwargs)
    finally:
        sys.setprofile(previous)
    if calls:
        listed = "; ".join(dict.fromkeys(calls))
        raise AssertionError(
            f"{what} should do the work itself, but it called {listed}; the course package and libraries "
            f"that do the job ({', '.join(forbidden)}) may not be used here: write it yourself"
        )
    return output
