"""Checks for graded tests: what a student's PyTorch code computes, and how it computes it.

The hidden tests of the course's nbgrader assignments and the package's own tests use these
helpers. Every check fails with an :class:`AssertionError` whose message is written for the
student reading autograder feedback: it says what was expected and what came back, never how
the reference solution works. Mistakes of the test author (a wrong argument type, say) raise
``TypeError``/``ValueError`` instead.

- :func:`assert_close`: shape, dtype, device, NaN/inf positions and values of a tensor.
- :func:`devices`: the devices to run a test on (the CPU, plus CUDA when available).
- :func:`count_ops`, :func:`total_ops`, :func:`assert_vectorized`: the aten operators a call
  dispatches; a Python loop over pixels makes their number grow with the image size.
- :func:`forbid_ops` with :data:`CONVOLUTION_OPS`, :data:`INTERPOLATION_OPS`, :data:`UNPOOL_OPS`
  and :data:`CROSS_ENTROPY_OPS`: the built-ins a from-scratch implementation must not use.
- :func:`assert_no_delegation`: the function does not call the course package (the answers).
- :func:`check_device_agnostic`: the function runs on the ``meta`` device (no GPU needed).
- :func:`no_host_sync`: on CUDA, the function never makes the host wait for the GPU.
- :func:`seed_everything`: seeds ``random``, NumPy and PyTorch.

Operator names. An aten operator is named by its overload packet as ``str()`` writes it:
``"aten.convolution"`` (``str(torch.ops.aten.convolution)``), not by overload
(``"aten.convolution.default"``). What the operator counters and :func:`forbid_ops` see is what
reaches PyTorch's Python dispatcher, *after* autograd: high-level composite operators are
already decomposed there (``F.conv2d`` shows up as ``aten.convolution``, ``F.cross_entropy`` as
``aten._log_softmax`` + ``aten.nll_loss2d_forward``) unless autograd is off for good
(``torch.inference_mode``), where ``aten.conv2d`` or ``aten.cross_entropy_loss`` show up
instead. The ``*_OPS`` constants list both levels, and their backward operators.
"""
from __future__ import annotations

import collections
import contextlib
import copy
import dis
import functools
import inspect
import math
import random
import re
import sys
import types
import unittest
from collections.abc import Callable, Iterable, Iterator, Sequence
from typing import Any, TypeVar, Union

import torch
from torch import Tensor, nn
from torch.utils._python_dispatch import TorchDispatchMode

__all__ = [
    "CONVOLUTION_OPS",
    "CROSS_ENTROPY_OPS",
    "INTERPOLATION_OPS",
    "UNPOOL_OPS",
    "assert_close",
    "assert_no_delegation",
    "assert_vectorized",
    "check_device_agnostic",
    "count_ops",
    "devices",
    "forbid_ops",
    "no_host_sync",
    "seed_everything",
    "total_ops",
]

T = TypeVar("T")
OpsSpec = Union[str, torch._ops.OpOverloadPacket, torch._ops.OpOverload, Iterable[Any]]

# Entries are matched as prefixes of the overload name ("aten.convolution" also catches
# aten.convolution_backward and aten.convolution_overrideable): see forbid_ops.
CONVOLUTION_OPS: tuple[str, ...] = (
    "aten.convolution",  # what F.conv2d, F.conv_transpose2d, nn.Conv2d... dispatch; + _backward
    "aten._convolution",  # + _convolution_double_backward, _convolution_mode
    "aten.conv1d", "aten.conv2d", "aten.conv3d",  # seen under torch.inference_mode
    "aten.conv_transpose1d", "aten.conv_transpose2d", "aten.conv_transpose3d",
    "aten.conv_tbc", "aten.conv_depthwise3d", "aten._conv_depthwise2d",
    "aten.cudnn_convolution", "aten.miopen_convolution", "aten.miopen_depthwise_convolution",
    "aten.mkldnn_convolution", "aten.mps_convolution", "aten._mps_convolution",
    "aten._nnpack_spatial_convolution", "aten.thnn_conv2d", "aten._slow_conv2d",
    "aten.slow_conv3d", "aten.slow_conv_dilated2d", "aten.slow_conv_dilated3d",
    "aten.slow_conv_transpose2d", "aten.slow_conv_transpose3d",
)
"""Convolutions, forward and backward (``F.conv1d/2d/3d``, ``F.conv_transpose*``, ``nn.Conv*``).
Not ``aten.im2col``/``aten.col2im`` (``F.unfold``/``F.fold``), matmul, einsum or scatter."""

INTERPOLATION_OPS: tuple[str, ...] = (
    "aten.upsample_nearest1d", "aten.upsample_nearest2d", "aten.upsample_nearest3d",
    "aten._upsample_nearest_exact1d", "aten._upsample_nearest_exact2d", "aten._upsample_nearest_exact3d",
    "aten.upsample_linear1d", "aten.upsample_bilinear2d", "aten.upsample_trilinear3d",
    "aten.upsample_bicubic2d", "aten._upsample_bilinear2d_aa", "aten._upsample_bicubic2d_aa",
    "aten._upsample_lanczos2d_aa",
    "aten.grid_sampler", "aten._grid_sampler_2d_cpu_fallback", "aten.cudnn_grid_sampler",
    "aten.affine_grid_generator", "aten.cudnn_affine_grid_generator",
)
"""Resizing built-ins, forward and backward (``F.interpolate`` in every mode, antialias too,
``nn.Upsample``, ``nn.UpsamplingBilinear2d/Nearest2d``, ``F.grid_sample``, ``F.affine_grid``)."""

UNPOOL_OPS: tuple[str, ...] = ("aten.max_unpool2d", "aten.max_unpool3d")
"""``F.max_unpool1d/2d/3d`` and ``nn.MaxUnpool*`` (their backward is a plain ``aten.gather``)."""

CROSS_ENTROPY_OPS: tuple[str, ...] = (
    "aten.cross_entropy_loss", "aten.nll_loss",  # nll_loss also catches nll_loss2d_forward, _backward, _nd
    "aten.log_softmax", "aten._log_softmax", "aten.special_log_softmax",
    "aten.softmax", "aten._softmax", "aten._safe_softmax", "aten.special_softmax", "aten._masked_softmax",
)
"""``F.cross_entropy``, ``nn.CrossEntropyLoss``, ``F.nll_loss``, ``log_softmax`` and ``softmax``
(functional, tensor method and module forms), forward and backward. ``logsumexp`` is allowed."""

# Which Python API a forbidden operator comes from, for the failure message (first match wins).
_BUILTIN_HINTS: tuple[tuple[str, str], ...] = (
    ("conv", "F.conv2d, F.conv_transpose2d, nn.Conv2d and nn.ConvTranspose2d"),
    ("upsample", "F.interpolate, nn.Upsample and nn.UpsamplingBilinear2d"),
    ("grid_sampler", "F.grid_sample"),
    ("affine_grid", "F.affine_grid"),
    ("unpool", "F.max_unpool2d and nn.MaxUnpool2d"),
    ("cross_entropy", "F.cross_entropy and nn.CrossEntropyLoss"),
    ("nll_loss", "F.nll_loss, F.cross_entropy and nn.CrossEntropyLoss"),
    ("log_softmax", "F.log_softmax, Tensor.log_softmax and F.cross_entropy"),
    ("softmax", "F.softmax, Tensor.softmax and nn.Softmax"),
)

# torch.testing.assert_close's defaults, by the dtype compared.
_DEFAULT_TOLERANCES: dict[torch.dtype, tuple[float, float]] = {
    torch.float16: (1e-3, 1e-5),
    torch.bfloat16: (1.6e-2, 1e-5),
    torch.float32: (1.3e-6, 1e-5),
    torch.float64: (1e-7, 1e-7),
}

_HOST_READ_MESSAGE = (
    "your code reads tensor values on the host (.item(), .tolist(), .numpy(), .cpu(), float(t), int(t), "
    "bool(t), `if t:`, or a function that does, like torch.allclose): on a GPU every such read makes the "
    "CPU wait for the GPU; keep the computation in tensor operations"
)
_CREATE_ON_DEVICE_HINT = (
    "pass device=x.device (and dtype=x.dtype) when you create a tensor, or use x.new_zeros(...), "
    "torch.zeros_like(x), ..."
)


# --------------------------------------------------------------------------------------------
# assert_close
# --------------------------------------------------------------------------------------------


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
            f"{prefix}{name} should have dtype {_dtype_name(expected.dtype)}, got {_dtype_name(actual.dtype)}")
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
    for what, in_a, in_e in (("NaN", a.isnan(), e.isnan()), ("+inf", a == math.inf, e == math.inf),
                             ("-inf", a == -math.inf, e == -math.inf)):
        wrong = in_a != in_e
        count = int(wrong.sum())
        if count:
            first = int(wrong.nonzero()[0, 0])
            return (f"{name} has {what} in the wrong places: {count} of {a.numel()} elements differ there; "
                    f"the first is{_index(first, shape)}, where {name} is {_value(a[first])} "
                    f"and the expected value is {_value(e[first])}")
    finite = a.isfinite() & e.isfinite()
    diff = torch.where(finite, (a - e).abs(), torch.zeros_like(a))
    bad = diff > atol + rtol * e.abs()
    count = int(bad.sum())
    if not count:
        return None
    worst = int(diff.argmax())
    rel = torch.where(finite & (e != 0), diff / e.abs(), torch.zeros_like(a))
    worst_rel = int(rel.argmax())
    return (f"{name} does not match the expected values: {count} of {a.numel()} elements differ by more than "
            f"the tolerance (rtol={rtol:g}, atol={atol:g}); the largest absolute difference is "
            f"{float(diff[worst]):.3g}{_index(worst, shape)} ({name} {_value(a[worst])}, expected "
            f"{_value(e[worst])}); the largest relative difference is {float(rel[worst_rel]):.3g}"
            f"{_index(worst_rel, shape)}")


def _exact_mismatch(actual: Tensor, expected: Tensor, name: str) -> str | None:
    shape, a, e = actual.shape, actual.flatten(), expected.flatten()
    wrong = a != e
    count = int(wrong.sum())
    if not count:
        return None
    first = int(wrong.nonzero()[0, 0])
    text = (f"{name} does not match the expected values exactly: {count} of {a.numel()} elements differ; "
            f"the first is{_index(first, shape)} ({name} {_value(a[first])}, expected {_value(e[first])})")
    if a.dtype != torch.bool:
        diff = (a.to(torch.int64) - e.to(torch.int64)).abs()
        worst = int(diff.argmax())
        text += f"; the largest absolute difference is {int(diff[worst])}{_index(worst, shape)}"
    return text


# --------------------------------------------------------------------------------------------
# devices, seeds
# --------------------------------------------------------------------------------------------


def devices() -> list[torch.device]:
    """The devices to run a test on: the CPU, then CUDA when it is available."""
    found = [torch.device("cpu")]
    if torch.cuda.is_available():
        found.append(torch.device("cuda"))
    return found


def seed_everything(seed: int) -> None:
    """Seed Python's ``random``, NumPy (when installed) and PyTorch (CPU and every GPU).

    Raises:
        TypeError: ``seed`` is not an int.
        ValueError: ``seed`` is negative or does not fit in 32 bits (NumPy's limit).
    """
    if isinstance(seed, bool) or not isinstance(seed, int):
        raise TypeError(f"seed must be an int, got {type(seed).__name__}")
    if not 0 <= seed < 2**32:
        raise ValueError(f"seed must be in [0, 2**32), got {seed}")
    random.seed(seed)
    try:
        import numpy
    except ImportError:  # pragma: no cover - numpy is a dependency, but seeding must not need it
        pass
    else:
        numpy.random.seed(seed)
    torch.manual_seed(seed)


# --------------------------------------------------------------------------------------------
# Counting and forbidding aten operators
# --------------------------------------------------------------------------------------------


def _op_name(func: Any) -> str:
    packet = getattr(func, "overloadpacket", None)
    return str(packet if packet is not None else func)


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
            raise TypeError(f"make_inputs failed for size {h}x{w} ({type(error).__name__}: {error}); "
                            "the call is assert_vectorized(fn, make_inputs, ...)") from error

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
        f"Use whole-tensor operations instead of Python loops (most growth: {top})")


def _patterns(ops: OpsSpec) -> tuple[str, ...]:
    if isinstance(ops, (str, torch._ops.OpOverloadPacket, torch._ops.OpOverload)):
        ops = (ops,)
    patterns = []
    for op in ops:
        if isinstance(op, (torch._ops.OpOverloadPacket, torch._ops.OpOverload)):
            patterns.append(str(op))
        elif isinstance(op, str):
            pattern = op.strip().replace("::", ".")
            if not pattern:
                raise ValueError("an operator name must not be empty")
            patterns.append(pattern if "." in pattern else f"aten.{pattern}")
        else:
            raise TypeError(f"operators are given as names like 'aten.convolution' or torch.ops.aten.* objects, "
                            f"got {type(op).__name__}")
    if not patterns:
        raise ValueError("no operator to forbid")
    return tuple(patterns)


def _is_ops_spec(x: Any) -> bool:
    return isinstance(x, (str, torch._ops.OpOverloadPacket, torch._ops.OpOverload, tuple, list, set, frozenset))


def _forbidden_message(op: str) -> str:
    hint = next((text for key, text in _BUILTIN_HINTS if key in op), None)
    used_by = f" (used by {hint})" if hint else ""
    return (f"your implementation called the forbidden operation {op}{used_by}; write it without "
            f"{'these built-ins' if hint else 'it'}, from elementary tensor operations")


class _ForbidOps(TorchDispatchMode):
    """Raise on the first forbidden operator; raise again on exit if the code swallowed that error."""

    def __init__(self, patterns: tuple[str, ...]) -> None:
        super().__init__()
        self.patterns = patterns
        self.violation: str | None = None

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        if str(func).startswith(self.patterns):
            self.violation = self.violation or _op_name(func)
            raise AssertionError(_forbidden_message(_op_name(func)))
        return func(*args, **(kwargs or {}))

    def __exit__(self, exc_type, exc_value, traceback):
        result = super().__exit__(exc_type, exc_value, traceback)
        if exc_type is None and self.violation is not None:
            raise AssertionError(_forbidden_message(self.violation))
        return result


def forbid_ops(fn_or_ops: Any, ops: OpsSpec | None = None, /, *args: Any, **kwargs: Any) -> Any:
    """Fail if a forbidden aten operator is dispatched; as a call or as a context manager.

    Two forms::

        out = forbid_ops(fn, CONVOLUTION_OPS, x, weight)   # runs fn(x, weight), returns its output
        with forbid_ops(CONVOLUTION_OPS):                  # checks everything in the block,
            my_conv(x, weight).sum().backward()            # backward included

    Operators are given as a name, an ``OpOverloadPacket``/``OpOverload`` or an iterable of
    them. A name is matched as a prefix of the dispatched overload's name: ``"aten.convolution"``
    catches ``aten.convolution.default`` and ``aten.convolution_backward.default``;
    ``"aten::conv2d"`` and ``"conv2d"`` mean ``"aten.conv2d"``. See the module docstring for
    what is dispatched: use the ``*_OPS`` constants, which are checked against the built-ins.

    Raises:
        AssertionError: a forbidden operator was dispatched (raised again when the block or
            ``fn`` returns, if the code caught the first error).
        TypeError, ValueError: ``ops`` is empty or not made of operator names.
    """
    if _is_ops_spec(fn_or_ops):
        if ops is not None or args or kwargs:
            raise TypeError("forbid_ops(ops) is a context manager; to run a function: forbid_ops(fn, ops, *args)")
        return _ForbidOps(_patterns(fn_or_ops))
    if not callable(fn_or_ops):
        raise TypeError(f"forbid_ops(fn, ops, *args): fn must be callable, got {type(fn_or_ops).__name__}")
    if ops is None:
        raise TypeError("forbid_ops(fn, ops, *args): ops is missing")
    with _ForbidOps(_patterns(ops)):
        return fn_or_ops(*args, **kwargs)


# --------------------------------------------------------------------------------------------
# assert_no_delegation
# --------------------------------------------------------------------------------------------


def _in_modules(module: str, prefixes: Iterable[str]) -> bool:
    return any(module == p or module.startswith(p + ".") for p in prefixes)


def _describe(fn: Any) -> str:
    if isinstance(fn, nn.Module):
        return f"{type(fn).__name__}.forward"
    return getattr(fn, "__qualname__", None) or getattr(fn, "__name__", None) or type(fn).__name__


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
        raise TypeError("forbidden_modules and allowed_modules must be sequences of module names, "
                        "forbidden_modules not empty")
    what = _describe(fn)
    references = _static_references(fn, forbidden, allowed)
    if references:
        raise AssertionError(
            f"{what} should do the work itself, but its code uses {', '.join(references)}; the course package "
            f"and libraries that do the job ({', '.join(forbidden)}) may not be used here: write it yourself")

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
            f"that do the job ({', '.join(forbidden)}) may not be used here: write it yourself")
    return output


# --------------------------------------------------------------------------------------------
# Device checks
# --------------------------------------------------------------------------------------------


def _to_meta(obj: Any) -> Any:
    """A copy of ``obj`` with every tensor and module on the ``meta`` device."""
    if isinstance(obj, nn.Module):
        return copy.deepcopy(obj).to("meta")
    if isinstance(obj, Tensor):
        meta = obj.detach().to("meta")
        if isinstance(obj, nn.Parameter):
            return nn.Parameter(meta, requires_grad=obj.requires_grad)
        return meta.requires_grad_(obj.requires_grad) if obj.is_leaf else meta
    if isinstance(obj, tuple) and hasattr(obj, "_fields"):  # a namedtuple
        return type(obj)(*(_to_meta(x) for x in obj))
    if isinstance(obj, (list, tuple)):
        return type(obj)(_to_meta(x) for x in obj)
    if isinstance(obj, dict):
        return type(obj)((k, _to_meta(v)) for k, v in obj.items())
    return obj


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


class _WatchDevices(TorchDispatchMode):
    """Fail on an operator that mixes devices (a 0-dim CPU tensor is allowed, as on CUDA);
    remember the operator running, to name it if it fails."""

    def __init__(self, device: str) -> None:
        super().__init__()
        self.device = device
        self.current: str | None = None

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        self.current = _op_name(func)
        inputs = [t for _, t in _tensors([list(args), kwargs])]
        if any(t.device.type == self.device for t in inputs):
            stray = [t for t in inputs if t.device.type != self.device and not (t.device.type == "cpu" and t.dim() == 0)]
            if stray:
                raise AssertionError(
                    f"a tensor was created on {stray[0].device} (shape {tuple(stray[0].shape)}): {self.current} mixed "
                    f"it with tensors on the inputs' device ({self.device}); {_CREATE_ON_DEVICE_HINT}")
        return func(*args, **kwargs)


def _explain_meta_failure(error: Exception, op: str | None, what: str) -> str:
    text = str(error)
    if any(s in text for s in ("cannot be called on meta tensors", "Cannot copy out of meta tensor",
                               "meta device type tensor to numpy")):
        return _HOST_READ_MESSAGE
    if "is not on the expected device" in text or "Expected all tensors to be on the same device" in text:
        return f"a tensor was created on another device than the inputs': {_CREATE_ON_DEVICE_HINT} ({text})"
    if isinstance(error, NotImplementedError) and "meta" in text.lower():
        named = re.search(r"aten::\w+", text)
        op_name = named.group(0).replace("::", ".") if named else (op or "an operation")
        via = re.search(r"torch\.(\w+)\(\)", text)
        if via and via.group(1) not in op_name:
            op_name += f" (through torch.{via.group(1)})"
        return (f"your code uses {op_name}, whose result depends on the tensors' values (like nonzero, x[mask], "
                f"unique, bincount or torch.equal): it cannot run on the meta device, and on a GPU it makes the "
                f"CPU wait for the GPU")
    return f"{what} failed with its inputs on the meta device (tensors without data): {type(error).__name__}: {text}"


def check_device_agnostic(fn: Callable[..., Any], /, *args: Any, **kwargs: Any) -> Any:
    """Run ``fn`` with every tensor and module of its arguments on the ``meta`` device.

    The ``meta`` device has tensors without data, so code that hard-codes a device, creates
    tensors without ``device=``, or reads values on the host fails there, as it would (or would
    stall) on a GPU, and this check needs no GPU. Tensors in nested lists, tuples and dicts are
    moved; modules (``fn`` itself when it is an ``nn.Module``) are deep-copied and moved. Every
    tensor in the output (and every parameter and buffer of an output module) must be on
    ``meta``. Tensors ``fn`` reaches otherwise (globals, closures) are not moved.

    Returns:
        ``fn``'s output, on ``meta``.

    Raises:
        AssertionError: with a message for the usual causes: values read on the host
            (``.item()``, ``.tolist()``, ``.numpy()``, ``if t:``), a tensor created on the CPU
            ("pass device=x.device"), an operator whose result depends on values, an output
            on another device; any other exception is reported as is, with its type.
    """
    if not callable(fn):
        raise TypeError(f"fn must be callable, got {type(fn).__name__}")
    what = _describe(fn)
    meta_fn, meta_args, meta_kwargs = _to_meta(fn), _to_meta(args), _to_meta(kwargs)
    watch = _WatchDevices("meta")
    try:
        with watch:
            output = meta_fn(*meta_args, **meta_kwargs)
    except AssertionError:
        raise
    except Exception as error:
        raise AssertionError(_explain_meta_failure(error, watch.current, what)) from error
    for path, t in _tensors(output):
        if not t.is_meta:
            place = f" (output{path})" if path else ""
            raise AssertionError(
                f"{what} returned a tensor on {t.device}{place} although its inputs were on the meta device: "
                f"{_CREATE_ON_DEVICE_HINT}")
    return output


_SYNC_MESSAGE = (
    "your code made the CPU wait for the GPU (a synchronising CUDA operation: reading a value with .item(), "
    ".tolist(), .cpu(), float(t), `if t:` or print, or an operation whose output size depends on the values, "
    "like nonzero or x[mask]): keep the computation on the GPU"
)


@contextlib.contextmanager
def _sync_errors() -> Iterator[None]:
    previous = torch.cuda.get_sync_debug_mode()
    torch.cuda.set_sync_debug_mode("error")
    try:
        yield
    except RuntimeError as error:
        if "synchroniz" in str(error):
            raise AssertionError(f"{_SYNC_MESSAGE} (CUDA: {str(error).strip()})") from error
        raise
    finally:
        torch.cuda.set_sync_debug_mode(previous)


def no_host_sync(fn: Callable[..., T] | None = None, /, *args: Any, **kwargs: Any) -> Any:
    """Fail if CUDA code synchronises with the host; as a call or as a context manager.

    Two forms::

        out = no_host_sync(fn, x_cuda)      # runs fn(x_cuda), returns its output
        with no_host_sync():                # checks everything in the block
            out = fn(x_cuda)

    Runs under ``torch.cuda.set_sync_debug_mode("error")`` (the previous mode is restored).
    The caller passes CUDA tensors: nothing is moved. Warm up first (call once outside): the
    first call may synchronise legitimately (cuDNN autotuning, lazy initialisation).

    Raises:
        unittest.SkipTest: CUDA is not available (pytest reports the test as skipped).
        AssertionError: a synchronising CUDA operation ran.
        ValueError: a tensor argument is not on a CUDA device.
    """
    if not torch.cuda.is_available():
        raise unittest.SkipTest("CUDA not available")
    if fn is None:
        if args or kwargs:
            raise TypeError("no_host_sync() as a context manager takes no arguments")
        return _sync_errors()
    if not callable(fn):
        raise TypeError(f"fn must be callable, got {type(fn).__name__}")
    for path, t in _tensors({**dict(enumerate(args)), **kwargs}):
        if t.device.type != "cuda":
            raise ValueError(f"no_host_sync checks CUDA code: argument {path} is on {t.device}; pass CUDA tensors")
    with _sync_errors():
        return fn(*args, **kwargs)
