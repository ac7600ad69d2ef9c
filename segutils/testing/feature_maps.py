"""What a network computes inside: its feature maps, and which parameters it uses.

Tests of a student's network that look past its output (does the encoder downsample, does the
decoder read the encoder's maps, is every layer used) need to watch the forward pass where it runs:
in two-process grading these checks run in the student's process and return data only.

- :func:`trace_feature_maps`: every ``(N, C, h, w)`` tensor a PyTorch call returns during
  ``model(images)``, with the earlier maps each call read;
- :func:`coarsest_map`, :func:`encoder_maps_reused`, :func:`show_trace`: read such a trace;
- :func:`check_parameters_get_gradients`: every trainable parameter of a model receives a
  gradient from a backward pass through its output.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn
from torch.overrides import TorchFunctionMode

__all__ = ["check_parameters_get_gradients", "coarsest_map", "encoder_maps_reused", "show_trace", "trace_feature_maps"]

#: One entry of a trace: the function called, the shape of the map it returned, the earlier maps it read.
FeatureMap = tuple[str, tuple[int, ...], list[int]]


def _tensors(obj: Any) -> list[Tensor]:
    """The tensors in ``obj`` and in the lists, tuples and dicts it nests."""
    if isinstance(obj, Tensor):
        return [obj]
    if isinstance(obj, (list, tuple)):
        return [t for item in obj for t in _tensors(item)]
    if isinstance(obj, dict):
        return [t for item in obj.values() for t in _tensors(item)]
    return []


class _FeatureMapTrace(TorchFunctionMode):
    """Records every PyTorch call that returns an ``(N, C, h, w)`` tensor with the batch size ``N``."""

    def __init__(self, batch_size: int) -> None:
        super().__init__()
        self.batch_size = batch_size
        self.maps: list[FeatureMap] = []
        # id(tensor) -> (tensor, index): holding the tensor keeps its id from being reused.
        self._index: dict[int, tuple[Tensor, int]] = {}

    def __torch_function__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        sources = sorted({self._index[id(t)][1] for t in _tensors((args, kwargs)) if id(t) in self._index})
        for t in _tensors(out):
            if t.ndim == 4 and t.shape[0] == self.batch_size:
                self._index[id(t)] = (t, len(self.maps))  # a map changed in place stays the same map
                self.maps.append((getattr(func, "__name__", str(func)), tuple(int(s) for s in t.shape), sources))
        return out


def trace_feature_maps(model: nn.Module, images: Tensor) -> list[FeatureMap]:
    """The feature maps ``model(images)`` computes, in order, without gradients.

    Args:
        model: any callable, usually an ``nn.Module`` (its mode is left as it is).
        images: ``(N, C, H, W)``.

    Returns:
        ``maps[i] = (name, shape, sources)``: the name of the PyTorch function that returned an
        ``(N, c, h, w)`` tensor, that shape, and the indices of the earlier maps among its inputs.
    """
    if not isinstance(images, Tensor) or images.ndim != 4:
        raise TypeError(
            f"trace_feature_maps needs images of shape (N, C, H, W), got "
            f"{getattr(images, 'shape', type(images).__name__)}"
        )
    with torch.no_grad(), _FeatureMapTrace(images.shape[0]) as trace:
        model(images)
    return trace.maps


def coarsest_map(maps: list[FeatureMap]) -> int:
    """Index of the first map with the fewest pixels (``h * w``)."""
    if not maps:
        raise ValueError("the trace holds no feature map")
    areas = [shape[2] * shape[3] for _, shape, _ in maps]
    return areas.index(min(areas))


def encoder_maps_reused(maps: list[FeatureMap]) -> list[tuple[int, str, tuple[int, ...]]]:
    """Calls after the coarsest map that read a finer map computed before it: ``[(index, name, shape), ...]``."""
    c = coarsest_map(maps)
    coarse_area = maps[c][1][2] * maps[c][1][3]
    encoder = {i for i in range(c) if maps[i][1][2] * maps[i][1][3] > coarse_area}
    return [(i, name, shape) for i, (name, shape, sources) in enumerate(maps) if i > c and encoder & set(sources)]


def show_trace(maps: list[FeatureMap]) -> None:
    """Print the maps, one line each, marking the coarsest and the reuses of encoder maps."""
    c, reused = coarsest_map(maps), {i for i, _, _ in encoder_maps_reused(maps)}
    for i, (name, shape, sources) in enumerate(maps):
        mark = "  <- coarsest" if i == c else "  <- reads an encoder map" if i in reused else ""
        print(f"{i:3d} {name:24s} {str(shape):22s} reads {sources}{mark}")


def check_parameters_get_gradients(model: nn.Module, /, *inputs: Any, name: str | None = None) -> None:
    """Check that every trainable parameter of ``model`` gets a gradient through ``model(*inputs)``.

    The loss is the mean square of every floating-point output tensor; the gradients are computed
    with :func:`torch.autograd.grad` (the parameters' ``.grad`` are left as they are). A parameter
    gets no gradient when the forward pass never uses it (a layer defined and left unused) or uses
    it outside the autograd graph.

    Raises:
        AssertionError: some parameters got no gradient (the message names a few), the forward pass
            raised, or its output does not depend on any parameter.
        TypeError: ``model`` is not an ``nn.Module``.
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"check_parameters_get_gradients needs an nn.Module, got {type(model).__name__}")
    name = name or type(model).__name__
    params = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    if not params:
        raise AssertionError(f"{name}: expected trainable parameters, found none")
    try:
        with torch.enable_grad():
            outs = [t for t in _tensors(model(*inputs)) if t.is_floating_point() and t.requires_grad]
            if not outs:
                raise AssertionError(f"{name}: the output does not depend on any parameter (it does not require grad)")
            loss = sum(t.float().square().mean() for t in outs)
            grads = torch.autograd.grad(loss, [p for _, p in params], allow_unused=True)
    except AssertionError:
        raise
    except Exception as error:
        raise AssertionError(f"{name}: the forward or backward pass raised {type(error).__name__}: {error}") from None
    missing = [n for (n, _), g in zip(params, grads) if g is None]
    if missing:
        raise AssertionError(
            f"{name}: expected a gradient for every parameter, {len(missing)} of {len(params)} got "
            f"none, e.g. {missing[:3]}: every layer defined in __init__ must be used in forward"
        )
