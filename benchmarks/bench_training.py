"""Benchmark: seconds of training each model family needs to reach a fixed validation mIoU.

Every family trains on the same ShapesDataset stream (the configuration of
:class:`segutils.zoo.TrainingConfig`, in short epochs) and is evaluated on the same
validation set after every epoch; the clock counts training and evaluation. A model
that has not reached the target within the time limit is reported as not reaching it.
The ratio column is each family's time over the fastest family's, measured in the
same run.
"""

from __future__ import annotations

import math
import sys
import time

import torch
from torch.utils.data import DataLoader

from segutils.data import ShapesDataset
from segutils.models import MODEL_NAMES, build_model, count_parameters
from segutils.train import fit
from segutils.zoo import TrainingConfig


def seconds_to_target(name: str, target: float, limit: float, config: TrainingConfig, epoch_size: int) -> dict:
    torch.manual_seed(config.seed)
    model = build_model(name)
    train = ShapesDataset("train", size=epoch_size, image_size=config.image_size, seed=config.seed)
    val = ShapesDataset("val", size=config.val_size, image_size=config.image_size, seed=config.seed)
    reached: dict[str, float] = {}
    start = time.perf_counter()

    def stop_when_reached(epoch: int, _model: torch.nn.Module, history: dict) -> bool:
        if history["val_mean_iou"][-1] >= target and not reached:
            reached["seconds"] = time.perf_counter() - start
        return bool(reached) or time.perf_counter() - start > limit

    epochs = 10_000  # the callback ends training; the schedule then stays near its peak rate
    fit(
        model,
        DataLoader(train, batch_size=config.batch_size, shuffle=True, num_workers=1, persistent_workers=True),
        DataLoader(val, batch_size=64),
        epochs=epochs,
        lr=config.lr,
        device="cpu",
        seed=config.seed,
        progress=False,
        callback=stop_when_reached,
    )
    return {
        "benchmark": "training",
        "case": f"{name} to val mIoU {target}",
        "parameters": count_parameters(model),
        "seconds": reached.get("seconds", math.inf),
        "reached": bool(reached),
    }


def run(quick: bool = False) -> list[dict]:
    """One row per model family; ``ratio`` = seconds / seconds of the fastest family."""
    config = TrainingConfig()
    target, limit, epoch_size = (0.15, 8.0, 32) if quick else (0.4, 240.0, 320)
    rows = [seconds_to_target(name, target, limit, config, epoch_size) for name in MODEL_NAMES]
    fastest = min(row["seconds"] for row in rows)
    for row in rows:
        row["ratio"] = row["seconds"] / fastest if math.isfinite(fastest) else math.nan
        row["ratio_of"] = "seconds / seconds of the fastest family"
    return rows


if __name__ == "__main__":
    from benchmarks.run_all import print_table

    print_table(run(quick="--quick" in sys.argv))
