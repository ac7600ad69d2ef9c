"""Data: the synthetic :class:`ShapesDataset`, optional PASCAL VOC, palettes and joint transforms."""

from segutils.data.palette import CLASSES, IGNORE_COLOR, IGNORE_INDEX, PALETTE, colorize
from segutils.data.shapes import ShapesDataset
from segutils.data.transforms import eval_transform, train_transform
from segutils.data.voc import VOC_CLASSES, voc_segmentation

__all__ = [
    "CLASSES",
    "IGNORE_COLOR",
    "IGNORE_INDEX",
    "PALETTE",
    "ShapesDataset",
    "VOC_CLASSES",
    "colorize",
    "eval_transform",
    "train_transform",
    "voc_segmentation",
]
