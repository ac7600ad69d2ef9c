"""Benchmark: a patch classifier run on every window vs. its convolutionalized form.

One ``PatchClassifier(3, 5, patch_size=15, hidden=64)`` (fixed seed) segments batches of
random images of several sizes twice: with :func:`segutils.models.sliding_window_logits`
(``F.unfold`` + the MLP on chunks of 4096 windows) and with the
:func:`segutils.models.convolutionalize`\\ d network (one pass). Reported per size: the
largest absolute difference of the logits (should be ~1e-5, float32 rounding), the
median times, the speedup, and the ratio of the FLOPs the two do according to
``torch.utils.flop_counter.FlopCounterMode`` (the speedup that FLOPs alone would predict).
For an MLP patch classifier that ratio is 1: each output pixel needs its own ``C*p*p x
hidden`` product either way, because only the first layer sees the window and nothing is
shared between overlapping windows; what the convolution saves is materialising the
``C*p*p x H*W`` window matrix and the per-chunk calls, which is memory traffic, not FLOPs.
"""

from __future__ import annotations

import functools
import statistics
import time
from collections.abc import Callable

import torch
from torch.utils.flop_counter import FlopCounterMode

from segutils import get_device
from segutils.models import PatchClassifier, convolutionalize, sliding_window_logits

PATCH_SIZE = 15
HIDDEN = 64
IN_CHANNELS = 3
NUM_CLASSES = 5


def _median_seconds(fn: Callable[[], object], device: torch.device, repeats: int, min_seconds: float) -> float:
    """Median wall time of one call over at least ``repeats`` calls and ``min_seconds``."""

    def sync() -> None:
        if device.type == "cuda":
            torch.cuda.synchronize(device)

    fn()  # warm-up
    sync()
    times: list[float] = []
    while len(times) < repeats or sum(times) < min_seconds:
        start = time.perf_counter()
        fn()
        sync()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def _flops(fn: Callable[[], object]) -> int:
    with FlopCounterMode(display=False) as counter:
        fn()
    return counter.get_total_flops()


@torch.no_grad()
def run(quick: bool = False) -> list[dict]:
    """One row per image size: logits difference, times, speedup and FLOP ratio."""
    device = get_device()
    sizes = (16, 32) if quick else (32, 64, 128)
    batch = 2 if quick else 4
    repeats, min_seconds = (3, 0.1) if quick else (7, 1.0)

    torch.manual_seed(0)
    classifier = PatchClassifier(IN_CHANNELS, NUM_CLASSES, PATCH_SIZE, hidden=HIDDEN).to(device).eval()
    conv = convolutionalize(classifier).eval()
    rows = []
    for size in sizes:
        g = torch.Generator().manual_seed(size)
        images = torch.randn(batch, IN_CHANNELS, size, size, generator=g).to(device)
        # partial binds this size's images (a closure would read the loop variable late).
        sliding = functools.partial(sliding_window_logits, classifier, images)
        convolutional = functools.partial(conv, images)

        max_abs_diff = float((sliding() - convolutional()).abs().max())
        sliding_s = _median_seconds(sliding, device, repeats, min_seconds)
        conv_s = _median_seconds(convolutional, device, repeats, min_seconds)
        sliding_flops, conv_flops = _flops(sliding), _flops(convolutional)
        rows.append(
            {
                "benchmark": "sliding_window",
                "case": f"{batch}x{IN_CHANNELS}x{size}x{size}, p={PATCH_SIZE}, hidden={HIDDEN}",
                "device": str(device),
                "threads": torch.get_num_threads(),
                "max_abs_diff": max_abs_diff,
                "sliding_ms": sliding_s * 1e3,
                "conv_ms": conv_s * 1e3,
                "sliding_gflops": sliding_flops / 1e9,
                "conv_gflops": conv_flops / 1e9,
                "window_matrix_mib": batch * IN_CHANNELS * PATCH_SIZE**2 * size * size * images.element_size() / 2**20,
                "flop_ratio": sliding_flops / conv_flops,
                "ratio": sliding_s / conv_s,
                "ratio_of": "sliding-window time / convolutional time (speedup); flop_ratio is the FLOP-based ideal",
            }
        )
    return rows


def _print_table(rows: list[dict]) -> None:
    columns = ["case", "max_abs_diff", "sliding_ms", "conv_ms", "ratio", "flop_ratio", "window_matrix_mib"]
    print(f"device: {rows[0]['device']}, threads: {rows[0]['threads']}")
    print(" | ".join(columns))
    for row in rows:
        print(" | ".join(f"{row[c]:.3g}" if isinstance(row[c], float) else str(row[c]) for c in columns))


if __name__ == "__main__":
    import sys

    _print_table(run(quick="--quick" in sys.argv))
