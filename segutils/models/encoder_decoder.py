"""An FCN-style encoder-decoder (FCN-32s/16s/8s in spirit) and the FCN bilinear initialisation.

The encoder halves the resolution ``depth`` times; ``1 x 1`` "score" layers turn features
into class logits; the decoder upsamples the coarse scores back to the input size, adding
(with ``skips=True``) the scores of each finer encoder stage on the way, as FCN-16s/8s add
the scores of pool4/pool3 to the upsampled scores of the last layer.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from segutils.arguments import check_images, check_positive_int

__all__ = ["EncoderDecoderFCN", "bilinear_kernel", "UPSAMPLE_MODES"]

UPSAMPLE_MODES = ("transposed", "bilinear", "nearest")


def bilinear_kernel(
    channels: int, scale: int, *, dtype: torch.dtype | None = None, device: torch.device | str | None = None
) -> Tensor:
    r"""The FCN initialisation of a ``ConvTranspose2d`` that upsamples by ``scale`` bilinearly.

    ``k = 2 * scale - scale % 2``; tap ``(u, v)`` of the kernel is
    ``(1 - |u - c| / scale) * (1 - |v - c| / scale)`` with centre ``c = scale - 1`` (odd ``k``)
    or ``scale - 0.5`` (even ``k``), as in the FCN authors' ``upsample_filt``. Channels are
    not mixed: only the diagonal ``weight[i, i]`` is nonzero.

    Used in ``nn.ConvTranspose2d(channels, channels, k, stride=scale,
    padding=math.ceil((scale - 1) / 2))``, the output is exactly ``scale`` times the input
    size and equals ``F.interpolate(..., mode="bilinear", align_corners=False)`` away from
    the border (the transposed convolution sees zeros beyond the border where
    ``interpolate`` repeats the edge).

    Returns:
        :math:`(\text{channels}, \text{channels}, k, k)` weight tensor.
    """
    check_positive_int(channels, "channels")
    check_positive_int(scale, "scale")
    size = 2 * scale - scale % 2
    centre = scale - 1 if size % 2 == 1 else scale - 0.5
    taps = torch.arange(size, dtype=dtype or torch.get_default_dtype(), device=device)
    filt_1d = 1 - (taps - centre).abs() / scale
    filt = filt_1d[:, None] * filt_1d[None, :]
    eye = torch.eye(channels, dtype=filt.dtype, device=filt.device)
    return eye[:, :, None, None] * filt


def _double_conv(in_channels: int, out_channels: int) -> nn.Sequential:
    """Two ``3 x 3`` conv + BatchNorm + ReLU layers (size-preserving)."""
    return nn.Sequential(
        nn.Conv2d(in_channels, out_channels, 3, padding=1, bias=False),
        nn.BatchNorm2d(out_channels),
        nn.ReLU(inplace=True),
        nn.Conv2d(out_channels, out_channels, 3, padding=1, bias=False),
        nn.BatchNorm2d(out_channels),
        nn.ReLU(inplace=True),
    )


def _pad_to_multiple(images: Tensor, multiple: int) -> Tensor:
    """Zero-pad ``(N, C, H, W)`` at the bottom and right so that ``H`` and ``W`` divide by ``multiple``."""
    h, w = images.shape[-2:]
    pad_h, pad_w = -h % multiple, -w % multiple
    if pad_h == 0 and pad_w == 0:
        return images
    return F.pad(images, (0, pad_w, 0, pad_h))


def _make_upsample(mode: str, channels: int, scale: int) -> nn.Module:
    """An ``nn.Module`` that multiplies H and W of ``(N, channels, H, W)`` by ``scale``."""
    if mode == "transposed":
        up = nn.ConvTranspose2d(
            channels, channels, 2 * scale - scale % 2, stride=scale, padding=math.ceil((scale - 1) / 2), bias=False
        )
        with torch.no_grad():
            up.weight.copy_(bilinear_kernel(channels, scale, dtype=up.weight.dtype, device=up.weight.device))
        return up
    if mode == "bilinear":
        return nn.Upsample(scale_factor=scale, mode="bilinear", align_corners=False)
    return nn.Upsample(scale_factor=scale, mode="nearest")


class EncoderDecoderFCN(nn.Module):
    r"""FCN-style encoder-decoder: downsample ``depth`` times, score, upsample and fuse.

    Encoder: ``depth`` stages of two ``3 x 3`` conv + BatchNorm + ReLU layers, each followed
    by ``2 x 2`` max pooling (stage ``i`` has ``base_channels * 2**i`` channels and its pooled
    output has stride ``2**(i + 1)``), then a "bottom" block of two more conv layers at stride
    ``2**depth`` with ``base_channels * 2**depth`` channels, the analogue of FCN's fc6/fc7.
    A ``1 x 1`` conv scores the bottom features.

    Decoder:

    - ``skips=False`` (FCN-32s): one upsampling by ``2**depth``.
    - ``skips=True`` (FCN-16s/8s): upsample the scores by 2, add the ``1 x 1`` scores of the
      pooled encoder stage at that stride, repeat down to stride 2, then upsample by 2. As in
      FCN, the skip score layers start at zero, so training starts from the coarse model.
    - ``skips=n`` (an int): fuse only the ``n`` coarsest skips, then upsample the rest of the
      way in one step; with ``depth=3``, ``skips=1`` is the FCN-16s analogue (fuse stride 4,
      upsample by 4) and ``skips=2`` equals ``skips=True``.

    ``upsample="transposed"`` uses learnable ``ConvTranspose2d`` layers initialised with
    :func:`bilinear_kernel`; ``"bilinear"``/``"nearest"`` use fixed interpolation.

    Sizes that ``2**depth`` does not divide: the input is zero-padded at the bottom and
    right up to the next multiple of ``2**depth`` and the logits are cropped back, so every
    skip lines up exactly with the upsampled scores. (Padding can slightly change the logits
    near the bottom and right edges compared with a model that never pads.)

    Args:
        in_channels: ``C``, channels of the image.
        num_classes: ``K``, number of classes.
        base_channels: channels of the first stage (doubling at each stage).
        depth: number of downsampling stages (output stride of the encoder is ``2**depth``).
        upsample: ``"transposed"``, ``"bilinear"`` or ``"nearest"``.
        skips: fuse the scores of all finer encoder stages (True, FCN-8s style), none (False,
            FCN-32s) or the ``n`` coarsest (an int from 0 to ``depth - 1``).

    Shape:
        - Input: :math:`(N, C, H, W)`, any :math:`H, W`.
        - Output: :math:`(N, K, H, W)` logits.
    """

    def __init__(
        self,
        in_channels: int,
        num_classes: int,
        base_channels: int = 16,
        depth: int = 3,
        upsample: str = "transposed",
        skips: bool = True,
    ) -> None:
        super().__init__()
        self.in_channels = check_positive_int(in_channels, "in_channels")
        self.num_classes = check_positive_int(num_classes, "num_classes")
        check_positive_int(base_channels, "base_channels")
        self.depth = check_positive_int(depth, "depth")
        if upsample not in UPSAMPLE_MODES:
            raise ValueError(f"upsample must be one of {UPSAMPLE_MODES}, got {upsample!r}")
        if isinstance(skips, bool):
            num_skips = depth - 1 if skips else 0
        elif isinstance(skips, int):
            if not 0 <= skips <= depth - 1:
                raise ValueError(f"skips must be a bool or an int in [0, depth - 1] = [0, {depth - 1}], got {skips}")
            num_skips = skips
        else:
            raise TypeError(f"skips must be a bool or an int, got {type(skips).__name__}")
        self.upsample = upsample
        self.num_skips = num_skips
        self.skips = num_skips > 0
        #: Encoder stages whose pooled scores are fused, coarsest last (stage i has stride 2**(i + 1)).
        self.skip_stages = list(range(depth - 1 - num_skips, depth - 1))

        widths = [base_channels * 2**i for i in range(depth)]
        self.stages = nn.ModuleList(_double_conv(c_in, c_out) for c_in, c_out in zip([in_channels, *widths], widths))
        self.pool = nn.MaxPool2d(2)
        self.bottom = _double_conv(widths[-1], base_channels * 2**depth)
        self.score = nn.Conv2d(base_channels * 2**depth, num_classes, 1)
        if num_skips:
            # skip_scores[k] scores the pooled output of stage skip_stages[k]; with all skips, k is the stage.
            self.skip_scores = nn.ModuleList(nn.Conv2d(widths[i], num_classes, 1) for i in self.skip_stages)
            for layer in self.skip_scores:
                nn.init.zeros_(layer.weight)
                nn.init.zeros_(layer.bias)
            # ups[j] (j < num_skips) goes from stride 2**(depth - j) to 2**(depth - j - 1); the last one
            # from the finest fused stride to stride 1.
            self.ups = nn.ModuleList(_make_upsample(upsample, num_classes, 2) for _ in range(num_skips))
            self.ups.append(_make_upsample(upsample, num_classes, 2 ** (depth - num_skips)))
        else:
            self.skip_scores = nn.ModuleList()
            self.ups = nn.ModuleList([_make_upsample(upsample, num_classes, 2**depth)])

    def forward(self, images: Tensor) -> Tensor:
        check_images(images, self.in_channels, type(self).__name__)
        h, w = images.shape[-2:]
        x = _pad_to_multiple(images, 2**self.depth)
        pooled: list[Tensor] = []
        for stage in self.stages:
            x = self.pool(stage(x))
            pooled.append(x)
        scores = self.score(self.bottom(x))
        for j in range(self.num_skips):  # coarsest skip first
            k = self.num_skips - 1 - j
            scores = self.ups[j](scores) + self.skip_scores[k](pooled[self.skip_stages[k]])
        scores = self.ups[-1](scores)
        return scores[..., :h, :w]
