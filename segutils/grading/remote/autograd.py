"""Gradients across the process boundary.

A proxied call whose tensor arguments require grad (with grad mode on) is a
``torch.autograd.Function`` in the grader: ``forward`` sends the inputs (``requires_grad`` kept) and
the student's process runs the function with autograd recording, keeps the graph, and returns the
outputs; ``backward`` sends the grad-outputs and the student's process answers
``torch.autograd.grad(outputs, inputs, grad_outputs)``. ``torch.autograd.gradcheck`` then checks the
student's function as a black box, in float64 end to end. Outputs that do not require grad in the
student's process do not require grad in the grader either (a detached result stays detached).
Double backward is not supported (``once_differentiable``).
"""

from __future__ import annotations

import itertools
from collections.abc import Iterator
from typing import Any

import torch
from torch.autograd.function import once_differentiable


def tensors_in(value: Any, depth: int = 0) -> Iterator[torch.Tensor]:
    """The tensors of ``value`` (nested lists, tuples and dict values) in a fixed order."""
    if depth > 64:
        return
    if isinstance(value, torch.Tensor):
        yield value
    elif isinstance(value, (list, tuple)):
        for item in value:
            yield from tensors_in(item, depth + 1)
    elif isinstance(value, dict):
        for item in value.values():
            yield from tensors_in(item, depth + 1)


def replace_tensors(value: Any, new: Iterator[torch.Tensor], depth: int = 0) -> Any:
    """``value`` with its tensors (in :func:`tensors_in` order) replaced by the next ones of ``new``."""
    if depth > 64:
        return value
    if isinstance(value, torch.Tensor):
        return next(new)
    if isinstance(value, list):
        return [replace_tensors(v, new, depth + 1) for v in value]
    if isinstance(value, tuple) and not isinstance(value, torch.Size):
        return tuple(replace_tensors(v, new, depth + 1) for v in value)
    if isinstance(value, dict):
        return {k: replace_tensors(v, new, depth + 1) for k, v in value.items()}
    return value


def call(endpoint: Any, target: Any, args: tuple, kwargs: dict) -> Any:
    """Call the student's ``target`` with ``args``/``kwargs``; through the bridge when gradients may flow."""
    from segutils.grading.remote import probes

    foreign = _foreign_dispatch_modes()
    if foreign:
        raise RuntimeError(
            f"this test watches PyTorch's dispatcher ({', '.join(foreign)}) around a call of the student's code, "
            "which runs in the student's process in two-process grading, where the grader cannot see it: use the "
            "segutils.testing checks (count_ops, forbid_ops, run_on_fake_cuda, check_devices_and_dtypes...), "
            "which run where the code runs"
        )
    if probes.ACTIVE:
        return probes.remote_call(endpoint, target, args, kwargs)
    inputs = [t for t in tensors_in((args, kwargs)) if t.requires_grad]
    if not (inputs and torch.is_grad_enabled()):
        return endpoint.request("call", target=target, args=list(args), kwargs=kwargs)
    box: dict = {}
    outputs = _Bridge.apply(endpoint, target, list(args), kwargs, box, *inputs)
    value = box.pop("value")
    differentiable = iter(outputs[:-1])  # the last one is a placeholder (see _Bridge.forward)
    return replace_tensors(value, differentiable)


def _foreign_dispatch_modes() -> list[str]:
    """The dispatch modes active in this (the grader's) process other than those of ``segutils.testing``."""
    from torch.utils._python_dispatch import _get_current_dispatch_mode_stack

    return [
        type(m).__name__
        for m in _get_current_dispatch_mode_stack()
        if not type(m).__module__.startswith("segutils.testing")
    ]


class _Bridge(torch.autograd.Function):
    @staticmethod
    def forward(
        ctx: Any,
        endpoint: Any,
        target: Any,
        args: list,
        kwargs: dict,
        box: dict,  # type: ignore[override]
        *inputs: torch.Tensor,
    ) -> tuple[torch.Tensor, ...]:
        answer = endpoint.request("gcall", target=target, args=args, kwargs=kwargs)
        if not (isinstance(answer, dict) and isinstance(answer.get("gid"), int)):
            raise RuntimeError("the student's process answered a gradient-tracked call without its graph id")
        value = answer.get("v")
        outs = list(tensors_in(value))
        ctx.endpoint, ctx.gid = endpoint, answer["gid"]
        ctx.differentiable = [t.requires_grad for t in outs]
        ctx.inputs = [(tuple(t.shape), t.dtype) for t in inputs]
        detached = [t.detach() for t in outs]
        placeholder = torch.zeros(())
        ctx.mark_non_differentiable(placeholder, *(d for d, flag in zip(detached, ctx.differentiable) if not flag))
        box["value"] = value
        return (*detached, placeholder)

    @staticmethod
    @once_differentiable
    def backward(ctx: Any, *grad_outputs: torch.Tensor) -> tuple[Any, ...]:
        grads = [g if flag else None for g, flag in zip(grad_outputs[:-1], ctx.differentiable)]
        answer = ctx.endpoint.request("backward", gid=ctx.gid, grads=grads)
        if not isinstance(answer, list) or len(answer) != len(ctx.inputs):
            raise RuntimeError(
                f"the student's process answered {len(answer) if isinstance(answer, list) else answer!r} "
                f"input gradients, expected {len(ctx.inputs)}"
            )
        checked = []
        for grad, (shape, dtype) in zip(answer, ctx.inputs):
            if grad is not None and not (isinstance(grad, torch.Tensor) and tuple(grad.shape) == shape):
                raise RuntimeError(
                    f"the student's process answered a gradient of shape "
                    f"{tuple(grad.shape) if isinstance(grad, torch.Tensor) else type(grad).__name__} "
                    f"for an input of shape {shape}"
                )
            checked.append(grad.to(dtype) if grad is not None and grad.dtype != dtype else grad)
        return (None, None, None, None, None, *checked)


class GraphStore:
    """Student side: the graphs of gradient-tracked calls, until the session ends."""

    def __init__(self) -> None:
        self.graphs: dict[int, tuple[list[torch.Tensor], list[torch.Tensor]]] = {}
        self._ids = itertools.count(1)

    def call(self, endpoint: Any, message: dict) -> dict:
        target, args, kwargs = message.get("target"), message.get("args", []), message.get("kwargs", {})
        if not isinstance(args, list) or not isinstance(kwargs, dict):
            raise TypeError("a gradient-tracked call with malformed arguments")
        inputs = [t for t in tensors_in((args, kwargs)) if t.requires_grad]
        with torch.enable_grad():
            value = target(*args, **kwargs)
        gid = next(self._ids)
        self.graphs[gid] = (inputs, list(tensors_in(value)))
        return {"v": value, "gid": gid}

    def backward(self, endpoint: Any, message: dict) -> list:
        gid = message.get("gid")
        if gid not in self.graphs:
            raise KeyError(f"no graph {gid!r} in the student's process")
        inputs, outputs = self.graphs[gid]
        grads = message.get("grads")
        if not isinstance(grads, list) or len(grads) != len(outputs):
            raise TypeError("a backward request whose grad-outputs do not match the outputs")
        pairs = [(o, g) for o, g in zip(outputs, grads) if o.requires_grad and isinstance(g, torch.Tensor)]
        if not pairs or not inputs:
            return [None] * len(inputs)
        found = torch.autograd.grad(
            [o for o, _ in pairs], inputs, grad_outputs=[g for _, g in pairs], retain_graph=True, allow_unused=True
        )
        return [g.detach() if g is not None else None for g in found]

    def handlers(self) -> dict:
        return {"gcall": self.call, "backward": self.backward}
