"""Counting the aten operators a call dispatches, and ``assert_vectorized``: their number must not
grow with the image size (a Python loop over pixels makes it grow)."""

from __future__ import annotations

import collections
from collections.abc import Callable, Sequence
from typing import Any

from torch.utils._python_dispatch import TorchDispatchMode

from ._common import _call_with, _op_name, _positional_arity

__all__ = ["assert_vectorized", "count_ops", "total_ops"]


class _CountOps(TorchDispatchMode):
    def __init__(self) -> None:
        super().__init__()
        self.counts: collections.Counter[str] = collections.Counter()

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        self.counts[_op_name(func)] += 1
        return func(*args, **(kwargs or {}))


def count_ops(fn: Callable[..., Any], *args: Any, **kwargs: Any) -> collections.Counter[str]:
    """Count the aten operators that ``fn(*args, **kwargs)`` dispatches.

    The keys are overload packet names (``"aten.convolution"``, ``"aten.add"``; see the module
    docstring). Backward operators are counted too if ``fn`` calls ``backward()``; the output
    of ``fn`` is discarded.

    Example::

        >>> count_ops(torch.nn.functional.conv2d, torch.randn(1, 2, 5, 5), torch.randn(3, 2, 3, 3))
        Counter({'aten.convolution': 1})
    """
    if not callable(fn):
        raise TypeError(f"fn must be callable, got {type(fn).__name__}")
    with _CountOps() as mode:
        fn(*args, **kwargs)
    return mode.counts


def total_ops(counter: collections.Counter[str]) -> int:
    """The number of operators dispatched, from a :func:`count_ops` counter."""
    if not isinstance(counter, collections.Counter):
        raise TypeError(f"counter must be a collections.Counter (from count_ops), got {type(counter).__name__}")
    return sum(counter.values())


def assert_vectorized(
    fn: Callable[..., Any],
    make_inputs: Callable[..., Any],
    sizes: Sequence[int | tuple[int, int]] = ((8, 8), (16, 16)),
    name: str | None = None,
    tolerance: int = 0,
) -> None:
    """Check that the number of operators ``fn`` dispatches does not grow with the image size.

    A Python loop over pixels (or rows, or windows) dispatches operators per iteration; a
    vectorised implementation dispatches the same ones whatever ``H`` and ``W``. ``fn`` is
    called once uncounted (lazy initialisation may dispatch extra operators), then once per size.

    Args:
        fn: the function under test.
        make_inputs: ``make_inputs(h, w)`` (or ``make_inputs(size)`` if it takes one positional
            parameter: square images) returns ``fn``'s arguments: a tuple of positional
            arguments, a dict of keyword arguments, or a single argument.
        sizes: at least two image sizes ``(h, w)`` (or ints, for square images), smallest first.
        name: what ``fn`` is, in the message (default: its ``__name__``).
        tolerance: how many more operators the larger sizes may dispatch.

    Raises:
        AssertionError: more operators were dispatched at a larger size.
        TypeError, ValueError: bad arguments, or ``make_inputs`` failed.
    """
    if not callable(fn) or not callable(make_inputs):
        raise TypeError("assert_vectorized(fn, make_inputs, ...) needs two callables")
    sizes = [(s, s) if isinstance(s, int) else tuple(s) for s in sizes]
    if len(sizes) < 2 or any(len(s) != 2 or not all(isinstance(v, int) and v > 0 for v in s) for s in sizes):
        raise ValueError(f"sizes must hold at least two (h, w) pairs of positive ints, got {sizes}")
    arity = _positional_arity(make_inputs)
    if arity == 1 and any(h != w for h, w in sizes):
        raise ValueError(f"make_inputs takes one size (square images), but sizes holds non-square ones: {sizes}")
    name = name or getattr(fn, "__name__", type(fn).__name__)

    def inputs(h: int, w: int) -> Any:
        try:
            return make_inputs(h) if arity == 1 else make_inputs(h, w)
        except Exception as error:
            raise TypeError(
                f"make_inputs failed for size {h}x{w} ({type(error).__name__}: {error}); "
                "the call is assert_vectorized(fn, make_inputs, ...)"
            ) from error

    _call_with(fn, inputs(*sizes[0]))
    counts = [count_ops(_call_with, fn, inputs(h, w)) for h, w in sizes]
    totals = [total_ops(c) for c in counts]
    grown = max(range(1, len(sizes)), key=lambda i: totals[i])
    if totals[grown] <= totals[0] + tolerance:
        return
    by_size = ", ".join(f"{t} at {h}\u00d7{w}" for t, (h, w) in zip(totals, sizes))
    growth = sorted(((counts[grown][op] - counts[0][op], op) for op in counts[grown]), reverse=True)
    top = ", ".join(f"{op} {counts[0][op]} \u2192 {counts[grown][op]}" for d, op in growth[:3] if d > 0)
    raise AssertionError(
        f"{name}: the number of PyTorch operations grows with the image size ({by_size}): loop over pixels? "
        f"Use whole-tensor operations instead of Python loops (most growth: {top})"
    )
