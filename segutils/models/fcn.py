"""Full-resolution fully convolutional networks: no downsampling anywhere.

:class:`PlainFCN` stacks stride-1 ``3 x 3`` convolutions, so its receptive field grows by 2
per layer (``1 + 2L``); :class:`DilatedFCN` spaces the taps of each ``3 x 3`` kernel
``d`` pixels apart, so the receptive field grows by ``2d`` per layer at the same cost.
"""

from __future__ import annotations

from collections.abc import Sequence

from torch import Tensor, nn

from segutils.arguments import check_images, check_positive_int

__all__ = ["PlainFCN", "DilatedFCN"]


def _conv_bn_relu(in_channels: int, out_channels: int, dilation: int = 1) -> list[nn.Module]:
    """``3 x 3`` convolution (size-preserving padding), BatchNorm, ReLU."""
    return [
        nn.Conv2d(in_channels, out_channels, 3, padding=dilation, dilation=dilation, bias=False),
        nn.BatchNorm2d(out_channels),
        nn.ReLU(inplace=True),
    ]


class _FullResolutionFCN(nn.Module):
    """``features`` (spatial layers, applied in order) then a ``1 x 1`` classifier."""

    def __init__(self, in_channels: int, num_classes: int, channels: int, dilations: Sequence[int]) -> None:
        super().__init__()
        self.in_channels = check_positive_int(in_channels, "in_channels")
        self.num_classes = check_positive_int(num_classes, "num_classes")
        check_positive_int(channels, "channels")
        layers: list[nn.Module] = []
        width = in_channels
        for dilation in dilations:
            layers += _conv_bn_relu(width, channels, dilation)
            width = channels
        self.features = nn.Sequential(*layers)
        self.classifier = nn.Conv2d(width, num_classes, 1)

    def forward(self, images: Tensor) -> Tensor:
        check_images(images, self.in_channels, type(self).__name__)
        return self.classifier(self.features(images))


class PlainFCN(_FullResolutionFCN):
    r"""``num_layers`` stride-1 ``3 x 3`` conv + BatchNorm + ReLU blocks and a ``1 x 1`` classifier.

    No pooling and no strides: every layer works at full resolution, and the receptive
    field is ``1 + 2 * num_layers`` pixels.

    Args:
        in_channels: ``C``, channels of the image.
        num_classes: ``K``, number of classes.
        channels: width of every hidden layer.
        num_layers: ``L >= 1``, number of ``3 x 3`` layers.

    Shape:
        - Input: :math:`(N, C, H, W)`, any :math:`H, W`.
        - Output: :math:`(N, K, H, W)` logits.
    """

    def __init__(self, in_channels: int, num_classes: int, channels: int = 32, num_layers: int = 4) -> None:
        check_positive_int(num_layers, "num_layers")
        super().__init__(in_channels, num_classes, channels, [1] * num_layers)
        self.num_layers = num_layers


class DilatedFCN(_FullResolutionFCN):
    r"""``3 x 3`` conv + BatchNorm + ReLU blocks with the given dilations, and a ``1 x 1`` classifier.

    Layer ``i`` uses dilation ``d_i`` and padding ``d_i``, so the resolution never drops and
    the receptive field is ``1 + 2 * sum(dilations)`` pixels (31 for ``(1, 2, 4, 8)``, against
    9 for four undilated layers).

    Args:
        in_channels: ``C``, channels of the image.
        num_classes: ``K``, number of classes.
        channels: width of every hidden layer.
        dilations: one positive dilation per ``3 x 3`` layer (at least one).

    Shape:
        - Input: :math:`(N, C, H, W)`, any :math:`H, W`.
        - Output: :math:`(N, K, H, W)` logits.
    """

    def __init__(
        self, in_channels: int, num_classes: int, channels: int = 32, dilations: Sequence[int] = (1, 2, 4, 8)
    ) -> None:
        dilations = tuple(dilations)
        if not dilations:
            raise ValueError("dilations must name at least one layer, got an empty sequence")
        for i, dilation in enumerate(dilations):
            check_positive_int(dilation, f"dilations[{i}]")
        super().__init__(in_channels, num_classes, channels, dilations)
        self.dilations = dilations
