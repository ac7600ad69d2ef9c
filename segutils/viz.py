"""Pictures for the book: sample grids, overlays, training curves, confusion matrices,
receptive fields. Every function returns the matplotlib Figure (nothing is shown or saved)."""

from __future__ import annotations

from collections.abc import Sequence

import matplotlib.pyplot as plt
import torch
from matplotlib.figure import Figure
from matplotlib.patches import Patch
from torchvision.utils import draw_segmentation_masks

from segutils.data.palette import CLASSES, IGNORE_COLOR, IGNORE_INDEX, PALETTE, colorize


def _image_hwc(image: torch.Tensor) -> torch.Tensor:
    if image.ndim != 3 or image.shape[0] not in (1, 3):
        raise ValueError(f"image should have shape (C, H, W) with C in (1, 3), got {tuple(image.shape)}")
    return image.detach().float().cpu().clamp(0, 1).permute(1, 2, 0)


def legend_handles(
    classes: Sequence[str] = CLASSES, palette: torch.Tensor = PALETTE, ignore: bool = True
) -> list[Patch]:
    """Legend entries (one coloured patch per class, plus the ignore colour)."""
    handles = [Patch(color=(palette[i].float() / 255).tolist(), label=name) for i, name in enumerate(classes)]
    if ignore:
        handles.append(Patch(color=[c / 255 for c in IGNORE_COLOR], label=f"ignore ({IGNORE_INDEX})"))
    return handles


def show_samples(
    images: torch.Tensor,
    masks: torch.Tensor,
    predictions: torch.Tensor | None = None,
    classes: Sequence[str] = CLASSES,
    palette: torch.Tensor = PALETTE,
    max_items: int = 8,
    titles: Sequence[str] = ("image", "label", "prediction"),
) -> Figure:
    """A grid with one column per sample: image, label mask and (optionally) prediction.

    Args:
        images: ``(N, 3, H, W)`` floats in ``[0, 1]``.
        masks: ``(N, H, W)`` class ids.
        predictions: ``(N, H, W)`` class ids, or logits ``(N, K, H, W)`` (argmax taken).
    """
    if images.ndim != 4 or masks.ndim != 3 or images.shape[0] != masks.shape[0]:
        raise ValueError(
            f"expected images (N, C, H, W) and masks (N, H, W), got {tuple(images.shape)} and {tuple(masks.shape)}"
        )
    if predictions is not None and predictions.is_floating_point():
        predictions = predictions.argmax(1)
    rows = [images, masks] + ([predictions] if predictions is not None else [])
    n = min(images.shape[0], max_items)
    fig, axes = plt.subplots(len(rows), n, figsize=(1.6 * n + 1.6, 1.6 * len(rows)), squeeze=False)
    for r, row in enumerate(rows):
        for c in range(n):
            ax = axes[r, c]
            picture = _image_hwc(row[c]) if r == 0 else colorize(row[c].detach().cpu(), palette)
            ax.imshow(picture.numpy(), interpolation="nearest")
            ax.set_xticks([])
            ax.set_yticks([])
        axes[r, 0].set_ylabel(titles[r])
    fig.legend(handles=legend_handles(classes, palette), loc="center right", frameon=False)
    fig.subplots_adjust(right=1 - 1.5 / (1.6 * n + 1.6), wspace=0.05, hspace=0.05)
    return fig


def overlay(
    image: torch.Tensor, mask: torch.Tensor, alpha: float = 0.5, palette: torch.Tensor = PALETTE
) -> torch.Tensor:
    """Blend the class colours of ``mask`` ``(H, W)`` over ``image`` ``(3, H, W)`` in ``[0, 1]``.

    Background (class 0) and ignored pixels stay uncoloured. Returns uint8 ``(3, H, W)``.
    """
    num_classes = palette.shape[0]
    masks = torch.stack([mask == c for c in range(1, num_classes)]).cpu()
    colors = [tuple(int(v) for v in palette[c]) for c in range(1, num_classes)]
    picture = (image.detach().float().cpu().clamp(0, 1) * 255).round().to(torch.uint8)
    return draw_segmentation_masks(picture, masks, alpha=alpha, colors=colors)


def plot_history(history: dict[str, list[float]], metrics: Sequence[str] = ("loss", "mean_iou")) -> Figure:
    """Training curves from :func:`segutils.train.fit`'s history: one panel per metric,
    train and validation side by side, against the epoch."""
    fig, axes = plt.subplots(1, len(metrics), figsize=(4.2 * len(metrics), 3.2), squeeze=False)
    for ax, metric in zip(axes[0], metrics):
        for split in ("train", "val"):
            key = f"{split}_{metric}"
            if key in history:
                ax.plot(history["epoch"], history[key], marker="o", label=split)
        ax.set_xlabel("epoch")
        ax.set_ylabel(metric.replace("_", " "))
        ax.grid(alpha=0.3)
        ax.legend()
    fig.tight_layout()
    return fig


def plot_confusion_matrix(conf: torch.Tensor, classes: Sequence[str] = CLASSES, normalize: bool = True) -> Figure:
    """Heatmap of a ``(K, K)`` confusion matrix (rows = target, columns = prediction);
    ``normalize`` divides each row by its total, so the diagonal is per-class recall."""
    if conf.ndim != 2 or conf.shape[0] != conf.shape[1] or conf.shape[0] != len(classes):
        raise ValueError(f"conf should have shape ({len(classes)}, {len(classes)}), got {tuple(conf.shape)}")
    values = conf.detach().double().cpu()
    if normalize:
        values = values / values.sum(1, keepdim=True).clamp(min=1)
    fig, ax = plt.subplots(figsize=(1.0 * len(classes) + 1.5, 1.0 * len(classes)))
    shown = ax.imshow(values.numpy(), cmap="Blues", vmin=0)
    ax.set_xticks(range(len(classes)), classes, rotation=45, ha="right")
    ax.set_yticks(range(len(classes)), classes)
    ax.set_xlabel("prediction")
    ax.set_ylabel("target")
    for (i, j), v in zip(
        torch.cartesian_prod(torch.arange(len(classes)), torch.arange(len(classes))).tolist(), values.flatten()
    ):
        text = f"{v:.2f}" if normalize else f"{int(v)}"
        ax.text(j, i, text, ha="center", va="center", color="white" if v > values.max() / 2 else "black", fontsize=8)
    fig.colorbar(shown, ax=ax, label="fraction of the row" if normalize else "pixels")
    fig.tight_layout()
    return fig


def plot_receptive_field(gradient_map: torch.Tensor, title: str = "", ax: plt.Axes | None = None) -> Figure:
    """Heatmap of ``|d output_centre / d input|`` ``(H, W)`` (e.g. from
    :func:`segutils.receptive_field.gradient_map`), with the centre marked."""
    if gradient_map.ndim != 2:
        raise ValueError(f"gradient_map should have shape (H, W), got {tuple(gradient_map.shape)}")
    if ax is None:
        fig, ax = plt.subplots(figsize=(3.2, 3.2))
    else:
        fig = ax.figure
    values = gradient_map.detach().abs().float().cpu()
    ax.imshow((values / values.max().clamp(min=1e-12)).numpy(), cmap="magma", interpolation="nearest")
    h, w = values.shape
    ax.plot([w // 2], [h // 2], marker="+", color="cyan", markersize=10)
    ax.set_title(title)
    ax.set_xticks([])
    ax.set_yticks([])
    return fig
