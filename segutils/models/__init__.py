"""Segmentation models of the course, from sliding windows to U-Net.

Every segmentation model maps ``(N, C, H, W)`` float images to ``(N, K, H, W)`` logits
for any ``H, W``:

- ``"patch"``: :func:`convolutionalize` of a :class:`PatchClassifier` (an MLP on ``p x p``
  windows), i.e. the sliding-window classifier run in one convolutional pass;
- ``"patch_cnn"``: :func:`convolutionalize` of a :class:`PatchCNN` (unpadded, dilated ``3 x 3``
  convolutions on ``p x p`` windows), a sliding-window classifier that sees a whole object;
- ``"plain"``: :class:`PlainFCN`, stride-1 ``3 x 3`` convolutions;
- ``"dilated"``: :class:`DilatedFCN`, dilated ``3 x 3`` convolutions;
- ``"fcn"``: :class:`EncoderDecoderFCN`, FCN-32s/16s/8s-style encoder-decoder;
- ``"unet"``: :class:`UNet`.
"""

from __future__ import annotations

from typing import Any

from torch import nn

from segutils.models.encoder_decoder import UPSAMPLE_MODES, EncoderDecoderFCN, bilinear_kernel
from segutils.models.fcn import DilatedFCN, PlainFCN
from segutils.models.patch import (
    ConvPatchClassifier,
    PatchClassifier,
    PatchCNN,
    convolutionalize,
    sliding_window_logits,
    window_classifier,
)
from segutils.models.unet import UNet

__all__ = [
    "MODEL_NAMES",
    "UPSAMPLE_MODES",
    "ConvPatchClassifier",
    "DilatedFCN",
    "EncoderDecoderFCN",
    "PatchClassifier",
    "PatchCNN",
    "PlainFCN",
    "UNet",
    "bilinear_kernel",
    "build_model",
    "convolutionalize",
    "count_parameters",
    "sliding_window_logits",
    "window_classifier",
]

MODEL_NAMES = ("patch", "patch_cnn", "plain", "dilated", "fcn", "unet")

DEFAULT_PATCH_SIZE = 9


def build_model(name: str, in_channels: int = 3, num_classes: int = 5, **kwargs: Any) -> nn.Module:
    """Build the segmentation model called ``name`` (one of :data:`MODEL_NAMES`).

    ``kwargs`` go to the model's constructor. ``"patch"`` returns the fully convolutional
    :class:`ConvPatchClassifier` of a fresh :class:`PatchClassifier` (``patch_size`` defaults
    to 9, ``hidden`` to the PatchClassifier default), so that it segments whole images like
    the others; training it is training the patch classifier on every zero-padded window.
    ``"patch_cnn"`` likewise returns the convolutionalized :class:`PatchCNN` (``width``,
    ``dilations``).

    Raises:
        ValueError: unknown ``name``.
        TypeError: a keyword argument the model does not take.
    """
    if name == "patch":
        kwargs.setdefault("patch_size", DEFAULT_PATCH_SIZE)
        return convolutionalize(PatchClassifier(in_channels, num_classes, **kwargs))
    if name == "patch_cnn":
        return convolutionalize(PatchCNN(in_channels, num_classes, **kwargs))
    builders: dict[str, type[nn.Module]] = {
        "plain": PlainFCN,
        "dilated": DilatedFCN,
        "fcn": EncoderDecoderFCN,
        "unet": UNet,
    }
    if name not in builders:
        raise ValueError(f"unknown model name {name!r}; choose one of {', '.join(MODEL_NAMES)}")
    return builders[name](in_channels, num_classes, **kwargs)


def count_parameters(model: nn.Module, trainable_only: bool = False) -> int:
    """Number of scalar parameters of ``model`` (only those with ``requires_grad`` if ``trainable_only``)."""
    if not isinstance(model, nn.Module):
        raise TypeError(f"count_parameters expects an nn.Module, got {type(model).__name__}")
    return sum(p.numel() for p in model.parameters() if p.requires_grad or not trainable_only)
