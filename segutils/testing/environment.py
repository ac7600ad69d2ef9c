"""The devices a test runs on, and seeding every random number generator."""

from __future__ import annotations

import random

import torch

__all__ = ["devices", "seed_everything"]


def devices() -> list[torch.device]:
    """The devices to run a test on: the CPU, then CUDA when it is available."""
    found = [torch.device("cpu")]
    if torch.cuda.is_available():
        found.append(torch.device("cuda"))
    return found


def seed_everything(seed: int) -> None:
    """Seed Python's ``random``, NumPy (when installed) and PyTorch (CPU and every GPU).

    Raises:
        TypeError: ``seed`` is not an int.
        ValueError: ``seed`` is negative or does not fit in 32 bits (NumPy's limit).
    """
    if isinstance(seed, bool) or not isinstance(seed, int):
        raise TypeError(f"seed must be an int, got {type(seed).__name__}")
    if not 0 <= seed < 2**32:
        raise ValueError(f"seed must be in [0, 2**32), got {seed}")
    random.seed(seed)
    try:
        import numpy
    except ImportError:  # pragma: no cover - numpy is a dependency, but seeding must not need it
        pass
    else:
        numpy.random.seed(seed)
    torch.manual_seed(seed)
