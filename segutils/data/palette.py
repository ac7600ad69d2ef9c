"""Class names, colours, and turning label masks into pictures."""

from __future__ import annotations

import torch

#: Label of pixels that no loss or metric counts (object boundaries, VOC's "void").
IGNORE_INDEX = 255

#: Class names of :class:`~segutils.data.ShapesDataset`, indexed by class id.
CLASSES: tuple[str, ...] = ("background", "disc", "square", "triangle", "cross")

#: RGB colour of each class id, ``(len(CLASSES), 3)`` uint8 (colour-blind safe Okabe-Ito hues).
PALETTE = torch.tensor(
    [
        [0, 0, 0],  # background
        [230, 159, 0],  # disc: orange
        [86, 180, 233],  # square: sky blue
        [0, 158, 115],  # triangle: bluish green
        [204, 121, 167],  # cross: reddish purple
    ],
    dtype=torch.uint8,
)

#: Colour drawn for :data:`IGNORE_INDEX` pixels (the colour VOC uses for "void").
IGNORE_COLOR = (224, 224, 192)


def colorize(mask: torch.Tensor, palette: torch.Tensor | None = None) -> torch.Tensor:
    """Paint a label mask with one colour per class.

    Args:
        mask: integer class ids, shape ``(H, W)`` or ``(N, H, W)``; values in
            ``[0, len(palette))`` or :data:`IGNORE_INDEX`.
        palette: ``(K, 3)`` uint8 colours; defaults to :data:`PALETTE`.

    Returns:
        uint8 RGB image of shape ``(*mask.shape, 3)`` on ``mask``'s device; ignored
        pixels get :data:`IGNORE_COLOR`.

    Raises:
        TypeError: ``mask`` is not an integer tensor.
        ValueError: ``mask`` holds a class id without a colour.
    """
    if not isinstance(mask, torch.Tensor):
        raise TypeError(f"mask should be a torch.Tensor, got {type(mask).__name__}")
    if mask.is_floating_point() or mask.dtype == torch.bool:
        raise TypeError(f"mask should hold integer class ids, got dtype {mask.dtype}")
    palette = PALETTE if palette is None else palette
    if palette.ndim != 2 or palette.shape[1] != 3:
        raise ValueError(f"palette should have shape (K, 3), got {tuple(palette.shape)}")
    num_classes = palette.shape[0]
    table = torch.cat([palette.to(torch.uint8), torch.tensor([IGNORE_COLOR], dtype=torch.uint8)]).to(mask.device)
    ids = mask.long()
    bad = ((ids < 0) | (ids >= num_classes)) & (ids != IGNORE_INDEX)
    if bad.any():
        raise ValueError(
            f"mask holds class id {int(ids[bad][0])}, but the palette has colours for ids 0..{num_classes - 1} "
            f"(and {IGNORE_INDEX} for ignored pixels)"
        )
    return table[torch.where(ids == IGNORE_INDEX, num_classes, ids)]
