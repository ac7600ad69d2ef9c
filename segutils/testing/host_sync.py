"""``no_host_sync``: on CUDA, the function never makes the host wait for the GPU."""

from __future__ import annotations

import contextlib
import unittest
from collections.abc import Callable, Iterator
from typing import Any

import torch

from ._common import T, _tensors

__all__ = ["no_host_sync"]

_SYNC_MESSAGE = (
    "your code made the CPU wait for the GPU (a synchronising CUDA operation: reading a value with .item(), "
    ".tolist(), .cpu(), float(t), `if t:` or print, or an operation whose output size depends on the values, "
    "like nonzero or x[mask]): keep the computation on the GPU"
)


@contextlib.contextmanager
def _sync_errors() -> Iterator[None]:
    previous = torch.cuda.get_sync_debug_mode()
    torch.cuda.set_sync_debug_mode("error")
    try:
        yield
    except RuntimeError as error:
        if "synchroniz" in str(error):
            raise AssertionError(f"{_SYNC_MESSAGE} (CUDA: {str(error).strip()})") from error
        raise
    finally:
        torch.cuda.set_sync_debug_mode(previous)


def no_host_sync(fn: Callable[..., T] | None = None, /, *args: Any, **kwargs: Any) -> Any:
    """Fail if CUDA code synchronises with the host; as a call or as a context manager.

    Two forms::

        out = no_host_sync(fn, x_cuda)      # runs fn(x_cuda), returns its output
        with no_host_sync():                # checks everything in the block
            out = fn(x_cuda)

    Runs under ``torch.cuda.set_sync_debug_mode("error")`` (the previous mode is restored).
    The caller passes CUDA tensors: nothing is moved. Warm up first (call once outside): the
    first call may synchronise legitimately (cuDNN autotuning, lazy initialisation).

    Raises:
        unittest.SkipTest: CUDA is not available (pytest reports the test as skipped).
        AssertionError: a synchronising CUDA operation ran.
        ValueError: a tensor argument is not on a CUDA device.
    """
    if not torch.cuda.is_available():
        raise unittest.SkipTest("CUDA not available")
    if fn is None:
        if args or kwargs:
            raise TypeError("no_host_sync() as a context manager takes no arguments")
        return _sync_errors()
    if not callable(fn):
        raise TypeError(f"fn must be callable, got {type(fn).__name__}")
    for path, t in _tensors({**dict(enumerate(args)), **kwargs}):
        if t.device.type != "cuda":
            raise ValueError(f"no_host_sync checks CUDA code: argument {path} is on {t.device}; pass CUDA tensors")
    with _sync_errors():
        return fn(*args, **kwargs)
