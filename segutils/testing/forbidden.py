"""``forbid_ops``, ``check_no_builtin`` and the operator sets a from-scratch implementation must not dispatch."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from typing import Any

import torch
from torch.utils._python_dispatch import TorchDispatchMode

from ._common import _op_name
from .delegation import assert_no_delegation

__all__ = [
    "CONVOLUTION_OPS",
    "CROSS_ENTROPY_OPS",
    "INTERPOLATION_OPS",
    "UNPOOL_OPS",
    "check_no_builtin",
    "forbid_ops",
]

OpsSpec = str | torch._ops.OpOverloadPacket | torch._ops.OpOverload | Iterable[Any]

# Entries are matched as prefixes of the overload name ("aten.convolution" also catches
# aten.convolution_backward and aten.convolution_overrideable): see forbid_ops.
CONVOLUTION_OPS: tuple[str, ...] = (
    "aten.convolution",  # what F.conv2d, F.conv_transpose2d, nn.Conv2d... dispatch; + _backward
    "aten._convolution",  # + _convolution_double_backward, _convolution_mode
    "aten.conv1d",
    "aten.conv2d",
    "aten.conv3d",  # seen under torch.inference_mode
    "aten.conv_transpose1d",
    "aten.conv_transpose2d",
    "aten.conv_transpose3d",
    "aten.conv_tbc",
    "aten.conv_depthwise3d",
    "aten._conv_depthwise2d",
    "aten.cudnn_convolution",
    "aten.miopen_convolution",
    "aten.miopen_depthwise_convolution",
    "aten.mkldnn_convolution",
    "aten.mps_convolution",
    "aten._mps_convolution",
    "aten._nnpack_spatial_convolution",
    "aten.thnn_conv2d",
    "aten._slow_conv2d",
    "aten.slow_conv3d",
    "aten.slow_conv_dilated2d",
    "aten.slow_conv_dilated3d",
    "aten.slow_conv_transpose2d",
    "aten.slow_conv_transpose3d",
)
"""Convolutions, forward and backward (``F.conv1d/2d/3d``, ``F.conv_transpose*``, ``nn.Conv*``).
Not ``aten.im2col``/``aten.col2im`` (``F.unfold``/``F.fold``), matmul, einsum or scatter."""

INTERPOLATION_OPS: tuple[str, ...] = (
    "aten.upsample_nearest1d",
    "aten.upsample_nearest2d",
    "aten.upsample_nearest3d",
    "aten._upsample_nearest_exact1d",
    "aten._upsample_nearest_exact2d",
    "aten._upsample_nearest_exact3d",
    "aten.upsample_linear1d",
    "aten.upsample_bilinear2d",
    "aten.upsample_trilinear3d",
    "aten.upsample_bicubic2d",
    "aten._upsample_bilinear2d_aa",
    "aten._upsample_bicubic2d_aa",
    "aten._upsample_lanczos2d_aa",
    "aten.grid_sampler",
    "aten._grid_sampler_2d_cpu_fallback",
    "aten.cudnn_grid_sampler",
    "aten.affine_grid_generator",
    "aten.cudnn_affine_grid_generator",
)
"""Resizing built-ins, forward and backward (``F.interpolate`` in every mode, antialias too,
``nn.Upsample``, ``nn.UpsamplingBilinear2d/Nearest2d``, ``F.grid_sample``, ``F.affine_grid``)."""

UNPOOL_OPS: tuple[str, ...] = ("aten.max_unpool2d", "aten.max_unpool3d")
"""``F.max_unpool1d/2d/3d`` and ``nn.MaxUnpool*`` (their backward is a plain ``aten.gather``)."""

CROSS_ENTROPY_OPS: tuple[str, ...] = (
    "aten.cross_entropy_loss",
    "aten.nll_loss",  # nll_loss also catches nll_loss2d_forward, _backward, _nd
    "aten.log_softmax",
    "aten._log_softmax",
    "aten.special_log_softmax",
    "aten.softmax",
    "aten._softmax",
    "aten._safe_softmax",
    "aten.special_softmax",
    "aten._masked_softmax",
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
            raise TypeError(
                f"operators are given as names like 'aten.convolution' or torch.ops.aten.* objects, "
                f"got {type(op).__name__}"
            )
    if not patterns:
        raise ValueError("no operator to forbid")
    return tuple(patterns)


def _is_ops_spec(x: Any) -> bool:
    return isinstance(x, (str, torch._ops.OpOverloadPacket, torch._ops.OpOverload, tuple, list, set, frozenset))


def _forbidden_message(op: str) -> str:
    hint = next((text for key, text in _BUILTIN_HINTS if key in op), None)
    used_by = f" (used by {hint})" if hint else ""
    return (
        f"your implementation called the forbidden operation {op}{used_by}; write it without "
        f"{'these built-ins' if hint else 'it'}, from elementary tensor operations"
    )


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
    ``"aten::conv2d"`` and ``"conv2d"`` mean ``"aten.conv2d"``. See the :mod:`segutils.testing`
    docstring for what is dispatched: use the ``*_OPS`` constants, which are checked against the built-ins.

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


def check_no_builtin(
    fn: Callable[..., Any],
    ops: OpsSpec,
    /,
    *args: Any,
    backward: bool = True,
    forbidden_modules: Sequence[str] = ("segutils", "torchmetrics"),
    **kwargs: Any,
) -> Any:
    """Check that ``fn`` does the work itself: no forbidden operator, forward or backward, no delegation.

    Runs ``fn(*args, **kwargs)`` under :func:`forbid_ops` (``ops``, e.g. ``CONVOLUTION_OPS``), then,
    if ``backward`` and the output requires grad, ``output.sum().backward()`` under it too (a
    built-in called inside a custom ``autograd.Function``'s backward is caught); then runs it
    again under :func:`~segutils.testing.assert_no_delegation` (no call into the course package).
    Gradients are not checked here: a function whose output does not require grad passes.

    Returns:
        ``fn``'s output (of the first call).

    Raises:
        AssertionError: a forbidden operator was dispatched, or the course package was called.
    """
    if not callable(fn):
        raise TypeError(f"check_no_builtin(fn, ops, *args): fn must be callable, got {type(fn).__name__}")
    with _ForbidOps(_patterns(ops)):
        out = fn(*args, **kwargs)
        if backward:
            outs = out if isinstance(out, (tuple, list)) else [out]
            grads = [o for o in outs if isinstance(o, torch.Tensor) and o.requires_grad and o.is_floating_point()]
            if grads:
                sum(o.sum() for o in grads).backward()
    assert_no_delegation(fn, *_detached(args), forbidden_modules=forbidden_modules, **_detached(kwargs))
    return out


def _detached(obj: Any) -> Any:
    if isinstance(obj, torch.Tensor):
        return obj.detach()
    if isinstance(obj, dict):
        return {k: _detached(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)) and not hasattr(obj, "_fields"):
        return type(obj)(_detached(x) for x in obj)
    return obj
