"""Choosing the device code runs on.

PyTorch is imported by :func:`get_device` itself, so that ``import segutils`` stays light (the
instructor's ``segutils grade`` never needs PyTorch in its own processes).
"""

from __future__ import annotations

import os
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import torch

DEVICE_ENV_VAR = "SEGUTILS_DEVICE"


def get_device() -> torch.device:
    """Return the device to compute on.

    ``$SEGUTILS_DEVICE`` (e.g. ``cpu``, ``cuda:1``) wins when set; otherwise CUDA when
    available, else the CPU.

    Raises:
        ValueError: ``$SEGUTILS_DEVICE`` is not a device string PyTorch understands, or
            names CUDA on a machine without it.
    """
    import torch

    requested = os.environ.get(DEVICE_ENV_VAR, "").strip()
    if requested:
        try:
            device = torch.device(requested)
        except RuntimeError as error:
            raise ValueError(f"{DEVICE_ENV_VAR}={requested!r} is not a valid torch device: {error}") from None
        if device.type == "cuda" and not torch.cuda.is_available():
            raise ValueError(f"{DEVICE_ENV_VAR}={requested!r} asks for CUDA, but CUDA is not available here")
        return device
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")
