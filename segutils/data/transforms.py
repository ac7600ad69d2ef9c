"""Joint image + mask augmentation with ``torchvision.transforms.v2``.

The pipelines are called as ``transform(image, mask)`` with a ``tv_tensors.Image``
and a ``tv_tensors.Mask``: geometric transforms move both alike, masks are always
resampled with nearest neighbour (never interpolated: class ids are not numbers to
average), and photometric transforms touch the image only.
"""

from __future__ import annotations

import torch
from torchvision import tv_tensors
from torchvision.transforms import v2


def train_transform(
    crop_size: int | tuple[int, int] | None = None,
    scale: tuple[float, float] = (0.5, 1.0),
    flip: bool = True,
    color_jitter: float = 0.1,
) -> v2.Compose:
    """Augmentation for training.

    Args:
        crop_size: output size of a random resized crop (covering ``scale`` of the
            image area); None keeps the size and skips cropping.
        scale: area range of the random crop.
        flip: random horizontal and vertical flips.
        color_jitter: strength of brightness/contrast/saturation jitter (0 disables).
    """
    steps: list[v2.Transform] = [v2.ToImage()]
    if crop_size is not None:
        steps.append(v2.RandomResizedCrop(crop_size, scale=scale, antialias=True))
    if flip:
        steps += [v2.RandomHorizontalFlip(), v2.RandomVerticalFlip()]
    steps.append(v2.ToDtype({tv_tensors.Image: torch.float32, "others": None}, scale=True))
    if color_jitter > 0:
        steps.append(v2.ColorJitter(brightness=color_jitter, contrast=color_jitter, saturation=color_jitter))
    return v2.Compose(steps)


def eval_transform(size: int | tuple[int, int] | None = None) -> v2.Compose:
    """Evaluation pipeline: PIL or tensor in, float image in ``[0, 1]`` and int64 mask out,
    optionally resized (image bilinear, mask nearest)."""
    steps: list[v2.Transform] = [v2.ToImage()]
    if size is not None:
        steps.append(v2.Resize(size, antialias=True))
    steps.append(
        v2.ToDtype({tv_tensors.Image: torch.float32, tv_tensors.Mask: torch.int64, "others": None}, scale=True)
    )
    return v2.Compose(steps)
