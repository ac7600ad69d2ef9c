"""``check_device_agnostic``: the function runs with its inputs on the ``meta`` device."""

from __future__ import annotations

import copy
import re
from collections.abc import Callable
from typing import Any

from torch import Tensor, nn
from torch.utils._python_dispatch import TorchDispatchMode

from ._common import _describe, _op_name, _tensors

__all__ = ["check_device_agnostic"]

_HOST_READ_MESSAGE = (
    "your code reads tensor values on the host (.item(), .tolist(), .numpy(), .cpu(), float(t), int(t), "
    "bool(t), `if t:`, or a function that does, like torch.allclose): on a GPU every such read makes the "
    "CPU wait for the GPU; keep the computation in tensor operations"
)
_CREATE_ON_DEVICE_HINT = (
    "pass device=x.device (and dtype=x.dtype) when you create a tensor, or use x.new_zeros(...), "
    "torch.zeros_like(x), ..."
)


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
            stray = [
                t for t in inputs if t.device.type != self.device and not (t.device.type == "cpu" and t.dim() == 0)
            ]
            if stray:
                raise AssertionError(
                    f"a tensor was created on {stray[0].device} (shape {tuple(stray[0].shape)}): {self.current} mixed "
                    f"it with tensors on the inputs' device ({self.device}); {_CREATE_ON_DEVICE_HINT}"
                )
        return func(*args, **kwargs)


def _explain_meta_failure(error: Exception, op: str | None, what: str) -> str:
    text = str(error)
    if any(
        s in text
        for s in (
            "cannot be called on meta tensors",
            "Cannot copy out of meta tensor",
            "meta device type tensor to numpy",
        )
    ):
        return _HOST_READ_MESSAGE
    if "is not on the expected device" in text or "Expected all tensors to be on the same device" in text:
        return f"a tensor was created on another device than the inputs': {_CREATE_ON_DEVICE_HINT} ({text})"
    if isinstance(error, NotImplementedError) and "meta" in text.lower():
        named = re.search(r"aten::\w+", text)
        op_name = named.group(0).replace("::", ".") if named else (op or "an operation")
        via = re.search(r"torch\.(\w+)\(\)", text)
        if via and via.group(1) not in op_name:
            op_name += f" (through torch.{via.group(1)})"
        return (
            f"your code uses {op_name}, whose result depends on the tensors' values (like nonzero, x[mask], "
            f"unique, bincount or torch.equal): it cannot run on the meta device, and on a GPU it makes the "
            f"CPU wait for the GPU"
        )
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
                f"{_CREATE_ON_DEVICE_HINT}"
            )
    return output
