"""Benchmark: segutils confusion_matrix + mean_iou against torchmetrics' MulticlassJaccardIndex.

Batches of 16 x 512 x 512 int64 labels (``quick``: 2 x 256 x 256), 21 classes, ~5% of
target pixels set to ignore_index=255, predictions agreeing with the target on ~70%.
Each side computes the dataset-level mean IoU of one batch from scratch: segutils
``mean_iou(confusion_matrix(...))``; torchmetrics ``update`` + ``compute`` + ``reset`` of a
``MulticlassJaccardIndex(average="macro", ignore_index=255)``. Both are run with input
checks on (segutils ``validate=True``, torchmetrics ``validate_args=True``, its default)
and off. The bandwidth reference is a copy of the target into a preallocated tensor
(``clone()``, which also allocates, is reported too). All functions are timed in turn,
round after round, and each reports its median. The quick batch (1 MiB per tensor)
stays in cache, so its bandwidth fractions mean little; read those of the full run.
"""

from __future__ import annotations

import os
import statistics
import time
from collections.abc import Callable

import torch
from torchmetrics.classification import MulticlassJaccardIndex

from segutils import get_device
from segutils.metrics import confusion_matrix, mean_iou

NUM_CLASSES = 21
IGNORE_INDEX = 255


def _median_seconds(
    fns: dict[str, Callable[[], object]], device: torch.device, repeats: int, min_seconds: float
) -> dict[str, float]:
    """Median wall time of each function, called in turn (round-robin) so that a spell
    of load from other processes hits all of them alike; at least ``repeats`` rounds
    and ``min_seconds`` in all."""

    def sync() -> None:
        if device.type == "cuda":
            torch.cuda.synchronize(device)

    times: dict[str, list[float]] = {name: [] for name in fns}
    for fn in fns.values():  # warm-up
        fn()
    sync()
    rounds, total = 0, 0.0
    while rounds < repeats or total < min_seconds:
        for name, fn in fns.items():
            start = time.perf_counter()
            fn()
            sync()
            times[name].append(time.perf_counter() - start)
            total += times[name][-1]
        rounds += 1
    return {name: statistics.median(t) for name, t in times.items()}


def _make_batch(shape: tuple[int, ...], device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    target = torch.randint(0, NUM_CLASSES, shape, generator=g)
    noise = torch.randint(0, NUM_CLASSES, shape, generator=g)
    pred = torch.where(torch.rand(shape, generator=g) < 0.7, target, noise)
    target[torch.rand(shape, generator=g) < 0.05] = IGNORE_INDEX
    return pred.to(device), target.to(device)


def run(quick: bool = False) -> list[dict]:
    """Time both implementations; one row per setting plus one for the copy reference."""
    device = get_device()
    shape = (2, 256, 256) if quick else (16, 512, 512)
    repeats, min_seconds = (7, 0.5) if quick else (7, 3.0)
    pred, target = _make_batch(shape, device)
    in_bytes = pred.nbytes + target.nbytes
    common = {
        "benchmark": "metrics",
        "device": str(device),
        "threads": torch.get_num_threads(),
        # other processes skew CPU timings; getloadavg does not exist on Windows
        "load_average_1min": os.getloadavg()[0] if hasattr(os, "getloadavg") else None,
        "shape": list(shape),
        "num_classes": NUM_CLASSES,
        "dtype": str(target.dtype).removeprefix("torch."),
        "ignored_fraction": round(float((target == IGNORE_INDEX).float().mean()), 4),
    }

    buffer = torch.empty_like(target)
    fns: dict[str, Callable[[], object]] = {"copy": lambda: buffer.copy_(target), "clone": target.clone}
    for checks in (True, False):
        expected = mean_iou(confusion_matrix(pred, target, NUM_CLASSES, IGNORE_INDEX))
        tm = MulticlassJaccardIndex(
            num_classes=NUM_CLASSES, average="macro", ignore_index=IGNORE_INDEX, validate_args=checks
        ).to(device)

        def ours(checks: bool = checks) -> torch.Tensor:
            return mean_iou(confusion_matrix(pred, target, NUM_CLASSES, IGNORE_INDEX, validate=checks))

        def theirs(tm: MulticlassJaccardIndex = tm) -> torch.Tensor:
            tm.update(pred, target)
            value = tm.compute()
            tm.reset()
            return value

        torch.testing.assert_close(theirs(), expected)  # same number, or the timing is moot
        torch.testing.assert_close(ours(), expected)
        fns[f"ours_{checks}"], fns[f"theirs_{checks}"] = ours, theirs
    seconds = _median_seconds(fns, device, repeats, min_seconds)

    copy_bytes_per_s = 2 * target.nbytes / seconds["copy"]  # read + write
    rows = [
        {
            **common,
            "case": "memory copy (reference bandwidth)",
            "copy_ms": seconds["copy"] * 1e3,
            "clone_ms": seconds["clone"] * 1e3,
            "copy_gbytes_per_s": copy_bytes_per_s / 1e9,
            "ratio": seconds["clone"] / seconds["copy"],
            "ratio_of": "clone time / copy_ time (allocation cost)",
        }
    ]
    for checks in (True, False):
        ours_s, theirs_s = seconds[f"ours_{checks}"], seconds[f"theirs_{checks}"]
        rows.append(
            {
                **common,
                "case": f"segutils validate={checks} vs torchmetrics validate_args={checks}",
                "segutils_ms": ours_s * 1e3,
                "torchmetrics_ms": theirs_s * 1e3,
                "ratio": theirs_s / ours_s,
                "ratio_of": "torchmetrics time / segutils time (speed-up)",
                "segutils_mpixels_per_s": target.numel() / ours_s / 1e6,
                "segutils_gbytes_per_s": in_bytes / ours_s / 1e9,
                "segutils_fraction_of_copy_bandwidth": in_bytes / ours_s / copy_bytes_per_s,
                "torchmetrics_fraction_of_copy_bandwidth": in_bytes / theirs_s / copy_bytes_per_s,
            }
        )
    return rows


def _print_table(rows: list[dict]) -> None:
    first = rows[0]
    load = first["load_average_1min"]
    print(
        f"metrics benchmark on {first['device']} ({first['threads']} threads), shape {first['shape']}, "
        f"{first['dtype']}, K={first['num_classes']}, ignored {first['ignored_fraction']:.1%}, "
        f"load average {'n/a' if load is None else f'{load:.1f}'}"
    )
    print(
        f"  copy_ {first['copy_ms']:.2f} ms ({first['copy_gbytes_per_s']:.2f} GB/s read+write), "
        f"clone {first['clone_ms']:.2f} ms"
    )
    print(f"  {'case':<58} {'segutils ms':>11} {'tm ms':>9} {'speed-up':>8} {'GB/s':>6} {'of copy':>7}")
    for row in rows[1:]:
        print(
            f"  {row['case']:<58} {row['segutils_ms']:>11.2f} {row['torchmetrics_ms']:>9.2f} "
            f"{row['ratio']:>7.1f}x {row['segutils_gbytes_per_s']:>6.2f} "
            f"{row['segutils_fraction_of_copy_bandwidth']:>7.0%}"
        )


if __name__ == "__main__":
    import argparse

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="small batch, a few seconds")
    parser.add_argument(
        "--threads", type=int, default=None, help="torch CPU threads (on a busy machine, 1 gives steadier timings)"
    )
    args = parser.parse_args()
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    _print_table(run(quick=args.quick))
