"""The book's ideas, measured on torchvision's segmentation networks: strides, dilations, receptive fields.

These functions look at a network's layers and shapes only, so they work the same with random or
pretrained weights (:func:`segutils.pretrained.build_architecture` gives the former without a download).
"""

from __future__ import annotations

import statistics
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field

import torch
from torch import Tensor, nn
from torch.nn import functional as F
from torchvision.models import mobilenet_v3_large, resnet50
from torchvision.models.segmentation.deeplabv3 import ASPP

from segutils.metrics import boundary_band
from segutils.pretrained import coarse_logits
from segutils.receptive_field import Layer, receptive_field

__all__ = [
    "StageStride",
    "ReceptiveField",
    "stage_strides",
    "output_stride",
    "receptive_field_of",
    "upsampling_variants",
    "seconds_per_call",
    "upsampling_disagreement",
    "busiest_box",
]

# The classification networks the segmentation backbones were made from (same layer names).
_CLASSIFIERS = {
    "fcn_resnet50": lambda: resnet50(weights=None),
    "deeplabv3_resnet50": lambda: resnet50(weights=None),
    "lraspp_mobilenet_v3_large": lambda: mobilenet_v3_large(weights=None).features,
}
_POINTWISE = (
    nn.BatchNorm2d,
    nn.ReLU,
    nn.Hardswish,
    nn.Hardsigmoid,
    nn.Sigmoid,
    nn.Identity,
    nn.Dropout,
    nn.Dropout2d,
)
_GLOBAL_POOLS = (nn.AdaptiveAvgPool2d, nn.AdaptiveMaxPool2d)


@dataclass(frozen=True)
class StageStride:
    """One top-level stage of a backbone: its output stride here and in the classification network."""

    stage: str
    stride: int  #: input pixels per output pixel after this stage, in the segmentation backbone
    classifier_stride: int  #: the same in the classification network it was made from
    dilations: tuple[int, ...]  #: the distinct dilations of the stage's convolutions


def _child_strides(stages: nn.Module, size: int) -> dict[str, int]:
    """Output stride of each child of ``stages`` (applied in order) for a ``(1, 3, size, size)`` probe."""
    strides: dict[str, int] = {}
    hooks = [
        child.register_forward_hook(lambda _m, _i, out, name=name: strides.__setitem__(name, size // out.shape[-1]))
        for name, child in stages.named_children()
    ]
    try:
        with torch.no_grad():
            stages.eval()(torch.zeros(1, 3, size, size))
    finally:
        for hook in hooks:
            hook.remove()
    return strides


def stage_strides(name: str, model: nn.Module, size: int = 224) -> list[StageStride]:
    """Output stride and dilations of every top-level stage of ``model``'s backbone.

    Compares each stage with the same stage of the classification network the backbone was made
    from (``resnet50`` or ``mobilenet_v3_large``, random weights): where the classification network
    downsamples and the segmentation backbone does not, dilation replaced the stride.

    Args:
        name: one of :data:`segutils.pretrained.PRETRAINED_NAMES`.
        model: that network (random or pretrained weights).
        size: side of the square probe input; a multiple of 32.
    """
    backbone = model.backbone
    ours = _child_strides(backbone, size)
    original_children = dict(_CLASSIFIERS[name]().named_children())
    original = _child_strides(
        nn.Sequential(OrderedDict((n, original_children[n]) for n, _ in backbone.named_children())), size
    )
    return [
        StageStride(
            stage=stage,
            stride=ours[stage],
            classifier_stride=original[stage],
            dilations=tuple(sorted({m.dilation[0] for m in child.modules() if isinstance(m, nn.Conv2d)})),
        )
        for stage, child in backbone.named_children()
    ]


def output_stride(model: nn.Module, size: int = 224) -> int:
    """Input pixels per logit of the network's coarse logits (before its final upsampling), for a square input."""
    with torch.no_grad():
        return size // coarse_logits(model.eval(), torch.zeros(1, 3, size, size)).shape[-1]


@dataclass(frozen=True)
class ReceptiveField:
    """The receptive field of one output unit.

    ``local`` is the side (input pixels) of the square its convolutions and poolings see along the
    widest path; ``global_pools`` names the modules that average over the whole image (squeeze and
    excitation, image pooling), through which every output unit depends on every input pixel.
    """

    local: int
    global_pools: list[str] = field(default_factory=list)


def _layer(module: nn.Module) -> Layer:
    def square(value: int | tuple[int, ...]) -> int:
        values = (value,) if isinstance(value, int) else tuple(value)
        if len(set(values)) != 1:
            raise ValueError(f"non-square layer {module}")
        return int(values[0])

    return square(module.kernel_size), square(module.stride), square(getattr(module, "dilation", 1))


def _walk(module: nn.Module, prefix: str, layers: list[Layer], pools: list[str]) -> None:
    if isinstance(module, ASPP):
        # Parallel branches: the widest local one counts; the image-pooling branch is global.
        widest: list[Layer] = []
        for i, branch in enumerate(module.convs):
            branch_layers: list[Layer] = []
            _walk(branch, f"{prefix}.convs.{i}", branch_layers, pools)
            if receptive_field(branch_layers or [(1, 1, 1)]) > receptive_field(widest or [(1, 1, 1)]):
                widest = branch_layers
        layers += widest
        _walk(module.project, f"{prefix}.project", layers, pools)
        return
    children = list(module.named_children())
    if not children:
        if isinstance(module, (nn.Conv2d, nn.MaxPool2d, nn.AvgPool2d)):
            layers.append(_layer(module))
        elif isinstance(module, _GLOBAL_POOLS):
            pools.append(prefix)
        elif not isinstance(module, _POINTWISE):
            raise TypeError(f"receptive_field_of does not know the layer {prefix} ({type(module).__name__})")
        return
    for name, child in children:
        if name == "downsample":
            continue  # ResNet's shortcut: a 1x1 convolution parallel to the block, with the block's stride
        _walk(child, f"{prefix}.{name}" if prefix else name, layers, pools)


def receptive_field_of(model: nn.Module) -> ReceptiveField:
    """Analytic receptive field of one output unit of a torchvision segmentation network.

    Walks the layers in the order they are applied (:func:`segutils.receptive_field.receptive_field`
    on that chain), skipping ResNet's shortcut convolutions (1x1, so never wider than the block they
    bypass), taking the widest branch of DeepLabv3's ASPP, and listing the global poolings apart. The
    auxiliary head, when present, is left out (it only serves training).
    """
    layers: list[Layer] = []
    pools: list[str] = []
    for name, child in model.named_children():
        if name != "aux_classifier":
            _walk(child, name, layers, pools)
    return ReceptiveField(local=receptive_field(layers), global_pools=pools)


def upsampling_variants(coarse: Tensor, size: tuple[int, int]) -> dict[str, Tensor]:
    """Three ways from coarse logits ``(1, K, h, w)`` to class ids ``(H, W)`` at ``size``.

    - ``"nearest"``: argmax at the logits' resolution, each label copied to its block of pixels;
    - ``"bilinear probabilities"``: softmax, bilinear upsampling of the probabilities, argmax;
    - ``"model's own"``: bilinear upsampling of the logits, argmax (what torchvision's models do).
    """
    if coarse.ndim != 4 or coarse.shape[0] != 1:
        raise ValueError(f"coarse should have shape (1, K, h, w), got {tuple(coarse.shape)}")
    bilinear = dict(size=size, mode="bilinear", align_corners=False)
    return {
        "nearest": F.interpolate(coarse.argmax(1, keepdim=True).float(), size=size, mode="nearest")[0, 0].long(),
        "bilinear probabilities": F.interpolate(coarse.softmax(1), **bilinear).argmax(1)[0],
        "model's own": F.interpolate(coarse, **bilinear).argmax(1)[0],
    }


def seconds_per_call(fn: Callable[[], object], repeats: int = 3) -> float:
    """Median wall time of ``fn()`` over ``repeats`` calls after one warm-up call, without gradients."""
    with torch.no_grad():
        fn()
        times = []
        for _ in range(repeats):
            start = time.perf_counter()
            fn()
            times.append(time.perf_counter() - start)
    return statistics.median(times)


def upsampling_disagreement(coarse: Tensor, size: tuple[int, int], width: int) -> dict[str, dict[str, float]]:
    """How far the ``"nearest"`` and ``"bilinear probabilities"`` upsamplings stray from the model's own path.

    The two are those of :func:`upsampling_variants`. Returns, for each of the two, ``"share"``: the
    fraction of all pixels whose class differs from the model's own prediction, and ``"in_band"``: the
    fraction of those differing pixels that lie in the model's own prediction's
    :func:`segutils.metrics.boundary_band` of ``width`` pixels (within ``width`` pixels of another class;
    NaN when none differ); plus ``"band"``: ``{"share": }`` the fraction of the image that band covers.
    """
    variants = upsampling_variants(coarse, size)
    own = variants["model's own"]
    band = boundary_band(own[None], width, ignore_index=None)[0]
    result = {"band": {"share": band.float().mean().item()}}
    for label in ("nearest", "bilinear probabilities"):
        differ = variants[label] != own
        count = int(differ.sum())
        result[label] = {
            "share": count / differ.numel(),
            "in_band": int((differ & band).sum()) / count if count else float("nan"),
        }
    return result


def busiest_box(changed: Tensor, side: int) -> tuple[int, int, int, int]:
    """The ``side x side`` window ``(top, left, side, side)`` of a bool map ``(H, W)`` with the most ``True`` pixels."""
    height, width = changed.shape
    side = min(side, height, width)
    counts = F.avg_pool2d(changed[None, None].float(), side, stride=max(1, side // 8))[0, 0]
    row, col = divmod(int(counts.argmax()), counts.shape[1])
    step = max(1, side // 8)
    return row * step, col * step, side, side
