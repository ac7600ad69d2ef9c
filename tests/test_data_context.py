"""ShapesDataset is built so that only context tells the class: prove it by training.

A per-pixel classifier (1x1 receptive field) must stay near chance among the shape
classes, while a small network with a large receptive field does far better on the
same budget.
"""

import functools

import pytest
import torch
from torch import nn
from torch.nn import functional as F

from segutils.data import IGNORE_INDEX, ShapesDataset
from segutils.models import UNet

pytestmark = pytest.mark.slow

STEPS, BATCH, SIZE = 500, 16, 48


def pixel_classifier() -> nn.Module:
    return nn.Sequential(nn.Conv2d(3, 64, 1), nn.ReLU(), nn.Conv2d(64, 64, 1), nn.ReLU(), nn.Conv2d(64, 5, 1))


@functools.lru_cache(maxsize=1)
def training_batches() -> list[tuple[torch.Tensor, torch.Tensor]]:
    """The same stream of batches for both models (and generated once)."""
    train = ShapesDataset("train", size=STEPS * BATCH, image_size=SIZE, seed=1)
    return list(torch.utils.data.DataLoader(train, batch_size=BATCH, num_workers=1))


def shape_class_accuracy(model: nn.Module) -> float:
    """Accuracy on object pixels, choosing only among the four shape classes."""
    torch.manual_seed(0)
    loader = training_batches()
    optimizer = torch.optim.Adam(model.parameters(), lr=3e-3)
    schedule = torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=3e-3, total_steps=STEPS)
    model.train()
    for images, masks in loader:
        loss = F.cross_entropy(model(images), masks, ignore_index=IGNORE_INDEX)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        schedule.step()
    model.eval()
    images, masks = ShapesDataset("test", size=64, image_size=SIZE, seed=1).batch(range(64))
    with torch.no_grad():
        shape_logits = model(images)[:, 1:]
    objects = (masks >= 1) & (masks <= 4)
    predicted = shape_logits.argmax(1) + 1
    return (predicted[objects] == masks[objects]).float().mean().item()


def test_only_context_tells_the_shape_class() -> None:
    torch.set_num_threads(1)
    per_pixel = shape_class_accuracy(pixel_classifier())
    with_context = shape_class_accuracy(UNet(3, 5, base_channels=16, depth=3))
    chance = 0.25
    assert per_pixel < chance + 0.08, f"a 1x1 classifier reaches {per_pixel:.2f} among shapes: colour leaks the class"
    assert with_context > per_pixel + 0.3, f"context model {with_context:.2f} vs per-pixel {per_pixel:.2f}"
