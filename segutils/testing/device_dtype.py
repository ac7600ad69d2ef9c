"""``check_devices_and_dtypes``: the output is on the inputs' device with the expected dtype, everywhere.

One call checks a function on every device the grader has and on two it simulates, so that a
hard-coded device is caught without a GPU:

- ``meta`` (:func:`check_device_agnostic`): tensors without data; catches tensors created on a
  fixed device and values read on the host; value-dependent operators cannot run there;
- simulated CUDA (:func:`run_on_fake_cuda`): tensors that say ``cuda`` and hold CPU data; catches
  CPU tensors mixed with GPU ones and CPU outputs, runs value-dependent code, and compares values;
- each real device of :func:`devices`; on CUDA under :func:`no_host_sync`, and in float16 and
  bfloat16 too, compared with the reference in float64.

The returned list says which of these ran and which were skipped (no GPU).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch import Tensor, nn

from .device_agnostic import check_device_agnostic
from .environment import devices as _devices
from .fake_cuda import FakeCudaUnsupported, run_on_fake_cuda
from .host_sync import no_host_sync
from .values import assert_close

__all__ = ["check_devices_and_dtypes"]

_HALF = (torch.float16, torch.bfloat16)


def _move(args: Sequence[Any], device: torch.device) -> list[Any]:
    return [a.to(device) if isinstance(a, (Tensor, nn.Module)) else a for a in args]


def _float64(args: Sequence[Any]) -> list[Any]:
    return [a.double() if isinstance(a, Tensor) and a.is_floating_point() else a for a in args]


def check_devices_and_dtypes(
    fn: Callable[..., Any],
    make_args: Callable[[torch.dtype], Sequence[Any]],
    *,
    reference: Callable[..., Any] | None = None,
    dtypes: Sequence[torch.dtype] = (torch.float32, torch.float64),
    output_dtype: torch.dtype | None = None,
    expected_shape: Sequence[int] | None = None,
    meta: bool = True,
    fake_cuda: bool = True,
    half_on_cuda: bool = True,
    name: str | None = None,
) -> list[str]:
    """Check that ``fn``'s output is on its inputs' device, with the right dtype (and values).

    ``make_args(dtype)`` returns ``fn``'s positional arguments on the CPU for one input dtype
    (tensors that are not floating point, such as indices, may keep their own dtype; modules,
    such as a classifier ``fn`` applies, move with the tensors). For each
    dtype in ``dtypes``, ``fn`` runs on ``meta`` (if ``meta``), on simulated CUDA (if
    ``fake_cuda``) and on every real device; the output must be a tensor on that device, of dtype
    ``output_dtype`` (default: the dtype passed to ``make_args``) and of shape ``expected_shape``
    if given; where data exists, it must equal ``reference(*args)`` (computed on the CPU in
    float64 for half-precision runs, compared with rtol 2e-2 and atol 5e-2).

    Returns:
        One line per configuration, saying what ran where and what was skipped, e.g.
        ``"cuda float16: skipped (no GPU)"``.

    Raises:
        AssertionError: a wrong device, dtype, shape or value, or an error, with a message that
            names the device and dtype.
        FakeCudaUnsupported: ``fn`` runs a backward pass, which the simulated GPU cannot: pass
            ``fake_cuda=False`` for such functions.
    """
    if not callable(fn) or not callable(make_args):
        raise TypeError("check_devices_and_dtypes(fn, make_args, ...) needs two callables")
    name = name or getattr(fn, "__name__", type(fn).__name__)
    report: list[str] = []
    real = _devices()
    runs: list[tuple[str, torch.dtype]] = []
    for dtype in dtypes:
        if meta:
            runs.append(("meta", dtype))
        if fake_cuda:
            runs.append(("simulated cuda", dtype))
        runs += [(str(d), dtype) for d in real]
    if half_on_cuda:
        if any(d.type == "cuda" for d in real):
            runs += [("cuda", dtype) for dtype in _HALF]
        else:
            report += [f"cuda {str(dtype).removeprefix('torch.')}: skipped (no GPU)" for dtype in _HALF]
    if not any(d.type == "cuda" for d in real):
        report.append("cuda: skipped (no GPU); simulated cuda ran instead" if fake_cuda else "cuda: skipped (no GPU)")

    for where, dtype in runs:
        cpu_args = list(make_args(dtype))
        args = [a.detach().clone().requires_grad_(a.requires_grad) if isinstance(a, Tensor) else a for a in cpu_args]
        dtype_name = str(dtype).removeprefix("torch.")
        context = f"{name} with inputs of dtype {dtype_name} on {where}"
        want_dtype = output_dtype or dtype
        try:
            if where == "meta":
                out = check_device_agnostic(fn, *args)
                device_type = "meta"
            elif where == "simulated cuda":
                out = run_on_fake_cuda(fn, *args)
                device_type = "cpu"  # run_on_fake_cuda checked the device and brought the output back
            else:
                device = torch.device(where)
                args = _move(args, device)
                device_type = device.type
                if device.type == "cuda":
                    fn(*args)  # warm-up: the first call may synchronise legitimately
                    with no_host_sync():
                        out = fn(*args)
                else:
                    out = fn(*args)
        except FakeCudaUnsupported:
            raise  # a limit of the simulation: the test's author passes fake_cuda=False
        except AssertionError as error:
            raise AssertionError(f"{context}: {error}") from None
        except Exception as error:
            raise AssertionError(f"{context}: {type(error).__name__}: {error}") from None
        if not isinstance(out, Tensor):
            raise AssertionError(f"{context}: expected a tensor, got {type(out).__name__}")
        if out.device.type != device_type:
            raise AssertionError(f"{context}: expected the output on {where}, got {out.device}")
        if out.dtype != want_dtype:
            raise AssertionError(
                f"{context}: expected an output of dtype {str(want_dtype).removeprefix('torch.')}, "
                f"got {str(out.dtype).removeprefix('torch.')}"
            )
        if expected_shape is not None and tuple(out.shape) != tuple(expected_shape):
            raise AssertionError(f"{context}: expected shape {tuple(expected_shape)}, got {tuple(out.shape)}")
        compared = ""
        if reference is not None and where != "meta":
            if dtype in _HALF:
                want = reference(*_float64(cpu_args))
                assert_close(
                    out.cpu().double(), want.double(), rtol=2e-2, atol=5e-2, msg=f"{context}, compared in float64"
                )
            else:
                assert_close(out.cpu(), reference(*cpu_args), check_dtype=False, msg=context)
            compared = ", values compared"
        report.append(f"{where} {dtype_name}: ran{compared}")
    return report
