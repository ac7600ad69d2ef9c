"""U-Net (Ronneberger, Fischer, Brox, 2015), small and with size-preserving convolutions."""

from __future__ import annotations  # noqa: I001  (the model cache is keyed on this module's AST)

import torch
from torch import Tensor, nn

from segutils.models.encoder_decoder import _double_conv, _pad_to_multiple
from segutils.arguments import check_images, check_positive_int

__all__ = ["UNet"]


class UNet(nn.Module):
    r"""The classic U-Net: a contracting path, an expanding path, and concatenated skips.

    Encoder level ``i`` (``i < depth``) is two ``3 x 3`` conv + BatchNorm + ReLU layers with
    ``base_channels * 2**i`` channels, followed by ``2 x 2`` max pooling; the bottleneck has
    ``base_channels * 2**depth`` channels. Each decoder level upsamples with a ``2 x 2``
    stride-2 ``ConvTranspose2d`` that halves the channels, concatenates the encoder features
    of the same resolution, and applies two conv layers. A ``1 x 1`` conv gives the logits.
    Unlike the original paper the convolutions are padded, so no border is lost.

    Sizes that ``2**depth`` does not divide: the input is zero-padded at the bottom and
    right up to the next multiple of ``2**depth`` and the logits are cropped back (the same
    choice as :class:`~segutils.models.EncoderDecoderFCN`).

    Args:
        in_channels: ``C``, channels of the image.
        num_classes: ``K``, number of classes.
        base_channels: channels of the first level (doubling at each level).
        depth: number of downsampling steps.

    Shape:
        - Input: :math:`(N, C, H, W)`, any :math:`H, W`.
        - Output: :math:`(N, K, H, W)` logits.
    """

    def __init__(self, in_channels: int, num_classes: int, base_channels: int = 16, depth: int = 3) -> None:
        super().__init__()
        self.in_channels = check_positive_int(in_channels, "in_channels")
        self.num_classes = check_positive_int(num_classes, "num_classes")
        check_positive_int(base_channels, "base_channels")
        self.depth = check_positive_int(depth, "depth")

        widths = [base_channels * 2**i for i in range(depth + 1)]
        self.down = nn.ModuleList(
            _double_conv(c_in, c_out) for c_in, c_out in zip([in_channels, *widths[:-2]], widths[:-1])
        )
        self.pool = nn.MaxPool2d(2)
        self.bottleneck = _double_conv(widths[-2], widths[-1])
        # up[j] and up_convs[j] go from level depth - j to level depth - j - 1.
        self.up = nn.ModuleList(
            nn.ConvTranspose2d(widths[i + 1], widths[i], 2, stride=2) for i in reversed(range(depth))
        )
        self.up_convs = nn.ModuleList(_double_conv(2 * widths[i], widths[i]) for i in reversed(range(depth)))
        self.head = nn.Conv2d(base_channels, num_classes, 1)

    def forward(self, images: Tensor) -> Tensor:
        check_images(images, self.in_channels, type(self).__name__)
        h, w = images.shape[-2:]
        x = _pad_to_multiple(images, 2**self.depth)
        skips: list[Tensor] = []
        for block in self.down:
            x = block(x)
            skips.append(x)
            x = self.pool(x)
        x = self.bottleneck(x)
        for up, conv, skip in zip(self.up, self.up_convs, reversed(skips)):
            x = conv(torch.cat([skip, up(x)], dim=1))
        return self.head(x)[..., :h, :w]
