"""Per-pixel classification with a patch classifier, and its fully convolutional equivalent.

A :class:`PatchClassifier` labels the centre pixel of one ``p x p`` window. Segmenting an
image with it means running it on every window (:func:`sliding_window_logits`);
:func:`convolutionalize` rewrites it as convolutions that give the same logits at every
pixel in one pass, which is the step from "sliding window" to "fully convolutional".
"""

from __future__ import annotations

import copy
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from segutils.arguments import check_images, check_positive_int

__all__ = [
    "PatchClassifier",
    "PatchCNN",
    "ConvPatchClassifier",
    "sliding_window_logits",
    "convolutionalize",
    "window_classifier",
]

# Layers that act on each number separately: they mean the same thing after a Linear
# (on (B, features)) as after a 1x1 convolution (on (N, features, H, W)).
_ELEMENTWISE = (nn.ReLU, nn.LeakyReLU, nn.GELU, nn.SiLU, nn.Tanh, nn.Sigmoid, nn.Identity, nn.Dropout)


def _hidden_sizes(hidden: int | Sequence[int]) -> tuple[int, ...]:
    sizes = (hidden,) if isinstance(hidden, int) else tuple(hidden)
    for i, size in enumerate(sizes):
        check_positive_int(size, f"hidden[{i}]")
    return sizes


class PatchClassifier(nn.Module):
    r"""A multilayer perceptron that classifies the centre pixel of a ``p x p`` patch.

    ``Flatten -> Linear -> ReLU -> ... -> Linear``: it sees nothing but the patch, so run on
    every window of an image it is the classic sliding-window segmenter.

    Args:
        in_channels: ``C``, channels of the image.
        num_classes: ``K``, number of classes.
        patch_size: ``p``, the odd side of the window, centred on the pixel to classify.
        hidden: width of each hidden layer (an int for one layer, ``()`` for a linear classifier).

    Shape:
        - Input: :math:`(B, C, p, p)`, one patch per row.
        - Output: :math:`(B, K)` logits for the centre pixel of each patch.
    """

    def __init__(
        self, in_channels: int, num_classes: int, patch_size: int, hidden: int | Sequence[int] = (64,)
    ) -> None:
        super().__init__()
        self.in_channels = check_positive_int(in_channels, "in_channels")
        self.num_classes = check_positive_int(num_classes, "num_classes")
        self.patch_size = check_positive_int(patch_size, "patch_size")
        if patch_size % 2 != 1:
            raise ValueError(f"patch_size must be odd so that the patch has a centre pixel, got {patch_size}")
        self.hidden = _hidden_sizes(hidden)

        widths = [in_channels * patch_size * patch_size, *self.hidden]
        layers: list[nn.Module] = [nn.Flatten()]
        for width_in, width_out in zip(widths[:-1], widths[1:]):
            layers += [nn.Linear(width_in, width_out), nn.ReLU(inplace=True)]
        layers.append(nn.Linear(widths[-1], num_classes))
        self.layers = nn.Sequential(*layers)

    def forward(self, patches: Tensor) -> Tensor:
        check_images(patches, self.in_channels, type(self).__name__)
        p = self.patch_size
        if patches.shape[-2:] != (p, p):
            raise ValueError(
                f"{type(self).__name__} expects {p}x{p} patches, got {patches.shape[-2]}x{patches.shape[-1]} "
                f"(input shape {tuple(patches.shape)}); use sliding_window_logits or convolutionalize for images"
            )
        return self.layers(patches)


class PatchCNN(nn.Module):
    r"""A small CNN that classifies the centre pixel of a ``p x p`` window, ``p = 1 + 2 * sum(dilations)``.

    ``3 x 3`` convolutions *without padding* (layer ``i`` dilated by ``d_i``), each followed by
    BatchNorm and ReLU, shrink the window to a single position; a ``1 x 1`` convolution gives
    the logits. Because nothing inside the window is padded, the feature vector a layer
    computes at a position depends only on the pixels under it, not on which window it was
    computed in: :func:`convolutionalize` runs the same layers once over the zero-padded
    image and gives exactly the logits of :func:`sliding_window_logits` (in eval mode, where
    BatchNorm is a fixed per-channel affine map), without recomputing what overlapping
    windows share.

    Args:
        in_channels: ``C``, channels of the image.
        num_classes: ``K``, number of classes.
        width: channels of every hidden layer.
        dilations: one positive dilation per ``3 x 3`` layer (at least one).

    Shape:
        - Input: :math:`(B, C, p, p)`, one window per row.
        - Output: :math:`(B, K)` logits for the centre pixel of each window.
    """

    def __init__(
        self, in_channels: int, num_classes: int, width: int = 32, dilations: Sequence[int] = (1, 2, 4, 8)
    ) -> None:
        super().__init__()
        self.in_channels = check_positive_int(in_channels, "in_channels")
        self.num_classes = check_positive_int(num_classes, "num_classes")
        check_positive_int(width, "width")
        self.dilations = tuple(dilations)
        if not self.dilations:
            raise ValueError("dilations must name at least one layer, got an empty sequence")
        for i, dilation in enumerate(self.dilations):
            check_positive_int(dilation, f"dilations[{i}]")
        self.patch_size = 1 + 2 * sum(self.dilations)
        layers: list[nn.Module] = []
        channels = in_channels
        for dilation in self.dilations:
            layers += [
                nn.Conv2d(channels, width, 3, dilation=dilation, bias=False),
                nn.BatchNorm2d(width),
                nn.ReLU(inplace=True),
            ]
            channels = width
        self.features = nn.Sequential(*layers)
        self.head = nn.Conv2d(width, num_classes, 1)

    def forward(self, patches: Tensor) -> Tensor:
        check_images(patches, self.in_channels, type(self).__name__)
        p = self.patch_size
        if patches.shape[-2:] != (p, p):
            raise ValueError(
                f"{type(self).__name__} expects {p}x{p} windows, got {patches.shape[-2]}x{patches.shape[-1]} "
                f"(input shape {tuple(patches.shape)}); use sliding_window_logits or convolutionalize for images"
            )
        return self.head(self.features(patches)).flatten(1)


class ConvPatchClassifier(nn.Module):
    r"""The fully convolutional form of a :class:`PatchClassifier`; build it with :func:`convolutionalize`.

    For a :class:`PatchClassifier` (``kind="mlp"``), a ``p x p`` convolution with zero padding
    ``p // 2`` replaces the first Linear layer and ``1 x 1`` convolutions replace the others;
    for a :class:`PatchCNN` (``kind="cnn"``) the layers are its own, the first padded by
    ``p // 2``. Either way every output pixel gets the logits the window classifier gives to
    the zero-padded window centred on it.

    Shape:
        - Input: :math:`(N, C, H, W)`, any :math:`H, W`.
        - Output: :math:`(N, K, H, W)` logits.
    """

    def __init__(
        self, layers: nn.Sequential, in_channels: int, num_classes: int, patch_size: int, kind: str = "mlp"
    ) -> None:
        super().__init__()
        if kind not in ("mlp", "cnn"):
            raise ValueError(f"kind must be 'mlp' (a PatchClassifier) or 'cnn' (a PatchCNN), got {kind!r}")
        self.kind = kind
        self.in_channels = in_channels
        self.num_classes = num_classes
        self.patch_size = patch_size
        self.layers = layers

    def forward(self, images: Tensor) -> Tensor:
        check_images(images, self.in_channels, type(self).__name__)
        return self.layers(images)


def convolutionalize(patch_classifier: PatchClassifier) -> ConvPatchClassifier:
    """Return the fully convolutional equivalent of ``patch_classifier``.

    A :class:`PatchCNN` becomes copies of its own layers, the first convolution zero-padding
    the image by ``p // 2``: the others are unpadded, so they compute every window's features
    once over the padded image. For a :class:`PatchClassifier` (an MLP), the first
    ``Linear(C*p*p, h)`` becomes ``Conv2d(C, h, p, padding=p // 2)`` whose kernel is
    the Linear weight reshaped to ``(h, C, p, p)`` (``Flatten`` orders a patch as
    ``(C, p, p)``, as ``F.unfold`` does); each later ``Linear(a, b)`` becomes a ``1 x 1``
    ``Conv2d(a, b)``. Elementwise layers (ReLU, ...) are copied. The weights are copied, on
    the classifier's device and dtype, so the two modules train independently afterwards.

    Raises:
        TypeError: ``patch_classifier`` is not a :class:`PatchClassifier`, or contains a
            layer other than Flatten, Linear or an elementwise activation/dropout.
    """
    if isinstance(patch_classifier, PatchCNN):
        layers = nn.Sequential(*copy.deepcopy(list(patch_classifier.features)), copy.deepcopy(patch_classifier.head))
        r = patch_classifier.patch_size // 2
        layers[0].padding = (r, r)  # zero-pad the image once; every later layer stays unpadded
        return ConvPatchClassifier(
            layers, patch_classifier.in_channels, patch_classifier.num_classes, patch_classifier.patch_size, kind="cnn"
        )
    if not isinstance(patch_classifier, PatchClassifier):
        raise TypeError(
            f"convolutionalize expects a PatchClassifier or PatchCNN, got {type(patch_classifier).__name__}"
        )
    p, c = patch_classifier.patch_size, patch_classifier.in_channels
    converted: list[nn.Module] = []
    first_linear = True
    for layer in patch_classifier.layers:
        if isinstance(layer, nn.Flatten):
            continue
        if isinstance(layer, nn.Linear):
            weight = layer.weight
            if first_linear:
                conv = nn.Conv2d(
                    c,
                    layer.out_features,
                    p,
                    padding=p // 2,
                    bias=layer.bias is not None,
                    device=weight.device,
                    dtype=weight.dtype,
                )
                new_weight = weight.reshape(layer.out_features, c, p, p)
                first_linear = False
            else:
                conv = nn.Conv2d(
                    layer.in_features,
                    layer.out_features,
                    1,
                    bias=layer.bias is not None,
                    device=weight.device,
                    dtype=weight.dtype,
                )
                new_weight = weight.reshape(layer.out_features, layer.in_features, 1, 1)
            with torch.no_grad():
                conv.weight.copy_(new_weight)
                if layer.bias is not None:
                    conv.bias.copy_(layer.bias)
            converted.append(conv)
        elif isinstance(layer, _ELEMENTWISE):
            converted.append(copy.deepcopy(layer))
        else:
            raise TypeError(f"convolutionalize cannot convert a {type(layer).__name__} layer")
    return ConvPatchClassifier(nn.Sequential(*converted), c, patch_classifier.num_classes, p)


def window_classifier(conv_model: ConvPatchClassifier) -> PatchClassifier | PatchCNN:
    """The window classifier whose convolutionalized form is ``conv_model``: the inverse of :func:`convolutionalize`.

    Weights (and BatchNorm statistics) are copied; the result is in the mode of ``conv_model``.
    Run it on windows with :func:`sliding_window_logits`.

    Raises:
        TypeError: ``conv_model`` is not a :class:`ConvPatchClassifier` that ``convolutionalize`` built.
    """
    if not isinstance(conv_model, ConvPatchClassifier):
        raise TypeError(f"window_classifier expects a ConvPatchClassifier, got {type(conv_model).__name__}")
    layers = list(conv_model.layers)
    if conv_model.kind == "cnn":
        *features, head = copy.deepcopy(layers)
        dilations = [m.dilation[0] for m in features if isinstance(m, nn.Conv2d)]
        cnn = PatchCNN(conv_model.in_channels, conv_model.num_classes, width=head.in_channels, dilations=dilations)
        features[0].padding = (0, 0)  # inside a window nothing is padded
        cnn.features, cnn.head = nn.Sequential(*features), head
        return cnn.train(conv_model.training)
    convs = [m for m in layers if isinstance(m, nn.Conv2d)]
    classifier = PatchClassifier(
        conv_model.in_channels,
        conv_model.num_classes,
        conv_model.patch_size,
        hidden=[conv.out_channels for conv in convs[:-1]],
    )
    classifier.to(device=convs[0].weight.device, dtype=convs[0].weight.dtype)
    linears = [m for m in classifier.layers if isinstance(m, nn.Linear)]
    with torch.no_grad():
        for linear, conv in zip(linears, convs):
            linear.weight.copy_(conv.weight.flatten(1))  # (h, C, p, p) -> (h, C*p*p); 1x1 -> (b, a)
            linear.bias.copy_(conv.bias)
    return classifier.train(conv_model.training)


def sliding_window_logits(classifier: nn.Module, images: Tensor, chunk_size: int = 4096) -> Tensor:
    r"""Segment ``images`` by running a patch classifier on the window around every pixel.

    The reference (slow) implementation: ``F.unfold`` cuts the ``p x p`` window centred on
    every pixel of the zero-padded image (padding ``p // 2``), and the classifier labels
    them ``chunk_size`` windows at a time. Put the classifier in eval mode first if it has
    dropout.

    Args:
        classifier: maps :math:`(B, C, p, p)` to :math:`(B, K)`; must have a ``patch_size``
            attribute (odd ``p``) and, optionally, ``in_channels``, as :class:`PatchClassifier` does.
        images: :math:`(N, C, H, W)` float images.
        chunk_size: number of windows per classifier call (bounds memory).

    Returns:
        :math:`(N, K, H, W)` logits.
    """
    patch_size = getattr(classifier, "patch_size", None)
    if isinstance(patch_size, bool) or not isinstance(patch_size, int) or patch_size < 1 or patch_size % 2 != 1:
        raise ValueError(
            f"sliding_window_logits needs a classifier with an odd int patch_size attribute, got {patch_size!r}"
        )
    check_positive_int(chunk_size, "chunk_size")
    check_images(images, getattr(classifier, "in_channels", None), "sliding_window_logits")

    n, c, h, w = images.shape
    p = patch_size
    # (N, C*p*p, H*W): column j holds the window centred on pixel j, ordered (C, p, p).
    windows = F.unfold(images, kernel_size=p, padding=p // 2)
    windows = windows.transpose(1, 2).reshape(n * h * w, c, p, p)
    logits = torch.cat([classifier(chunk) for chunk in windows.split(chunk_size)])
    return logits.reshape(n, h, w, -1).permute(0, 3, 1, 2).contiguous()
