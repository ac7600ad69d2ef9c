"""Receptive fields: analytic (from the layers) and empirical (from input gradients).

For layers applied one after another with kernel sizes ``k_i``, strides ``s_i`` and
dilations ``d_i``, an output unit sees a square of side

    r = 1 + sum_i (k_i - 1) * d_i * prod_{j < i} s_j

input pixels. The empirical receptive field is the bounding box of the input pixels whose
gradient on the centre output unit is nonzero; for a single-path network of random weights
both agree, and the empirical one also works for encoder-decoders with several paths.
"""

from __future__ import annotations

import copy
import warnings
from collections.abc import Sequence

import torch
from torch import Tensor, nn

from segutils.models import EncoderDecoderFCN, UNet

__all__ = ["receptive_field", "receptive_field_layers", "empirical_receptive_field", "gradient_map"]

Layer = tuple[int, int, int]  # (kernel_size, stride, dilation)

# Leaf modules that never look at neighbouring pixels. BatchNorm counts as pointwise: in
# eval mode it is a per-channel affine map (in train mode its batch statistics see everything).
_POINTWISE = (
    nn.BatchNorm2d,
    nn.ReLU,
    nn.LeakyReLU,
    nn.GELU,
    nn.SiLU,
    nn.Tanh,
    nn.Sigmoid,
    nn.Identity,
    nn.Dropout,
    nn.Dropout2d,
)
_SPATIAL = (nn.Conv2d, nn.MaxPool2d, nn.AvgPool2d)
_MULTI_PATH = (EncoderDecoderFCN, UNet)


def _square(value: int | Sequence[int], what: str, module: nn.Module) -> int:
    if isinstance(value, int):
        return value
    if len(set(value)) != 1:
        raise ValueError(f"receptive_field handles square layers only; {module} has {what}={tuple(value)}")
    return int(value[0])


def receptive_field_layers(model: nn.Module) -> list[Layer]:
    """The ``(kernel_size, stride, dilation)`` of each spatial layer of ``model``, in order.

    Walks the leaf modules in registration order and assumes they are applied one after
    another in that order (true of :class:`~segutils.models.PlainFCN`,
    :class:`~segutils.models.DilatedFCN`, :class:`~segutils.models.ConvPatchClassifier` and
    ``nn.Sequential`` stacks). ``Conv2d``, ``MaxPool2d`` and ``AvgPool2d`` count; pointwise
    layers (BatchNorm, activations, dropout) are skipped.

    Raises:
        NotImplementedError: ``model`` is an encoder-decoder (several paths from input to
            output, whose receptive field is the largest over paths) or contains an
            upsampling layer; use :func:`empirical_receptive_field`.
        TypeError: ``model`` is not an ``nn.Module``, or contains a layer this walk does not
            know (e.g. ``Linear``: convolutionalize a patch classifier first).
        ValueError: a layer with a non-square kernel, stride or dilation.
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"receptive_field_layers expects an nn.Module, got {type(model).__name__}")
    if isinstance(model, _MULTI_PATH):
        raise NotImplementedError(
            f"{type(model).__name__} has several paths from input to output (skip connections around "
            "down- and upsampling), so its receptive field is not one chain of layers; "
            "use empirical_receptive_field instead"
        )
    layers: list[Layer] = []
    for module in model.modules():
        if next(module.children(), None) is not None:
            continue  # containers: their leaves are visited on their own
        if isinstance(module, (nn.ConvTranspose2d, nn.Upsample)):
            raise NotImplementedError(
                f"{type(model).__name__} contains upsampling ({type(module).__name__}), typical of "
                "encoder-decoders with several paths; use empirical_receptive_field instead"
            )
        if isinstance(module, _SPATIAL):
            kernel = _square(module.kernel_size, "kernel_size", module)
            stride = _square(module.stride, "stride", module)
            dilation = _square(getattr(module, "dilation", 1), "dilation", module)
            layers.append((kernel, stride, dilation))
        elif not isinstance(module, _POINTWISE):
            hint = "; convolutionalize a patch classifier first" if isinstance(module, (nn.Linear, nn.Flatten)) else ""
            raise TypeError(f"receptive_field does not know the layer {type(module).__name__}{hint}")
    return layers


def receptive_field(model_or_layers: nn.Module | Sequence[Layer]) -> int:
    """Analytic receptive field (side, in input pixels) of one output unit.

    Args:
        model_or_layers: an ``nn.Module`` whose layers form one chain (see
            :func:`receptive_field_layers`), or a sequence of
            ``(kernel_size, stride, dilation)`` tuples in the order they are applied.

    Returns:
        ``1 + sum_i (k_i - 1) * d_i * prod_{j < i} s_j``.
    """
    if isinstance(model_or_layers, nn.Module):
        layers = receptive_field_layers(model_or_layers)
    elif isinstance(model_or_layers, Sequence) and not isinstance(model_or_layers, str):
        layers = list(model_or_layers)
    else:
        raise TypeError(
            "receptive_field expects an nn.Module or a sequence of (kernel_size, stride, dilation) tuples, "
            f"got {type(model_or_layers).__name__}"
        )
    size, jump = 1, 1  # jump: distance in input pixels between neighbouring units of the current layer
    for i, layer in enumerate(layers):
        if (
            not isinstance(layer, Sequence)
            or len(layer) != 3
            or not all(isinstance(v, int) and not isinstance(v, bool) and v >= 1 for v in layer)
        ):
            raise ValueError(
                f"layer {i} must be a (kernel_size, stride, dilation) tuple of positive ints, got {layer!r}"
            )
        kernel, stride, dilation = layer
        size += (kernel - 1) * dilation * jump
        jump *= stride
    return size


def gradient_map(
    model: nn.Module,
    in_channels: int = 3,
    size: int = 65,
    device: torch.device | str | None = None,
    seed: int = 0,
    samples: int = 8,
) -> Tensor:
    r"""How much each input pixel moves the centre output unit: ``|d out / d input|``.

    A copy of ``model`` in eval mode and float64 gets ``samples`` random normal images of
    shape :math:`(\text{in\_channels}, \text{size}, \text{size})`; for each, the gradient of
    the logits at the centre output pixel (summed over classes) is taken, and the absolute
    gradients are summed over images and channels. Several images make it unlikely that
    ReLUs switched off for one input hide part of the receptive field. ``model`` itself is
    not changed.

    Args:
        model: maps :math:`(B, C, H, W)` to :math:`(B, K, H', W')`, images independently.
        in_channels: ``C``.
        size: side of the square input.
        device: where to compute; default: where ``model``'s parameters are (CPU if none).
        seed: seed of the random inputs.
        samples: number of random inputs.

    Returns:
        :math:`(\text{size}, \text{size})` float64 tensor on ``device``.
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"gradient_map expects an nn.Module, got {type(model).__name__}")
    for value, name in ((in_channels, "in_channels"), (size, "size"), (samples, "samples")):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"{name} must be a positive int, got {value!r}")
    if device is None:
        first = next(model.parameters(), None)
        device = first.device if first is not None else torch.device("cpu")
    device = torch.device(device)
    if device.type == "meta":
        raise ValueError("gradient_map needs real numbers; the model is on the meta device, pass device='cpu'")

    probe = copy.deepcopy(model).to(device=device, dtype=torch.float64).eval()
    generator = torch.Generator().manual_seed(seed)
    images = torch.randn(samples, in_channels, size, size, generator=generator, dtype=torch.float64).to(device)
    images.requires_grad_(True)
    out = probe(images)
    if out.ndim != 4 or out.shape[0] != samples:
        raise ValueError(f"gradient_map expects the model to output (B, K, H, W), got shape {tuple(out.shape)}")
    centre = out[:, :, out.shape[2] // 2, out.shape[3] // 2].sum()
    (grad,) = torch.autograd.grad(centre, images)
    return grad.abs().sum(dim=(0, 1))


def empirical_receptive_field(
    model: nn.Module,
    in_channels: int = 3,
    size: int = 65,
    device: torch.device | str | None = None,
    seed: int = 0,
    samples: int = 8,
    threshold: float = 0.0,
) -> int:
    """Side of the bounding box of the input pixels that reach the centre output unit.

    Computed from :func:`gradient_map` (float64, eval mode): pixels whose gradient exceeds
    ``threshold`` count. A pixel outside the receptive field gets an exact zero, so the
    default threshold 0 is safe; inside it, ReLUs and max pooling can zero gradients for
    one input, which the ``samples`` random inputs make unlikely to matter (max pooling, which
    routes gradient to one pixel per window, can still shrink the box a little). For a
    non-square box the larger side is returned.

    Warns:
        UserWarning: the box touches the image border, so it may be cut off: use a larger ``size``.

    Raises:
        ValueError: no input pixel reaches the centre output (all gradients ``<= threshold``).
    """
    grad = gradient_map(model, in_channels, size, device, seed, samples)
    hit = grad > threshold
    rows = hit.any(dim=1).nonzero().flatten()
    cols = hit.any(dim=0).nonzero().flatten()
    if rows.numel() == 0:
        raise ValueError(f"no input pixel has a gradient above {threshold} on the centre output unit")
    top, bottom, left, right = (int(v) for v in (rows.min(), rows.max(), cols.min(), cols.max()))
    if top == 0 or left == 0 or bottom == size - 1 or right == size - 1:
        warnings.warn(
            f"the receptive field touches the border of the {size}x{size} probe image and may be larger; increase size",
            stacklevel=2,
        )
    return max(bottom - top + 1, right - left + 1)
