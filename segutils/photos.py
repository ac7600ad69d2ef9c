"""Real photographs for the pretrained networks: the ones scikit-image's wheel ships, and pictures of predictions.

The photographs load from the files inside the installed ``scikit-image`` package (no download).
Each comes with its credit and licence, as scikit-image documents them.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np
import torch
from matplotlib.figure import Figure
from torch import Tensor

from segutils.data.voc import voc_palette
from segutils.viz import legend_handles, overlay

__all__ = [
    "Photo",
    "PHOTOS",
    "VOC_PALETTE",
    "credits_table",
    "load_photo",
    "read_image",
    "plot_crops",
    "plot_photos",
    "plot_predictions",
    "plot_probabilities",
]

#: The PASCAL VOC colour of each class id, ``(21, 3)`` uint8 (the devkit's colour map).
VOC_PALETTE = torch.from_numpy(voc_palette())


@dataclass(frozen=True)
class Photo:
    """A photograph bundled with scikit-image, and whom to credit."""

    name: str
    file: str  #: file name in ``skimage.data``'s folder
    subject: str
    credit: str  #: Markdown
    licence: str


#: The photographs by name, in the order the chapter shows them.
PHOTOS: dict[str, Photo] = {
    photo.name: photo
    for photo in (
        Photo(
            "astronaut",
            "astronaut.png",
            "the astronaut Eileen Collins",
            "NASA (NASA Great Images database), via scikit-image's `skimage.data.astronaut`",
            "public domain: no known copyright restrictions",
        ),
        Photo(
            "chelsea",
            "chelsea.png",
            "Chelsea the cat",
            "Stefan van der Walt, via scikit-image's `skimage.data.chelsea`",
            "CC0",
        ),
        Photo(
            "coffee",
            "coffee.png",
            "a coffee cup",
            "Rachel Michetti, courtesy of Pikolo Espresso Bar, via scikit-image's `skimage.data.coffee`",
            "CC0",
        ),
        Photo(
            "camera",
            "camera.png",
            "a photographer with a camera on a tripod (greyscale)",
            "Lav Varshney, via scikit-image's `skimage.data.camera`",
            "CC0",
        ),
    )
}


def read_image(path: str | Path) -> Tensor:
    """An image file (any format Pillow reads) as float ``(3, H, W)`` in ``[0, 1]`` (RGB)."""
    from PIL import Image, UnidentifiedImageError

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no image file {path}")
    try:
        with Image.open(path) as image:
            array = np.asarray(image.convert("RGB"))
    except UnidentifiedImageError as error:
        raise ValueError(f"{path} is not an image Pillow can read") from error
    return torch.from_numpy(array.copy()).permute(2, 0, 1).float() / 255


def load_photo(name: str) -> Tensor:
    """The photograph ``name`` of :data:`PHOTOS` as float ``(3, H, W)`` in ``[0, 1]``.

    It is read from scikit-image's own files (bundled in its wheel: nothing is downloaded).
    """
    import skimage.data

    if name not in PHOTOS:
        raise ValueError(f"unknown photograph {name!r}; choose from {', '.join(PHOTOS)}")
    return read_image(Path(skimage.data.data_dir) / PHOTOS[name].file)


def credits_table(photos: Mapping[str, Tensor]) -> str:
    """A Markdown table of the photographs: size, subject, credit and licence."""
    lines = ["| photograph | pixels | subject | credit | licence |", "|---|---|---|---|---|"]
    for name, image in photos.items():
        photo = PHOTOS[name]
        lines.append(
            f"| {name} | {image.shape[2]}×{image.shape[1]} | {photo.subject} | {photo.credit} | {photo.licence} |"
        )
    return "\n".join(lines)


def plot_photos(photos: Mapping[str, Tensor]) -> Figure:
    """The photographs side by side, titled with their names."""
    fig, axes = plt.subplots(1, len(photos), figsize=(3.0 * len(photos), 2.6), squeeze=False, layout="constrained")
    for ax, (name, image) in zip(axes[0], photos.items()):
        _show(ax, image, name)
    return fig


def _show(ax: plt.Axes, picture: Tensor, title: str = "") -> None:
    ax.imshow(picture.permute(1, 2, 0).numpy() if picture.ndim == 3 else picture.numpy(), interpolation="nearest")
    ax.set_title(title, fontsize=9)
    ax.set_xticks([])
    ax.set_yticks([])


def _legend(fig: Figure, masks: Sequence[Tensor], classes: Sequence[str]) -> None:
    present = sorted({int(c) for mask in masks for c in mask.unique()} - {0})
    handles = legend_handles(classes, VOC_PALETTE, ignore=False)
    shown = [handles[c] for c in present] or [handles[0]]
    fig.legend(handles=shown, loc="outside right center", frameon=False, title="VOC classes")


def plot_predictions(
    photos: Mapping[str, Tensor],
    predictions: Mapping[str, Mapping[str, Tensor]],
    classes: Sequence[str],
    alpha: float = 0.6,
) -> Figure:
    """One row per photograph: the photograph, then each network's prediction over it (VOC colours).

    Args:
        photos: name -> float image ``(3, H, W)`` in ``[0, 1]``.
        predictions: network -> photo name -> class ids ``(H, W)``.
        classes: class names, index = class id (background 0 is left uncoloured).
    """
    columns = ["photograph", *predictions]
    fig, axes = plt.subplots(
        len(photos),
        len(columns),
        figsize=(2.6 * len(columns) + 1.8, 2.1 * len(photos)),
        squeeze=False,
        layout="constrained",
    )
    for row, (name, image) in enumerate(photos.items()):
        _show(axes[row, 0], image, name if row else f"photograph: {name}")
        for col, network in enumerate(predictions, start=1):
            mask = predictions[network][name]
            _show(axes[row, col], overlay(image, mask, alpha=alpha, palette=VOC_PALETTE), network if row == 0 else "")
    _legend(fig, [m for p in predictions.values() for m in p.values()], classes)
    return fig


def plot_probabilities(image: Tensor, probabilities: Tensor, classes: Sequence[str], top: int = 5) -> Figure:
    """The photograph and the per-class probability maps ``(K, H, W)`` of the ``top`` classes with the largest mass."""
    order = probabilities.flatten(1).sum(1).argsort(descending=True)[:top].tolist()
    fig, axes = plt.subplots(1, len(order) + 1, figsize=(2.4 * (len(order) + 1), 2.4), layout="constrained")
    _show(axes[0], image, "photograph")
    for ax, c in zip(axes[1:], order):
        shown = ax.imshow(probabilities[c].numpy(), vmin=0, vmax=1, cmap="viridis")
        ax.set_title(f"p({classes[c]})", fontsize=9)
        ax.set_xticks([])
        ax.set_yticks([])
    fig.colorbar(shown, ax=axes[1:].tolist(), shrink=0.8, label="probability")
    return fig


def plot_crops(
    image: Tensor, variants: Mapping[str, Tensor], box: tuple[int, int, int, int], alpha: float = 0.6
) -> Figure:
    """The same crop ``(top, left, height, width)`` of several predictions ``(H, W)`` of one image ``(3, H, W)``."""
    top, left, height, width = box
    crop = (slice(top, top + height), slice(left, left + width))
    fig, axes = plt.subplots(1, len(variants), figsize=(2.8 * len(variants), 2.9), squeeze=False, layout="constrained")
    for ax, (label, mask) in zip(axes[0], variants.items()):
        _show(ax, overlay(image[:, crop[0], crop[1]], mask[crop], alpha=alpha, palette=VOC_PALETTE), label)
    return fig
