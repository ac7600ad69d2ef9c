"""Benchmark: one training step of each model family with contiguous (NCHW) against channels-last (NHWC) memory.

The book's reference models train on one CPU thread each (``segutils.zoo.TRAINING_THREADS``), with
``segutils.train.fit``, which trains channels-last by default. Each row times the same step (forward,
per-pixel cross-entropy, backward, AdamW) of one family at the size the book trains it, on one thread,
in both formats, measured in the same run; ``ratio`` is contiguous seconds over channels-last seconds
(above 1: channels-last is faster). ``max_abs_diff`` compares the logits of the two formats from the same
(seed 0) weights: the same arithmetic in another order.
"""

from __future__ import annotations

import sys

import torch
import torch.nn.functional as F
from torch.utils import benchmark

from segutils.models import build_model

#: (model name, keyword arguments, image side): the families at the sizes of the book's training runs.
CASES = [
    ("patch_cnn", {}, 48),
    ("plain", {}, 48),
    ("dilated", {}, 48),
    ("fcn", {"skips": 2}, 32),
    ("unet", {}, 32),
]


def _step_and_logits(name: str, kwargs: dict, side: int, channels_last: bool, batch: int) -> tuple[object, object]:
    """A closure that runs one training step, and the logits of seed 0's weights before any step."""
    torch.manual_seed(0)
    model = build_model(name, **kwargs)
    images, masks = torch.rand(batch, 3, side, side), torch.randint(0, 5, (batch, side, side))
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
        images = images.contiguous(memory_format=torch.channels_last)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)

    def step() -> None:
        optimizer.zero_grad(set_to_none=True)
        F.cross_entropy(model(images), masks).backward()
        optimizer.step()

    with torch.no_grad():
        logits = model(images).contiguous()
    return step, logits


def run(quick: bool = False) -> list[dict]:
    """One row per family: seconds per step in each format and their ratio."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    batch, min_run_time = (4, 0.05) if quick else (16, 1.0)
    rows = []
    try:
        for name, kwargs, side in CASES:
            seconds, logits = {}, {}
            for channels_last in (False, True):
                step, logits[channels_last] = _step_and_logits(name, kwargs, side, channels_last, batch)
                timer = benchmark.Timer("step()", globals={"step": step}, num_threads=1)
                seconds[channels_last] = timer.blocked_autorange(min_run_time=min_run_time).median
            rows.append(
                {
                    "benchmark": "channels_last",
                    "case": f"{name} {batch}x3x{side}x{side} train step",
                    "contiguous_s": seconds[False],
                    "channels_last_s": seconds[True],
                    "ratio": seconds[False] / seconds[True],
                    "ratio_of": "contiguous seconds / channels-last seconds",
                    "max_abs_diff": (logits[False] - logits[True]).abs().max().item(),
                }
            )
    finally:
        torch.set_num_threads(threads)
    return rows


if __name__ == "__main__":
    from benchmarks.run_all import print_table

    print_table(run(quick="--quick" in sys.argv))
