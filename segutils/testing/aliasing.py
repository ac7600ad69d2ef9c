"""``check_returns_new_tensor``: a function returns a new tensor, not an argument or a view of one.

Whether two tensors share memory is visible only in the process that holds them: in two-process
grading this check runs in the student's process (the grader receives copies).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from torch import Tensor

from ._common import _tensors
from .variants import describe_call

__all__ = ["check_returns_new_tensor"]


def check_returns_new_tensor(fn: Callable[..., Any], /, *args: Any, name: str | None = None, **kwargs: Any) -> Tensor:
    """Check that ``fn(*args, **kwargs)`` returns a tensor sharing no memory with its tensor arguments.

    A tensor returned as it was given, or a view of one (``x.view(...)``, ``x[...]``, ``x.expand(...)``
    of an argument ``x``), shares the argument's storage: writing into one then changes the other.

    Returns:
        ``fn``'s output.

    Raises:
        AssertionError: the output is not a tensor, or shares memory with an argument (the message
            names the call and the argument).
    """
    if not callable(fn):
        raise TypeError(f"fn must be callable, got {type(fn).__name__}")
    call = describe_call(name or getattr(fn, "__name__", type(fn).__name__), args, kwargs)
    out = fn(*args, **kwargs)
    if not isinstance(out, Tensor):
        raise AssertionError(f"{call}: expected a tensor, got {type(out).__name__}")
    given = [(f"argument {i}", a) for i, a in enumerate(args)] + [(f"argument {k}", v) for k, v in kwargs.items()]
    for where, value in given:
        for path, t in _tensors(value):
            _check_not_shared(out, t, f"{where}{path}", call)
    return out


def _check_not_shared(out: Tensor, t: Tensor, label: str, call: str) -> None:
    if out is t:
        raise AssertionError(f"{call} returned its {label} itself: expected a new tensor")
    if out.numel() and t.numel() and out.untyped_storage().data_ptr() == t.untyped_storage().data_ptr():
        raise AssertionError(
            f"{call} returned a view of its {label} (they share memory): expected a new tensor "
            f"(copy it, e.g. with .clone())"
        )
