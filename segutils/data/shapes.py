"""ShapesDataset: a synthetic segmentation set that can only be solved with context."""

from __future__ import annotations

import zlib
from typing import Callable  # noqa: UP035  (the model cache is keyed on this module's AST)

import numpy as np
import torch
from torch.utils.data import Dataset
from torchvision import tv_tensors

from segutils.data.palette import CLASSES, IGNORE_INDEX
from segutils.data.render import SUPERSAMPLE, downsample_labels, render_scene

Transform = Callable[[tv_tensors.Image, tv_tensors.Mask], tuple[torch.Tensor, torch.Tensor]]


def _as_size(image_size: int | tuple[int, int]) -> tuple[int, int]:
    if isinstance(image_size, int):
        image_size = (image_size, image_size)
    if len(image_size) != 2 or not all(isinstance(s, int) and s >= 8 for s in image_size):
        raise ValueError(f"image_size should be an int or (height, width) of ints >= 8, got {image_size!r}")
    return tuple(image_size)


class ShapesDataset(Dataset):
    """Textured discs, squares, triangles and crosses on a textured background.

    Objects and background draw their colours and textures from one distribution,
    so the class of a pixel cannot be read from the pixel or a small patch around it:
    only the outline of the object it belongs to tells. Objects vary in size (up to
    about half the image side), position and rotation, and occlude each other. Pixels
    on an object's edge are labelled :data:`~segutils.data.IGNORE_INDEX` (a one-pixel
    band), as in PASCAL VOC.

    Samples are generated on the fly and deterministic: sample ``i`` is a pure
    function of ``(seed, split, i)``, identical on every machine, process and
    DataLoader worker.

    Args:
        split: any name; different names give independent samples
            (``"train"``, ``"val"``, ``"test"``...).
        size: number of samples.
        image_size: ``H`` (square) or ``(H, W)``, each at least 8.
        seed: selects the whole family of samples.
        transform: optional joint transform called as ``transform(image, mask)`` with
            ``tv_tensors.Image`` and ``tv_tensors.Mask``, returning the pair (see
            :mod:`segutils.data.transforms`).
        max_objects: at most this many objects per image (at least one).
        ignore_boundary: mark edge pixels with ``IGNORE_INDEX``; when False they take
            the majority class of the pixel.
        outline_detail: amplitude in pixels of waves along every outline (0: straight
            edges and round discs, the default). Wavy outlines have detail finer than a
            network's coarse stride, for experiments on boundary precision.

    Each item is ``(image, mask)``: image float32 ``(3, H, W)`` in ``[0, 1]``, mask
    int64 ``(H, W)`` with ids in ``[0, len(CLASSES))`` or ``IGNORE_INDEX``.
    """

    classes = CLASSES
    num_classes = len(CLASSES)
    ignore_index = IGNORE_INDEX

    def __init__(
        self,
        split: str = "train",
        size: int = 1000,
        image_size: int | tuple[int, int] = 64,
        seed: int = 0,
        transform: Transform | None = None,
        max_objects: int = 3,
        ignore_boundary: bool = True,
        outline_detail: float = 0.0,
    ) -> None:
        if not isinstance(split, str) or not split:
            raise ValueError(f"split should be a non-empty string, got {split!r}")
        if not isinstance(size, int) or size < 0:
            raise ValueError(f"size should be a non-negative int, got {size!r}")
        if not isinstance(seed, int) or seed < 0:
            raise ValueError(f"seed should be a non-negative int, got {seed!r}")
        if not isinstance(max_objects, int) or max_objects < 1:
            raise ValueError(f"max_objects should be an int >= 1, got {max_objects!r}")
        self.split = split
        self.size = size
        self.image_size = _as_size(image_size)
        self.seed = seed
        self.transform = transform
        self.max_objects = max_objects
        self.ignore_boundary = ignore_boundary
        if (
            isinstance(outline_detail, bool)
            or not isinstance(outline_detail, (int, float))
            or not 0 <= outline_detail <= 8
        ):
            raise ValueError(f"outline_detail should be a number of pixels in [0, 8], got {outline_detail!r}")
        self.outline_detail = float(outline_detail)
        # crc32, unlike hash(), is the same in every process.
        self._split_key = zlib.crc32(split.encode("utf-8"))

    def __len__(self) -> int:
        return self.size

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        if not -self.size <= index < self.size:
            raise IndexError(f"index {index} is out of range for a ShapesDataset of size {self.size}")
        index %= self.size
        rng = np.random.default_rng([self.seed, self._split_key, index])
        height, width = self.image_size
        image, labels = render_scene(rng, height, width, self.max_objects, outline_detail=self.outline_detail)
        mask = downsample_labels(labels, SUPERSAMPLE, IGNORE_INDEX if self.ignore_boundary else None)
        image_t = torch.from_numpy(np.ascontiguousarray(image.transpose(2, 0, 1)))
        mask_t = torch.from_numpy(np.ascontiguousarray(mask)).long()
        if self.transform is not None:
            image_t, mask_t = self.transform(tv_tensors.Image(image_t), tv_tensors.Mask(mask_t))
            image_t, mask_t = image_t.as_subclass(torch.Tensor), mask_t.as_subclass(torch.Tensor)
        return image_t, mask_t

    def batch(self, indices: range | list[int]) -> tuple[torch.Tensor, torch.Tensor]:
        """Samples ``indices`` stacked: images ``(N, 3, H, W)``, masks ``(N, H, W)``."""
        images, masks = zip(*(self[i] for i in indices))
        return torch.stack(images), torch.stack(masks)

    def __repr__(self) -> str:
        return (
            f"ShapesDataset(split={self.split!r}, size={self.size}, image_size={self.image_size}, "
            f"seed={self.seed}, classes={list(self.classes)})"
        )
