"""Optional real data: PASCAL VOC 2012 segmentation, read from disk only."""

from __future__ import annotations

from pathlib import Path
from typing import Callable  # noqa: UP035  (the model cache is keyed on this module's AST)

import numpy as np
import torch
from PIL import Image
from torchvision import tv_tensors
from torchvision.datasets import VOCSegmentation

from segutils.data.palette import IGNORE_INDEX
from segutils.data.transforms import eval_transform

VOC_CLASSES: tuple[str, ...] = (
    "background", "aeroplane", "bicycle", "bird", "boat", "bottle", "bus", "car", "cat", "chair", "cow",
    "diningtable", "dog", "horse", "motorbike", "person", "pottedplant", "sheep", "sofa", "train", "tvmonitor",
)  # fmt: skip
VOC_VOID_COLOR = (224, 224, 192)


def voc_palette(num_classes: int = len(VOC_CLASSES)) -> np.ndarray:
    """The VOC colour map: ``(num_classes, 3)`` uint8, from the devkit's bit-interleaving rule."""
    palette = np.zeros((num_classes, 3), dtype=np.uint8)
    for class_id in range(num_classes):
        c, r, g, b = class_id, 0, 0, 0
        for shift in range(7, -1, -1):
            r |= ((c >> 0) & 1) << shift
            g |= ((c >> 1) & 1) << shift
            b |= ((c >> 2) & 1) << shift
            c >>= 3
        palette[class_id] = (r, g, b)
    return palette


def voc_target_to_mask(target: Image.Image) -> np.ndarray:
    """A VOC label image -> int64 ``(H, W)`` class ids, void -> :data:`IGNORE_INDEX`.

    The devkit's PNGs are palette images whose indices are the class ids (void is
    already 255). RGB-converted copies are mapped back through the VOC colour map.

    Raises:
        ValueError: an RGB label image holds a colour that is no VOC class.
    """
    if target.mode in ("P", "L"):
        return np.asarray(target, dtype=np.int64)
    rgb = np.asarray(target.convert("RGB"), dtype=np.int64)
    codes = (rgb[..., 0] << 16) | (rgb[..., 1] << 8) | rgb[..., 2]
    mask = np.full(codes.shape, -1, dtype=np.int64)
    for class_id, (r, g, b) in enumerate(voc_palette().astype(np.int64)):
        mask[codes == ((r << 16) | (g << 8) | b)] = class_id
    void = VOC_VOID_COLOR
    mask[codes == ((void[0] << 16) | (void[1] << 8) | void[2])] = IGNORE_INDEX
    if (mask < 0).any():
        bad = rgb[mask < 0][0]
        raise ValueError(f"label image holds the colour {tuple(int(v) for v in bad)}, which is no VOC class colour")
    return mask


def voc_segmentation(
    root: str | Path,
    split: str = "train",
    transform: Callable | None = None,
    year: str = "2012",
) -> VOCSegmentation:
    """PASCAL VOC segmentation from ``root`` (never downloads).

    Expects the devkit layout ``root/VOCdevkit/VOC{year}/{JPEGImages,SegmentationClass,
    ImageSets/Segmentation/{split}.txt}``. Items are ``(image, mask)``: float32
    ``(3, H, W)`` in ``[0, 1]`` and int64 ``(H, W)`` with void = ``IGNORE_INDEX``,
    after the optional joint ``transform(image, mask)``.

    Raises:
        FileNotFoundError: the data is not at ``root``; the message says where it goes.
    """
    base = Path(root).expanduser() / "VOCdevkit" / f"VOC{year}"
    needed = [base / "JPEGImages", base / "SegmentationClass", base / "ImageSets" / "Segmentation" / f"{split}.txt"]
    missing = [str(p) for p in needed if not p.exists()]
    if missing:
        raise FileNotFoundError(
            f"PASCAL VOC {year} was not found under {Path(root).expanduser()}: missing {', '.join(missing)}. "
            f"segutils never downloads data: unpack VOCtrainval (the devkit archive) so that "
            f"{base}/JPEGImages, SegmentationClass and ImageSets/Segmentation exist, or use ShapesDataset."
        )
    to_tensors = eval_transform()

    def convert(image: Image.Image, target: Image.Image) -> tuple[torch.Tensor, torch.Tensor]:
        pair = to_tensors(image, tv_tensors.Mask(torch.from_numpy(voc_target_to_mask(target))))
        if transform is not None:
            pair = transform(*pair)
        return pair[0].as_subclass(torch.Tensor), pair[1].as_subclass(torch.Tensor)

    return VOCSegmentation(str(root), year=year, image_set=split, download=False, transforms=convert)
