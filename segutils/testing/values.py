"""``assert_close``: shape, dtype, device, NaN/inf positions and values of a tensor, with a message
that says what differs and where."""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import Tensor

__all__ = ["assert_close"]

# torch.testing.assert_close's defaults, by the dtype compared.
_DEFAULT_TOLERANCES: dict[torch.dtype, tuple[float, float]] = {
    torch.float16: (1e-3, 1e-5),
    torch.bfloat16: (1.6e-2, 1e-5),
    torch.float32: (1.3e-6, 1e-5),
    torch.float64: (1e-7, 1e-7),
}


def _dtype_name(dtype: torch.dtype) -> str:
    return str(dtype).removeprefix("torch.")


def _index(flat: int, shape: torch.Size) -> str:
    """``" at index (i, j)"`` for a flat position in ``shape``; empty for a 0-dim tensor."""
    if len(shape) == 0:
        return ""
    position = []
    for size in reversed(shape):
        flat, rest = divmod(flat, size)
        position.append(rest)
    return f" at index {tuple(reversed(position))}"


def _value(x: Tensor) -> str:
    v = x.item()
    return f"{v:.6g}" if isinstance(v, float) else str(v)


def assert_close(
    actual: Any,
    expected: Tensor,
    *,
    rtol: float | None = None,
    atol: float | None = None,
    name: str = "output",
    msg: str | None = None,
    check_dtype: bool = True,
    check_device: bool = True,
) -> None:
    r"""Check that a tensor equals the expected one, and say precisely how it differs if not.

    Checked in order: ``actual`` is a tensor; its shape; dtype (if ``check_dtype``); device
    (if ``check_device``); the positions of NaNs and of infinities; the values, elementwise
    :math:`|actual - expected| \le atol + rtol \cdot |expected|`. Integer and bool tensors are
    compared exactly. Tensors on the ``meta`` device have no values: only their metadata is
    checked. On a value mismatch the message gives how many elements differ out of how many,
    the largest absolute difference and where it is (with both values there), and the largest
    relative difference.

    Args:
        actual: the tensor to check (the student's result).
        expected: the reference tensor.
        rtol, atol: tolerances; ``None`` takes :func:`torch.testing.assert_close`'s default for
            the dtype compared (float32: ``1.3e-6, 1e-5``; float64: ``1e-7, 1e-7``; float16:
            ``1e-3, 1e-5``; bfloat16: ``1.6e-2, 1e-5``).
        name: what ``actual`` is, in the message (``"output"``, ``"logits"``...).
        msg: context put before the message (the case that was tested, say).
        check_dtype: if ``False``, both are compared in their promoted dtype.
        check_device: if ``False``, ``expected`` is moved to ``actual``'s device.

    Raises:
        AssertionError: ``actual`` is not a tensor, or differs from ``expected``.
        TypeError: ``expected`` is not a tensor.
        ValueError: a tolerance is negative.

    Example::

        >>> assert_close(torch.tensor([1.0, 2.5]), torch.tensor([1.0, 2.0]), name="logits")
        Traceback (most recent call last):
        AssertionError: logits does not match the expected values: 1 of 2 elements differ ...
    """
    prefix = f"{msg}: " if msg else ""
    if not isinstance(expected, Tensor):
        raise TypeError(f"expected must be a torch.Tensor, got {type(expected).__name__}")
    if not isinstance(actual, Tensor):
        raise AssertionError(f"{prefix}{name} should be a torch.Tensor, got {type(actual).__name__}")
    for tol_name, tol in (("rtol", rtol), ("atol", atol)):
        if tol is not None and not tol >= 0:
            raise ValueError(f"{tol_name} must be a non-negative number, got {tol}")
    if actual.shape != expected.shape:
        raise AssertionError(f"{prefix}{name} should have shape {tuple(expected.shape)}, got {tuple(actual.shape)}")
    if check_dtype and actual.dtype != expected.dtype:
        raise AssertionError(
            f"{prefix}{name} should have dtype {_dtype_name(expected.dtype)}, got {_dtype_name(actual.dtype)}"
        )
    if check_device and actual.device != expected.device:
        raise AssertionError(f"{prefix}{name} should be on device {expected.device}, got {actual.device}")
    if actual.is_meta or expected.is_meta:
        return
    actual, expected = actual.detach(), expected.detach().to(actual.device)
    dtype = torch.promote_types(actual.dtype, expected.dtype)
    if actual.device.type not in ("cpu", "cuda"):  # float64 is not supported everywhere (mps)
        actual, expected = actual.cpu(), expected.cpu()
    if dtype.is_complex:
        raise TypeError("assert_close does not compare complex tensors")
    if dtype.is_floating_point:
        default_rtol, default_atol = _DEFAULT_TOLERANCES.get(dtype, (1.3e-6, 1e-5))
        rtol = default_rtol if rtol is None else rtol
        atol = default_atol if atol is None else atol
        problem = _float_mismatch(actual.to(torch.float64), expected.to(torch.float64), rtol, atol, name)
    else:
        problem = _exact_mismatch(actual.to(dtype), expected.to(dtype), name)
    if problem:
        raise AssertionError(prefix + problem)


def _float_mismatch(actual: Tensor, expected: Tensor, rtol: float, atol: float, name: str) -> str | None:
    shape, a, e = actual.shape, actual.flatten(), expected.flatten()
    for what, in_a, in_e in (
        ("NaN", a.isnan(), e.isnan()),
        ("+inf", a == math.inf, e == math.inf),
        ("-inf", a == -math.inf, e == -math.inf),
    ):
        wrong = in_a != in_e
        count = int(wrong.sum())
        if count:
            first = int(wrong.nonzero()[0, 0])
            return (
                f"{name} has {what} in the wrong places: {count} of {a.numel()} elements differ there; "
                f"the first is{_index(first, shape)}, where {name} is {_value(a[first])} "
                f"and the expected value is {_value(e[first])}"
            )
    finite = a.isfinite() & e.isfinite()
    diff = torch.where(finite, (a - e).abs(), torch.zeros_like(a))
    bad = diff > atol + rtol * e.abs()
    count = int(bad.sum())
    if not count:
        return None
    worst = int(diff.argmax())
    rel = torch.where(finite & (e != 0), diff / e.abs(), torch.zeros_like(a))
    worst_rel = int(rel.argmax())
    return (
        f"{name} does not match the expected values: {count} of {a.numel()} elements differ by more than "
        f"the tolerance (rtol={rtol:g}, atol={atol:g}); the largest absolute difference is "
        f"{float(diff[worst]):.3g}{_index(worst, shape)} ({name} {_value(a[worst])}, expected "
        f"{_value(e[worst])}); the largest relative difference is {float(rel[worst_rel]):.3g}"
        f"{_index(worst_rel, shape)}"
    )


def _exact_mismatch(actual: Tensor, expected: Tensor, name: str) -> str | None:
    shape, a, e = actual.shape, actual.flatten(), expected.flatten()
    wrong = a != e
    count = int(wrong.sum())
    if not count:
        return None
    first = int(wrong.nonzero()[0, 0])
    text = (
        f"{name} does not match the expected values exactly: {count} of {a.numel()} elements differ; "
        f"the first is{_index(first, shape)} ({name} {_value(a[first])}, expected {_value(e[first])})"
    )
    if a.dtype != torch.bool:
        diff = (a.to(torch.int64) - e.to(torch.int64)).abs()
        worst = int(diff.argmax())
        text += f"; the largest absolute difference is {int(diff[worst])}{_index(worst, shape)}"
    return text
