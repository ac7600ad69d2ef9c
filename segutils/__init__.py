"""segutils: the companion package of the semantic segmentation course book.

Submodules: :mod:`segutils.data`, :mod:`segutils.metrics`, :mod:`segutils.models`,
:mod:`segutils.receptive_field`, :mod:`segutils.train`, :mod:`segutils.viz`,
:mod:`segutils.testing`, :mod:`segutils.grading`.

``import segutils`` does not import PyTorch: :func:`get_device` is loaded on first use, so that the
instructor's tools (``segutils grade`` and its job processes) start without it.
"""
from __future__ import annotations

from typing import Any

__version__ = "0.1.0"
__all__ = ["get_device", "__version__"]


def __getattr__(name: str) -> Any:
    if name == "get_device":
        from segutils.device import get_device

        return get_device
    raise AttributeError(f"module 'segutils' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
