"""Helpers shared by the checks of :mod:`segutils.testing` (not public)."""

from __future__ import annotations

import inspect
from collections.abc import Callable, Iterable, Iterator
from typing import Any, TypeVar

from torch import Tensor, nn

T = TypeVar("T")
T.__module__ = "segutils.testing"  # where the API reference (and its nitpick_ignore list) names it


def _op_name(func: Any) -> str:
    packet = getattr(func, "overloadpacket", None)
    return str(packet if packet is not None else func)


def _in_modules(module: str, prefixes: Iterable[str]) -> bool:
    return any(module == p or module.startswith(p + ".") for p in prefixes)


def _describe(fn: Any) -> str:
    if isinstance(fn, nn.Module):
        return f"{type(fn).__name__}.forward"
    return getattr(fn, "__qualname__", None) or getattr(fn, "__name__", None) or type(fn).__name__


def _tensors(obj: Any, path: str = "") -> Iterator[tuple[str, Tensor]]:
    """Every tensor in ``obj`` (nested lists, tuples, dicts; a module's parameters and buffers)."""
    if isinstance(obj, Tensor):
        yield path, obj
    elif isinstance(obj, nn.Module):
        for name, t in [*obj.named_parameters(), *obj.named_buffers()]:
            yield f"{path}.{name}", t
    elif isinstance(obj, (list, tuple)):
        for i, x in enumerate(obj):
            yield from _tensors(x, f"{path}[{i}]")
    elif isinstance(obj, dict):
        for k, v in obj.items():
            yield from _tensors(v, f"{path}[{k!r}]")


def _positional_arity(fn: Callable[..., Any]) -> int | None:
    """How many positional parameters ``fn`` requires; ``None`` if it cannot be told or has ``*args``."""
    try:
        params = inspect.signature(fn).parameters.values()
    except (TypeError, ValueError):
        return None
    if any(p.kind is p.VAR_POSITIONAL for p in params):
        return None
    return sum(p.default is p.empty and p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD) for p in params)


def _call_with(fn: Callable[..., T], inputs: Any) -> T:
    if isinstance(inputs, tuple):
        return fn(*inputs)
    if isinstance(inputs, dict):
        return fn(**inputs)
    return fn(inputs)
