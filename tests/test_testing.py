"""Tests of segutils.testing: every check passes correct code and fails wrong code with the right message.

References are independent of the code under test: torch.testing.assert_close for tolerances,
element-by-element Python loops for the reported errors, a separate dispatch-mode counter for
operator counts, and PyTorch's built-ins for the values of the from-scratch implementations.
"""

from __future__ import annotations

import collections
import contextlib
import importlib
import itertools
import random
import re
import subprocess
import sys
import unittest
from typing import NamedTuple

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils._python_dispatch import TorchDispatchMode

import segutils
import segutils.models
from segutils import testing
from segutils.models import PatchClassifier

CUDA = torch.cuda.is_available()
needs_cuda = pytest.mark.skipif(not CUDA, reason="CUDA not available")


# ---------------------------------------------------------------------------------------------
# Reference implementations ("student code"): correct from-scratch ones and built-in-based ones
# ---------------------------------------------------------------------------------------------


def conv2d_unfold(x, weight, bias=None, padding=0, dilation=1):
    """Convolution as im2col + matmul: allowed building blocks only."""
    n, _, h, w = x.shape
    o, _, kh, kw = weight.shape
    cols = F.unfold(x, (kh, kw), dilation=dilation, padding=padding)
    out_h = h + 2 * padding - dilation * (kh - 1)
    out_w = w + 2 * padding - dilation * (kw - 1)
    out = (weight.flatten(1) @ cols).reshape(n, o, out_h, out_w)
    return out if bias is None else out + bias.reshape(1, o, 1, 1)


def conv2d_builtin(x, weight, bias=None, padding=0, dilation=1):
    return F.conv2d(x, weight, bias, padding=padding, dilation=dilation)


def conv2d_pixel_loop(x, weight, bias=None, padding=0, dilation=1):
    """Correct, but one matmul per output pixel."""
    o, _, kh, kw = weight.shape
    x = F.pad(x, (padding,) * 4)
    out_h, out_w = x.shape[2] - dilation * (kh - 1), x.shape[3] - dilation * (kw - 1)
    out = x.new_zeros(x.shape[0], o, out_h, out_w)
    for i in range(out_h):
        for j in range(out_w):
            window = x[:, :, i : i + dilation * (kh - 1) + 1 : dilation, j : j + dilation * (kw - 1) + 1 : dilation]
            out[:, :, i, j] = window.flatten(1) @ weight.flatten(1).T
    return out


def conv2d_row_loop(x, weight, bias=None, padding=0, dilation=1):
    """Correct, but one unfold per output row."""
    o, _, kh, kw = weight.shape
    x = F.pad(x, (padding,) * 4)
    rows = []
    for i in range(x.shape[2] - dilation * (kh - 1)):
        band = x[:, :, i : i + dilation * (kh - 1) + 1]
        rows.append(weight.flatten(1) @ F.unfold(band, (kh, kw), dilation=dilation))
    return torch.stack(rows, dim=2)


def conv_transpose2d_scratch(x, weight, stride):
    """Transposed convolution: each input pixel scatters a weighted kernel (fold sums the overlaps)."""
    n, c, h, w = x.shape
    _, o, kh, kw = weight.shape
    cols = weight.flatten(1).T @ x.flatten(2)  # (N, O*kh*kw, H*W)
    out_size = ((h - 1) * stride + kh, (w - 1) * stride + kw)
    return F.fold(cols, out_size, (kh, kw), stride=stride)


def conv_transpose2d_builtin(x, weight, stride):
    return F.conv_transpose2d(x, weight, stride=stride)


def conv_transpose2d_via_conv2d(x, weight, stride):
    """Transposed convolution written with F.conv2d on a zero-stuffed input."""
    n, c, h, w = x.shape
    _, o, kh, kw = weight.shape
    stuffed = x.new_zeros(n, c, (h - 1) * stride + 1, (w - 1) * stride + 1)
    stuffed[:, :, ::stride, ::stride] = x
    return F.conv2d(stuffed, weight.flip(2, 3).transpose(0, 1), padding=(kh - 1, kw - 1))


def bilinear_scratch(x, size):
    """Bilinear resizing with align_corners=False, from gathers."""
    h, w = x.shape[-2:]
    out_h, out_w = size

    def coords(n_in, n_out):
        pos = ((torch.arange(n_out, device=x.device, dtype=x.dtype) + 0.5) * n_in / n_out - 0.5).clamp(min=0)
        low = pos.floor().long().clamp(max=n_in - 1)
        return low, (low + 1).clamp(max=n_in - 1), pos - low

    y0, y1, wy = coords(h, out_h)
    x0, x1, wx = coords(w, out_w)
    top = x[..., y0, :] * (1 - wy)[:, None] + x[..., y1, :] * wy[:, None]
    return top[..., x0] * (1 - wx) + top[..., x1] * wx


def bilinear_builtin(x, size):
    return F.interpolate(x, size=size, mode="bilinear", align_corners=False)


def unpool_scratch(pooled, indices, output_size):
    n, c = pooled.shape[:2]
    out = pooled.new_zeros(n, c, output_size[0] * output_size[1])
    out = out.scatter(2, indices.flatten(2), pooled.flatten(2))
    return out.reshape(n, c, *output_size)


def unpool_builtin(pooled, indices, output_size):
    return F.max_unpool2d(pooled, indices, 2, output_size=output_size)


def cross_entropy_scratch(logits, target):
    picked = logits.gather(1, target.unsqueeze(1)).squeeze(1)
    return (logits.logsumexp(dim=1) - picked).mean()


def cross_entropy_builtin(logits, target):
    return F.cross_entropy(logits, target)


def cross_entropy_via_log_softmax(logits, target):
    return -logits.log_softmax(dim=1).gather(1, target.unsqueeze(1)).mean()


def cross_entropy_via_softmax(logits, target):
    return -torch.softmax(logits, dim=1).gather(1, target.unsqueeze(1)).log().mean()


class ReferenceCounter(TorchDispatchMode):
    """An operator counter written independently of segutils.testing."""

    def __init__(self):
        super().__init__()
        self.total = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        self.total += 1
        return func(*args, **(kwargs or {}))


def reference_total(fn, *args):
    with ReferenceCounter() as counter:
        fn(*args)
    return counter.total


# ---------------------------------------------------------------------------------------------
# assert_close
# ---------------------------------------------------------------------------------------------


def test_assert_close_passes_equal_and_close_tensors():
    x = torch.randn(3, 4, 5, dtype=torch.float64)
    testing.assert_close(x, x.clone())
    testing.assert_close(x + 1e-9, x)
    testing.assert_close(x.transpose(0, 2).contiguous().transpose(0, 2), x)  # layout does not matter
    testing.assert_close(torch.tensor(2.0), torch.tensor(2.0))  # 0-dim
    testing.assert_close(torch.empty(0, 3), torch.empty(0, 3))
    testing.assert_close(torch.tensor([1, 2, 3]), torch.tensor([1, 2, 3]))
    testing.assert_close(torch.tensor([True, False]), torch.tensor([True, False]))
    testing.assert_close(torch.randn(2, requires_grad=True) * 0, torch.zeros(2))
    nan_inf = torch.tensor([float("nan"), float("inf"), -float("inf"), 1.0])
    testing.assert_close(nan_inf, nan_inf.clone())


def test_assert_close_rejects_non_tensors_with_the_type_in_the_message():
    with pytest.raises(AssertionError, match=r"^output should be a torch.Tensor, got list$"):
        testing.assert_close([1.0, 2.0], torch.tensor([1.0, 2.0]))
    with pytest.raises(AssertionError, match=r"^case 1: logits should be a torch.Tensor, got NoneType$"):
        testing.assert_close(None, torch.tensor([1.0]), name="logits", msg="case 1")
    with pytest.raises(TypeError, match="expected must be a torch.Tensor, got float"):
        testing.assert_close(torch.tensor(1.0), 1.0)


def test_assert_close_reports_shape_dtype_and_device():
    with pytest.raises(AssertionError, match=re.escape("windows should have shape (40, 3, 3, 3), got (40, 27)")):
        testing.assert_close(torch.zeros(40, 27), torch.zeros(40, 3, 3, 3), name="windows")
    with pytest.raises(AssertionError, match="output should have dtype float64, got float32"):
        testing.assert_close(torch.zeros(2), torch.zeros(2, dtype=torch.float64))
    with pytest.raises(AssertionError, match="output should have dtype int64, got float32"):
        testing.assert_close(torch.zeros(2), torch.zeros(2, dtype=torch.int64))
    with pytest.raises(AssertionError, match="output should be on device meta, got cpu"):
        testing.assert_close(torch.zeros(2), torch.zeros(2, device="meta"))
    # Opted out: compared in the promoted dtype; meta has no values to compare.
    testing.assert_close(torch.ones(2), torch.ones(2, dtype=torch.float64), check_dtype=False)
    testing.assert_close(torch.ones(2, dtype=torch.int64), torch.ones(2), check_dtype=False)
    testing.assert_close(torch.zeros(2), torch.ones(2, device="meta"), check_device=False)
    testing.assert_close(torch.zeros(2, 3, device="meta"), torch.ones(2, 3, device="meta"))
    with pytest.raises(AssertionError, match=r"should have shape \(3, 2\), got \(2, 3\)"):
        testing.assert_close(torch.zeros(2, 3, device="meta"), torch.zeros(3, 2, device="meta"))
    with pytest.raises(AssertionError, match="1 of 2 elements differ"):
        testing.assert_close(torch.tensor([1.0, 2.0]), torch.tensor([1.0, 3.0], dtype=torch.float64), check_dtype=False)


def test_assert_close_reports_nan_and_inf_positions():
    expected = torch.tensor([[1.0, 2.0, 3.0], [4.0, 5.0, 6.0]])
    actual = expected.clone()
    actual[1, 2] = float("nan")
    with pytest.raises(
        AssertionError,
        match=re.escape(
            "output has NaN in the wrong places: 1 of 6 elements differ there; the first is at index (1, 2), "
            "where output is nan and the expected value is 6"
        ),
    ):
        testing.assert_close(actual, expected)
    with pytest.raises(
        AssertionError, match=re.escape("the first is at index (1, 2), where output is 6 and the expected value is nan")
    ):
        testing.assert_close(expected, actual)
    flipped = expected.clone()
    flipped[0, 1] = -float("inf")
    wanted = expected.clone()
    wanted[0, 1] = float("inf")
    with pytest.raises(
        AssertionError,
        match=re.escape("+inf in the wrong places: 1 of 6 elements differ there; the first is at index (0, 1)"),
    ):
        testing.assert_close(flipped, wanted)


def _python_mismatch_report(actual, expected, rtol, atol):
    """(count, max abs error, its index, max rel error) by a loop over every element."""
    count, worst, worst_at, worst_rel = 0, -1.0, None, 0.0
    for index in itertools.product(*(range(s) for s in actual.shape)):
        a, e = float(actual[index]), float(expected[index])
        error = abs(a - e)
        count += error > atol + rtol * abs(e)
        if error > worst:
            worst, worst_at = error, index
        if e != 0:
            worst_rel = max(worst_rel, error / abs(e))
    return count, worst, worst_at, worst_rel


@pytest.mark.parametrize("seed", range(4))
def test_assert_close_reports_count_max_error_and_where(seed):
    g = torch.Generator().manual_seed(seed)
    expected = torch.randn(2, 3, 4, 5, generator=g, dtype=torch.float64)
    actual = expected + 1e-4 * torch.randn(expected.shape, generator=g, dtype=torch.float64)
    actual[tuple(torch.randint(0, s, (), generator=g) for s in expected.shape)] += 0.5
    rtol, atol = 1e-5, 1e-6
    count, worst, at, worst_rel = _python_mismatch_report(actual, expected, rtol, atol)
    with pytest.raises(AssertionError) as failure:
        testing.assert_close(actual, expected, rtol=rtol, atol=atol, name="logits", msg="images (2, 3, 4, 5)")
    text = str(failure.value)
    assert text.startswith(f"images (2, 3, 4, 5): logits does not match the expected values: {count} of 120 elements")
    assert f"(rtol={rtol:g}, atol={atol:g})" in text
    assert (
        f"the largest absolute difference is {worst:.3g} at index {at} (logits {float(actual[at]):.6g}, "
        f"expected {float(expected[at]):.6g})"
    ) in text
    assert f"the largest relative difference is {worst_rel:.3g}" in text


def test_assert_close_of_0_dim_tensors_gives_no_index():
    with pytest.raises(
        AssertionError,
        match=re.escape(
            "loss does not match the expected values: 1 of 1 elements differ by more than the tolerance "
            "(rtol=1e-07, atol=1e-07); the largest absolute difference is 0.5 (loss 1.5, expected 1); "
            "the largest relative difference is 0.5"
        ),
    ):
        testing.assert_close(
            torch.tensor(1.5, dtype=torch.float64), torch.tensor(1.0, dtype=torch.float64), name="loss"
        )


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float32, torch.float64])
def test_assert_close_default_tolerances_agree_with_torch_testing(dtype):
    g = torch.Generator().manual_seed(0)
    for scale in (1e-8, 1e-7, 1e-6, 1e-5, 1e-4, 1e-3, 1e-2, 1e-1):
        expected = torch.randn(50, generator=g, dtype=torch.float64).to(dtype)
        actual = (expected.double() + scale * torch.randn(50, generator=g, dtype=torch.float64)).to(dtype)
        try:
            torch.testing.assert_close(actual, expected)
        except AssertionError:
            with pytest.raises(AssertionError, match="elements differ by more than the tolerance"):
                testing.assert_close(actual, expected)
        else:
            testing.assert_close(actual, expected)


def test_assert_close_explicit_tolerances_bound_the_error():
    expected = torch.tensor([0.0, 10.0], dtype=torch.float64)
    testing.assert_close(expected + torch.tensor([0.9e-3, 0.0]), expected, rtol=0, atol=1e-3)
    testing.assert_close(expected + torch.tensor([0.0, 0.9e-2]), expected, rtol=1e-3, atol=0)
    with pytest.raises(AssertionError, match="1 of 2 elements differ"):
        testing.assert_close(expected + torch.tensor([1.1e-3, 0.0]), expected, rtol=0, atol=1e-3)
    with pytest.raises(AssertionError, match="1 of 2 elements differ"):
        testing.assert_close(expected + torch.tensor([0.0, 1.1e-2]), expected, rtol=1e-3, atol=0)
    with pytest.raises(ValueError, match="rtol must be a non-negative number, got -1"):
        testing.assert_close(expected, expected, rtol=-1)


def test_assert_close_compares_integers_and_bools_exactly():
    with pytest.raises(
        AssertionError,
        match=re.escape(
            "labels does not match the expected values exactly: 2 of 4 elements differ; the first is at index (0, 1) "
            "(labels 2, expected 1); the largest absolute difference is 7 at index (1, 1)"
        ),
    ):
        testing.assert_close(torch.tensor([[0, 2], [3, 9]]), torch.tensor([[0, 1], [3, 2]]), name="labels", atol=100)
    with pytest.raises(
        AssertionError,
        match=re.escape("1 of 3 elements differ; the first is at index (2,) (output False, expected True)") + "$",
    ):
        testing.assert_close(torch.tensor([True, False, False]), torch.tensor([True, False, True]))


def test_assert_close_on_low_precision_and_non_contiguous_inputs():
    x = torch.randn(4, 6)
    testing.assert_close(x.to(torch.bfloat16)[:, ::2], x[:, ::2].to(torch.bfloat16))
    with pytest.raises(AssertionError, match=r"at index \(3, 1\)"):
        y = x.clone()
        y[3, 2] += 1
        testing.assert_close(y.to(torch.float16)[:, ::2], x.to(torch.float16)[:, ::2])


@needs_cuda
def test_assert_close_on_cuda():
    x = torch.randn(3, 4, device="cuda")
    testing.assert_close(x, x.clone())
    with pytest.raises(AssertionError, match="output should be on device cpu, got cuda:0"):
        testing.assert_close(x, x.cpu())
    testing.assert_close(x, x.cpu(), check_device=False)
    y = x.clone()
    y[1, 2] += 1
    with pytest.raises(AssertionError, match=re.escape("1 of 12 elements differ")):
        testing.assert_close(y, x)


# ---------------------------------------------------------------------------------------------
# devices, seed_everything
# ---------------------------------------------------------------------------------------------


def test_devices_is_cpu_then_cuda_when_available():
    found = testing.devices()
    assert found[0] == torch.device("cpu")
    assert [d.type for d in found] == (["cpu", "cuda"] if CUDA else ["cpu"])


def test_seed_everything_makes_random_numpy_and_torch_repeat():
    def draw():
        return random.random(), float(np.random.rand()), torch.rand(3).tolist()

    testing.seed_everything(123)
    first = draw()
    testing.seed_everything(123)
    assert draw() == first
    testing.seed_everything(124)
    assert draw() != first
    with pytest.raises(TypeError, match="seed must be an int, got float"):
        testing.seed_everything(1.5)
    with pytest.raises(ValueError, match=r"seed must be in \[0, 2\*\*32\), got -1"):
        testing.seed_everything(-1)


# ---------------------------------------------------------------------------------------------
# count_ops, total_ops, assert_vectorized
# ---------------------------------------------------------------------------------------------


def test_count_ops_names_overload_packets_and_counts_backward():
    x, w = torch.randn(1, 2, 5, 5), torch.randn(3, 2, 3, 3)
    assert testing.count_ops(F.conv2d, x, w) == collections.Counter({"aten.convolution": 1})
    assert testing.count_ops(lambda a: a + a + a, x) == collections.Counter({"aten.add": 2})
    xg = x.clone().requires_grad_()
    ops = testing.count_ops(lambda: F.conv2d(xg, w).sum().backward())
    assert ops["aten.convolution"] == 1 and ops["aten.convolution_backward"] == 1
    assert testing.total_ops(ops) == sum(ops.values()) == reference_total(lambda: F.conv2d(xg, w).sum().backward())
    with pytest.raises(TypeError, match="counter must be a collections.Counter"):
        testing.total_ops({"aten.add": 1})
    with pytest.raises(TypeError, match="fn must be callable, got Tensor"):
        testing.count_ops(x)


def make_conv_inputs(h, w):
    return torch.randn(2, 3, h, w), torch.randn(4, 3, 3, 3), None, 1, 2


def test_assert_vectorized_passes_a_vectorized_function():
    testing.assert_vectorized(conv2d_unfold, make_conv_inputs)
    testing.assert_vectorized(conv2d_unfold, make_conv_inputs, sizes=(5, 9, 17))
    # make_inputs(size), and keyword arguments.
    testing.assert_vectorized(conv2d_unfold, lambda size: make_conv_inputs(size, size + 1)[:2])
    testing.assert_vectorized(
        conv2d_unfold, lambda h, w: dict(x=torch.randn(1, 2, h, w), weight=torch.randn(3, 2, 3, 3))
    )
    testing.assert_vectorized(torch.sigmoid, lambda h, w: torch.randn(h, w))  # a single argument


@pytest.mark.parametrize("looped", [conv2d_pixel_loop, conv2d_row_loop])
def test_assert_vectorized_fails_a_loop_with_both_counts(looped):
    small = reference_total(looped, *make_conv_inputs(8, 8))
    large = reference_total(looped, *make_conv_inputs(16, 16))
    assert large > small
    with pytest.raises(
        AssertionError,
        match=re.escape(
            f"my_conv: the number of PyTorch operations grows with the image size ({small} at 8\u00d78, {large} at "
            f"16\u00d716): loop over pixels?"
        ),
    ):
        testing.assert_vectorized(looped, make_conv_inputs, name="my_conv")
    x, w = make_conv_inputs(8, 8)[:2]
    testing.assert_close(
        looped(x, w, padding=1, dilation=2), conv2d_builtin(x, w, padding=1, dilation=2), rtol=1e-4, atol=1e-5
    )


def test_assert_vectorized_names_the_function_and_the_growing_ops():
    with pytest.raises(AssertionError, match=r"^conv2d_pixel_loop: .* \(most growth: aten\.\w+ \d+ \u2192 \d+"):
        testing.assert_vectorized(conv2d_pixel_loop, make_conv_inputs)


def test_assert_vectorized_tolerance_and_warm_up():
    calls = []

    def lazy_then_fixed(x):
        if not calls:  # the first call builds something: it must not count
            torch.zeros(100).cumsum(0)
        calls.append(1)
        return x * 2

    testing.assert_vectorized(lazy_then_fixed, lambda h, w: torch.randn(h, w))

    def one_more_op_when_large(x):
        return x + 1 if x.shape[-1] > 8 else x

    with pytest.raises(AssertionError, match=r"\(0 at 8\u00d78, 1 at 16\u00d716\)"):
        testing.assert_vectorized(one_more_op_when_large, lambda h, w: torch.randn(h, w))
    testing.assert_vectorized(one_more_op_when_large, lambda h, w: torch.randn(h, w), tolerance=1)


def test_assert_vectorized_rejects_bad_arguments():
    with pytest.raises(ValueError, match="sizes must hold at least two"):
        testing.assert_vectorized(conv2d_unfold, make_conv_inputs, sizes=[(8, 8)])
    with pytest.raises(ValueError, match="sizes must hold at least two"):
        testing.assert_vectorized(conv2d_unfold, make_conv_inputs, sizes=[(8, 0), (16, 16)])
    with pytest.raises(ValueError, match="make_inputs takes one size"):
        testing.assert_vectorized(conv2d_unfold, lambda s: make_conv_inputs(s, s), sizes=[(8, 9), (16, 17)])
    with pytest.raises(TypeError, match=r"make_inputs failed for size 8x8 .*assert_vectorized\(fn, make_inputs"):
        testing.assert_vectorized(lambda size: make_conv_inputs(size, size), conv2d_unfold)  # swapped
    with pytest.raises(TypeError, match="needs two callables"):
        testing.assert_vectorized(conv2d_unfold, (8, 8))


# ---------------------------------------------------------------------------------------------
# forbid_ops and the *_OPS constants
# ---------------------------------------------------------------------------------------------

X = torch.randn(2, 3, 7, 6)
POOLED, INDICES = F.max_pool2d(torch.randn(2, 3, 8, 6), 2, return_indices=True)
TARGET = torch.randint(0, 3, (2, 7, 6))

CONVOLUTION_BUILTINS = {
    "F.conv2d": lambda x: F.conv2d(x, torch.randn(4, 3, 3, 3), padding=1),
    "F.conv2d dilated": lambda x: F.conv2d(x, torch.randn(4, 3, 3, 3), dilation=2),
    "F.conv_transpose2d": lambda x: F.conv_transpose2d(x, torch.randn(3, 4, 3, 3), stride=2),
    "nn.Conv2d": lambda x: nn.Conv2d(3, 4, 3)(x),
    "nn.ConvTranspose2d": lambda x: nn.ConvTranspose2d(3, 4, 2, stride=2)(x),
    "F.conv1d": lambda x: F.conv1d(x.flatten(2), torch.randn(4, 3, 3)),
    "F.conv3d": lambda x: F.conv3d(x[:, :, None], torch.randn(4, 3, 1, 3, 3)),
    "F.conv_transpose1d": lambda x: F.conv_transpose1d(x.flatten(2), torch.randn(3, 4, 3)),
}
INTERPOLATION_BUILTINS = {
    **{
        f"F.interpolate {mode}": lambda x, mode=mode: F.interpolate(x, scale_factor=2, mode=mode)
        for mode in ("nearest", "nearest-exact", "bilinear", "bicubic")
    },
    "F.interpolate bilinear size align_corners": lambda x: F.interpolate(
        x, size=(9, 11), mode="bilinear", align_corners=True
    ),
    "F.interpolate bilinear antialias": lambda x: F.interpolate(x, size=(3, 3), mode="bilinear", antialias=True),
    "F.interpolate bicubic antialias": lambda x: F.interpolate(x, size=(3, 3), mode="bicubic", antialias=True),
    "F.interpolate linear": lambda x: F.interpolate(x.flatten(2), scale_factor=2, mode="linear"),
    "F.interpolate trilinear": lambda x: F.interpolate(x[:, :, None], scale_factor=2, mode="trilinear"),
    "nn.Upsample": lambda x: nn.Upsample(scale_factor=2, mode="bilinear")(x),
    "nn.UpsamplingBilinear2d": lambda x: nn.UpsamplingBilinear2d(scale_factor=2)(x),
    "nn.UpsamplingNearest2d": lambda x: nn.UpsamplingNearest2d(scale_factor=2)(x),
    "F.grid_sample": lambda x: F.grid_sample(x, torch.rand(2, 4, 5, 2) * 2 - 1, align_corners=False),
    "F.affine_grid": lambda x: F.affine_grid(
        x.mean() * torch.eye(2, 3).expand(2, 2, 3), [2, 3, 4, 4], align_corners=False
    ),
}
UNPOOL_BUILTINS = {
    "F.max_unpool2d": lambda x: F.max_unpool2d(x[:, :, :4, :3] + POOLED, INDICES, 2),
    "nn.MaxUnpool2d": lambda x: nn.MaxUnpool2d(2)(x[:, :, :4, :3] + POOLED, INDICES),
    "F.max_unpool1d": lambda x: F.max_unpool1d(*F.max_pool1d(x.flatten(2), 2, return_indices=True), 2),
    "F.max_unpool3d": lambda x: F.max_unpool3d(
        *F.max_pool3d(x[:, :, None].expand(2, 3, 2, 7, 6), 2, return_indices=True), 2
    ),
}
CROSS_ENTROPY_BUILTINS = {
    "F.cross_entropy": lambda x: F.cross_entropy(x, TARGET),
    "F.cross_entropy ignore_index label_smoothing": lambda x: F.cross_entropy(
        x, TARGET, ignore_index=1, label_smoothing=0.1
    ),
    "F.cross_entropy probabilities": lambda x: F.cross_entropy(x, torch.rand(2, 3, 7, 6)),
    "F.cross_entropy 1d": lambda x: F.cross_entropy(x[:, :, 0, 0], TARGET[:, 0, 0]),
    "nn.CrossEntropyLoss": lambda x: nn.CrossEntropyLoss()(x, TARGET),
    "F.nll_loss": lambda x: F.nll_loss(x, TARGET),
    "F.nll_loss 1d": lambda x: F.nll_loss(x[:, :, 0, 0], TARGET[:, 0, 0]),
    "F.log_softmax": lambda x: F.log_softmax(x, dim=1),
    "Tensor.log_softmax": lambda x: x.log_softmax(1),
    "torch.special.log_softmax": lambda x: torch.special.log_softmax(x, 1),
    "nn.LogSoftmax": lambda x: nn.LogSoftmax(dim=1)(x),
    "F.softmax": lambda x: F.softmax(x, dim=1),
    "torch.softmax": lambda x: torch.softmax(x, 1),
    "nn.Softmax": lambda x: nn.Softmax(dim=1)(x),
}
BUILTINS = [
    (ops_name, name, fn)
    for ops_name, table in [
        ("CONVOLUTION_OPS", CONVOLUTION_BUILTINS),
        ("INTERPOLATION_OPS", INTERPOLATION_BUILTINS),
        ("UNPOOL_OPS", UNPOOL_BUILTINS),
        ("CROSS_ENTROPY_OPS", CROSS_ENTROPY_BUILTINS),
    ]
    for name, fn in table.items()
]

AUTOGRAD_MODES = {
    "backward": lambda f: f(X.clone().requires_grad_()).sum().backward(),
    "no_grad": lambda f: torch.no_grad()(f)(X.clone()),
    "inference_mode": lambda f: torch.inference_mode()(f)(X.clone()),
}


@pytest.mark.parametrize("autograd", list(AUTOGRAD_MODES))
@pytest.mark.parametrize("ops_name, builtin, fn", BUILTINS, ids=[f"{o}-{b}" for o, b, _ in BUILTINS])
def test_constants_catch_every_builtin(ops_name, builtin, fn, autograd):
    run = AUTOGRAD_MODES[autograd]
    run(fn)  # the built-in works here without the check
    with pytest.raises(AssertionError, match=r"your implementation called the forbidden operation aten\.\w+ \(used by"):
        testing.forbid_ops(run, getattr(testing, ops_name), fn)


ALLOWED_BUILDING_BLOCKS = {
    "F.unfold": lambda x: F.unfold(x, 3, padding=1, dilation=2),
    "F.fold": lambda x: F.fold(F.unfold(x, 2, stride=2), (6, 6), 2, stride=2),
    "Tensor.unfold": lambda x: x.unfold(2, 3, 1).unfold(3, 3, 1),
    "as_strided": lambda x: x.contiguous().as_strided((2, 3, 5, 4, 3, 3), (126, 42, 6, 1, 6, 1)),
    "matmul": lambda x: x.flatten(2).transpose(1, 2) @ torch.randn(3, 5),
    "einsum": lambda x: torch.einsum("nchw,oc->nohw", x, torch.randn(4, 3)),
    "scatter_add": lambda x: torch.zeros(2, 3, 50).scatter_add(2, torch.randint(0, 50, (2, 3, 42)), x.flatten(2)),
    "index_put": lambda x: torch.zeros(10, 6).index_put((torch.tensor([1, 1, 4]),), x[0, 0, :3], accumulate=True),
    "index_add": lambda x: torch.zeros(2, 3, 9, 6).index_add(2, torch.tensor([0, 2, 2, 4, 5, 7, 8]), x),
    "gather": lambda x: x.gather(2, torch.randint(0, 7, (2, 3, 5, 6))),
    "advanced indexing": lambda x: x[:, :, torch.tensor([0, 0, 1, 6])][..., torch.tensor([5, 0])],
    "F.pad": lambda x: F.pad(x, (1, 2, 3, 4)) + F.pad(x, (1, 2, 3, 4), mode="reflect"),
    "repeat_interleave": lambda x: x.repeat_interleave(2, dim=2).repeat_interleave(2, dim=3),
    "max_pool2d with indices": lambda x: F.max_pool2d(x, 2, return_indices=True)[0],
    "avg_pool2d": lambda x: F.avg_pool2d(x, 2),
    "logsumexp": lambda x: x.logsumexp(dim=1),
    "exp/log/sum": lambda x: (x.exp() / x.exp().sum(1, keepdim=True)).log(),
    "relu/sigmoid": lambda x: F.relu(x) + torch.sigmoid(x),
}
ALL_OPS = testing.CONVOLUTION_OPS + testing.INTERPOLATION_OPS + testing.UNPOOL_OPS + testing.CROSS_ENTROPY_OPS


@pytest.mark.parametrize("autograd", list(AUTOGRAD_MODES))
@pytest.mark.parametrize("block", list(ALLOWED_BUILDING_BLOCKS))
def test_constants_allow_the_building_blocks(block, autograd):
    testing.forbid_ops(AUTOGRAD_MODES[autograd], ALL_OPS, ALLOWED_BUILDING_BLOCKS[block])


def test_every_constant_entry_names_a_registered_operator():
    registered = {name.split(".")[0].replace("::", ".") for name in torch._C._dispatch_get_all_op_names()}
    for entry in ALL_OPS:
        assert any(op.startswith(entry) for op in registered), f"{entry} matches no aten operator"
    for allowed in (
        "aten.im2col",
        "aten.col2im",
        "aten.unfold",
        "aten.mm",
        "aten.bmm",
        "aten.matmul",
        "aten.einsum",
        "aten.scatter_add",
        "aten.index_put",
        "aten.gather",
        "aten.logsumexp",
        "aten.max_pool2d_with_indices",
        "aten.constant_pad_nd",
        "aten.binary_cross_entropy",
    ):
        assert not any(allowed.startswith(entry) for entry in ALL_OPS), allowed


# From-scratch functions: the reference (built-in) fails, a from-scratch version passes with the same values.
SCRATCH_CASES = {
    "dilated conv2d": (
        testing.CONVOLUTION_OPS,
        conv2d_unfold,
        conv2d_builtin,
        lambda: (torch.randn(2, 3, 9, 8), torch.randn(4, 3, 3, 3), torch.randn(4), 2, 2),
    ),
    "conv_transpose2d": (
        testing.CONVOLUTION_OPS,
        conv_transpose2d_scratch,
        conv_transpose2d_builtin,
        lambda: (torch.randn(2, 3, 4, 5), torch.randn(3, 4, 3, 3), 2),
    ),
    "bilinear": (
        testing.INTERPOLATION_OPS,
        bilinear_scratch,
        bilinear_builtin,
        lambda: (torch.randn(2, 3, 4, 5), (9, 7)),
    ),
    "max_unpool2d": (testing.UNPOOL_OPS, unpool_scratch, unpool_builtin, lambda: (POOLED, INDICES, (8, 6))),
    "cross_entropy": (
        testing.CROSS_ENTROPY_OPS,
        cross_entropy_scratch,
        cross_entropy_builtin,
        lambda: (torch.randn(2, 3, 7, 6), TARGET),
    ),
}


@pytest.mark.parametrize("case", list(SCRATCH_CASES))
def test_forbid_ops_passes_from_scratch_code_and_fails_the_builtin(case):
    ops, scratch, builtin, make_args = SCRATCH_CASES[case]
    args = [
        a.double().requires_grad_() if isinstance(a, torch.Tensor) and a.is_floating_point() else a for a in make_args()
    ]
    want = builtin(*args)
    got = testing.forbid_ops(scratch, ops, *args)  # the call form returns the output
    testing.assert_close(got, want)
    testing.forbid_ops(lambda: scratch(*args).sum().backward(), ops)
    with pytest.raises(AssertionError, match="your implementation called the forbidden operation"):
        testing.forbid_ops(builtin, ops, *args)


@pytest.mark.parametrize(
    "cheat, op", [(conv_transpose2d_via_conv2d, "aten.convolution"), (conv_transpose2d_builtin, "aten.convolution")]
)
def test_forbid_ops_catches_conv_transpose_written_with_conv2d(cheat, op):
    x, w = torch.randn(2, 3, 4, 5, dtype=torch.float64), torch.randn(3, 4, 3, 3, dtype=torch.float64)
    testing.assert_close(cheat(x, w, 2), conv_transpose2d_scratch(x, w, 2))
    with pytest.raises(
        AssertionError,
        match=re.escape(
            f"your implementation called the forbidden operation {op} (used by F.conv2d, F.conv_transpose2d, "
            f"nn.Conv2d and nn.ConvTranspose2d); write it without these built-ins, from elementary tensor operations"
        ),
    ):
        testing.forbid_ops(cheat, testing.CONVOLUTION_OPS, x, w, 2)


@pytest.mark.parametrize(
    "cheat, op",
    [
        (cross_entropy_builtin, "aten._log_softmax"),
        (cross_entropy_via_log_softmax, "aten._log_softmax"),
        (cross_entropy_via_softmax, "aten._softmax"),
    ],
)
def test_forbid_ops_catches_cross_entropy_shortcuts(cheat, op):
    logits = torch.randn(2, 3, 7, 6, dtype=torch.float64)
    with pytest.raises(AssertionError, match=re.escape(f"forbidden operation {op} (used by F.")):
        testing.forbid_ops(cheat, testing.CROSS_ENTROPY_OPS, logits, TARGET)


def test_forbid_ops_as_a_context_manager_and_when_the_error_is_swallowed():
    x = torch.randn(1, 3, 6, 6, requires_grad=True)
    w = torch.randn(4, 3, 3, 3, requires_grad=True)
    with testing.forbid_ops(testing.CONVOLUTION_OPS):
        conv2d_unfold(x, w, padding=1).sum().backward()
    with pytest.raises(AssertionError, match="forbidden operation aten.convolution "):
        with testing.forbid_ops(testing.CONVOLUTION_OPS):
            F.conv2d(x, w).sum().backward()
    y = F.conv2d(x, w)
    with pytest.raises(AssertionError, match="forbidden operation aten.convolution_backward "):
        with testing.forbid_ops(testing.CONVOLUTION_OPS):
            y.sum().backward()  # a forward outside, the backward inside

    def hides_the_error(x, w):
        with contextlib.suppress(Exception):
            return F.conv2d(x, w)
        return conv2d_unfold(x, w)

    with pytest.raises(AssertionError, match="forbidden operation aten.convolution "):
        testing.forbid_ops(hides_the_error, testing.CONVOLUTION_OPS, x, w)
    with pytest.raises(AssertionError, match="forbidden operation aten.convolution "):
        with testing.forbid_ops(testing.CONVOLUTION_OPS):
            hides_the_error(x, w)


@pytest.mark.parametrize(
    "spec",
    [
        "aten.convolution",
        "aten::convolution",
        "convolution",
        "aten.conv",
        torch.ops.aten.convolution,
        torch.ops.aten.convolution.default,
        ["aten.add", "aten.convolution"],
        {"aten.convolution"},
    ],
)
def test_forbid_ops_accepts_names_prefixes_and_operator_objects(spec):
    x, w = torch.randn(1, 2, 5, 5), torch.randn(3, 2, 3, 3)
    with pytest.raises(AssertionError, match="forbidden operation aten.convolution"):
        testing.forbid_ops(F.conv2d, spec, x, w)
    with pytest.raises(AssertionError, match="forbidden operation aten.convolution"):
        with testing.forbid_ops(spec):
            torch.ops.aten.convolution(x, w, None, [1, 1], [0, 0], [1, 1], False, [0, 0], 1)
    testing.forbid_ops(conv2d_unfold, spec if not isinstance(spec, list) else spec[1:], x, w)


def test_forbid_ops_message_without_a_known_builtin():
    with pytest.raises(
        AssertionError,
        match=re.escape(
            "your implementation called the forbidden operation aten.add; write it without it, from elementary "
            "tensor operations"
        ),
    ):
        with testing.forbid_ops("aten.add"):
            torch.ones(2) + torch.ones(2)


def test_forbid_ops_rejects_bad_specs():
    with pytest.raises(ValueError, match="no operator to forbid"):
        testing.forbid_ops([])
    with pytest.raises(ValueError, match="must not be empty"):
        testing.forbid_ops(" ")
    with pytest.raises(TypeError, match="operators are given as names"):
        testing.forbid_ops([3])
    with pytest.raises(TypeError, match="ops is missing"):
        testing.forbid_ops(F.conv2d)
    with pytest.raises(TypeError, match="is a context manager"):
        testing.forbid_ops(testing.CONVOLUTION_OPS, torch.randn(2))
    with pytest.raises(TypeError, match="fn must be callable, got int"):
        testing.forbid_ops(3, testing.CONVOLUTION_OPS)


# ---------------------------------------------------------------------------------------------
# assert_no_delegation
# ---------------------------------------------------------------------------------------------


def segment_own(classifier, images):
    """Own sliding window: may apply the classifier it is given, and check its type."""
    assert isinstance(classifier, PatchClassifier)
    n, c, h, w = images.shape
    p = classifier.patch_size if hasattr(classifier, "patch_size") else 3
    windows = F.unfold(images, p, padding=p // 2).transpose(1, 2).reshape(n * h * w, c, p, p)
    logits = classifier.forward(windows[: n * h * w // 2])  # a method of an object it was given
    logits = torch.cat([logits, classifier(windows[n * h * w // 2 :])])
    return logits.reshape(n, h, w, -1).permute(0, 3, 1, 2)


def segment_delegating(classifier, images):
    return segutils.models.sliding_window_logits(classifier, images)


def segment_delegating_sometimes(classifier, images):
    if images.shape[-1] > 1000:  # never reached by the test: still caught
        return segutils.models.sliding_window_logits(classifier, images)
    return segment_own(classifier, images)


def _helper_delegating(classifier, images):
    return segutils.models.sliding_window_logits(classifier, images)


def segment_through_a_helper(classifier, images):
    return _helper_delegating(classifier, images)


def segment_hidden_lookup(classifier, images):
    module = importlib.import_module("segutils" + ".models")
    return getattr(module, "sliding_window" + "_logits")(classifier, images)


def make_closure_delegating():
    impl = segutils.models.sliding_window_logits

    def segment(classifier, images):
        return impl(classifier, images)

    return segment


def segment_default_argument(classifier, images, impl=segutils.models.sliding_window_logits):
    return impl(classifier, images)


class OwnNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.device = segutils.get_device()  # an allowed helper
        self.conv = nn.Conv2d(3, 2, 3, padding=1)

    def forward(self, x):
        return self.conv(x)


class NetBuildingUNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.inner = getattr(segutils.models, "UN" + "et")(3, 2, base_channels=4, depth=1)

    def forward(self, x):
        return self.inner(x)


class NetInheritingUNet(segutils.models.UNet):
    def __init__(self):
        super().__init__(3, 2, base_channels=4, depth=1)


class NetCallingInForward(nn.Module):
    def __init__(self):
        super().__init__()
        self.classifier = PatchClassifier(3, 2, 3, hidden=())

    def forward(self, x):
        return segutils.models.sliding_window_logits(self.classifier, x)


CLASSIFIER = PatchClassifier(3, 4, 3, hidden=(8,)).eval()
IMAGES = torch.randn(1, 3, 5, 6)


def test_assert_no_delegation_passes_own_code_and_returns_its_output():
    with torch.no_grad():
        out = testing.assert_no_delegation(segment_own, CLASSIFIER, IMAGES)
        testing.assert_close(out, segutils.models.sliding_window_logits(CLASSIFIER, IMAGES))
        net = testing.assert_no_delegation(OwnNet)
        assert isinstance(net, OwnNet)
        testing.assert_no_delegation(net, IMAGES)
        testing.assert_no_delegation(conv2d_unfold, IMAGES, torch.randn(2, 3, 3, 3), padding=1)


@pytest.mark.parametrize(
    "fn, found",
    [
        (segment_delegating, "segutils.models.sliding_window_logits"),
        (segment_delegating_sometimes, "segutils.models.sliding_window_logits"),
        (segment_through_a_helper, "segutils.models.sliding_window_logits"),
        (make_closure_delegating(), "impl (segutils.models.patch.sliding_window_logits)"),
        (segment_default_argument, "a default argument of segment_default_argument"),
    ],
)
def test_assert_no_delegation_reads_the_code(fn, found):
    with pytest.raises(AssertionError, match=re.escape(f"should do the work itself, but its code uses {found}")):
        testing.assert_no_delegation(fn, CLASSIFIER, IMAGES)


def test_assert_no_delegation_watches_the_calls():
    with pytest.raises(
        AssertionError,
        match=re.escape(
            "segment_hidden_lookup should do the work itself, "
            "but it called segutils.models.patch.sliding_window_logits (in segment_hidden_lookup, line"
        ),
    ):
        testing.assert_no_delegation(segment_hidden_lookup, CLASSIFIER, IMAGES)
    with pytest.raises(
        AssertionError,
        match=re.escape(
            "NetBuildingUNet should do the work itself, but it called "
            "segutils.models.unet.UNet.__init__ (in __init__, line"
        ),
    ):
        testing.assert_no_delegation(NetBuildingUNet)
    with pytest.raises(AssertionError, match=re.escape("but its code uses base class segutils.models.unet.UNet")):
        testing.assert_no_delegation(NetInheritingUNet)
    net = NetCallingInForward()
    with pytest.raises(
        AssertionError,
        match=re.escape(
            "NetCallingInForward.forward should do the work itself, but its "
            "code uses segutils.models.sliding_window_logits"
        ),
    ):
        testing.assert_no_delegation(net, IMAGES)


def test_assert_no_delegation_forbids_torchmetrics_by_default():
    functional = pytest.importorskip("torchmetrics.functional")

    def accuracy(pred, target):
        return functional.accuracy(pred, target, task="multiclass", num_classes=3)

    pred, target = torch.randint(0, 3, (10,)), torch.randint(0, 3, (10,))
    with pytest.raises(
        AssertionError,
        match=r"accuracy should do the work itself, but its code uses functional\.accuracy "
        r"\(torchmetrics\.",
    ):
        testing.assert_no_delegation(accuracy, pred, target)
    out = testing.assert_no_delegation(accuracy, pred, target, forbidden_modules=("segutils",))
    testing.assert_close(out, (pred == target).float().mean())


def test_assert_no_delegation_restores_the_profiler_and_checks_arguments():
    seen = []
    previous = sys.getprofile()
    sys.setprofile(lambda frame, event, arg: seen.append(event))
    try:
        testing.assert_no_delegation(lambda: 1)
        assert sys.getprofile() is not None
    finally:
        sys.setprofile(previous)
    with pytest.raises(TypeError, match="sequences of module names"):
        testing.assert_no_delegation(lambda: 1, forbidden_modules="segutils")
    with pytest.raises(TypeError, match="fn must be callable"):
        testing.assert_no_delegation(3)
    with pytest.raises(ZeroDivisionError):  # the function's own errors pass through
        testing.assert_no_delegation(lambda: 1 / 0)
    assert sys.getprofile() is previous


# ---------------------------------------------------------------------------------------------
# check_device_agnostic
# ---------------------------------------------------------------------------------------------


class Pair(NamedTuple):
    images: torch.Tensor
    scale: float


def test_check_device_agnostic_passes_device_agnostic_code_and_returns_meta_output():
    x, w = torch.randn(2, 3, 9, 8), torch.randn(4, 3, 3, 3)
    out = testing.check_device_agnostic(conv2d_unfold, x, w, padding=1, dilation=2)
    assert out.is_meta and out.shape == conv2d_builtin(x, w, padding=1, dilation=2).shape
    out = testing.check_device_agnostic(bilinear_scratch, x, (11, 5))
    assert out.is_meta and out.shape == (2, 3, 11, 5)
    out = testing.check_device_agnostic(unpool_scratch, POOLED, INDICES, (8, 6))
    assert out.is_meta and out.shape == (2, 3, 8, 6)

    def nested(batch, extra):
        return {"sum": batch[0].images * batch[0].scale + extra["bias"], "list": [batch[1] * torch.tensor(2.0)]}

    out = testing.check_device_agnostic(nested, [Pair(torch.randn(2, 3), 2.0), torch.ones(3)], {"bias": torch.ones(3)})
    assert out["sum"].is_meta and out["list"][0].is_meta


def test_check_device_agnostic_moves_modules_and_keeps_autograd():
    model = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU())
    out = testing.check_device_agnostic(model, torch.randn(2, 3, 8, 8))
    assert out.is_meta and out.shape == (2, 4, 8, 8)
    assert all(p.device.type == "cpu" for p in model.parameters())  # a copy was moved, not the model

    def grad_norm(model, x):
        model(x).square().sum().backward()
        return torch.stack([p.grad.norm() for p in model.parameters()])

    out = testing.check_device_agnostic(grad_norm, model, torch.randn(2, 3, 8, 8))
    assert out.is_meta and out.shape == (4,)
    assert model[0].weight.grad is None

    def make_layer(x):  # created on the CPU, then moved: fine on any device
        return nn.Conv2d(3, 2, 1).to(x.device)(x)

    assert testing.check_device_agnostic(make_layer, torch.randn(1, 3, 4, 4)).is_meta
    x = torch.randn(2, 3, requires_grad=True)
    assert testing.check_device_agnostic(lambda t: t, x).requires_grad


def zeros_without_device(x):
    return x + torch.zeros(x.shape)


def arange_without_device(x):
    return x[:, torch.arange(2)]


def reads_item(x):
    return x / x.abs().max().item()


def reads_tolist(x):
    return x * max(x.flatten().tolist())


def reads_numpy(x):
    return torch.from_numpy(x.numpy() * 2)


def branches_on_value(x):
    if (x > 0).any():
        return x
    return -x


def masks(x):
    return x[x > 0]


def returns_cpu(x):
    return torch.zeros(3)


def builds_module_on_cpu(x):
    return nn.Conv2d(x.shape[1], 2, 1)


def raises_type_error(x):
    if x.is_meta:  # stands for any other error
        raise TypeError("boom")
    return x


@pytest.mark.parametrize(
    "fn, message",
    [
        (
            zeros_without_device,
            "a tensor was created on cpu (shape (2, 3)): aten.add mixed it with tensors on the inputs' "
            "device (meta); pass device=x.device",
        ),
        (arange_without_device, "a tensor was created on cpu (shape (2,)): aten.index mixed it"),
        (reads_item, "your code reads tensor values on the host (.item(), .tolist(), .numpy()"),
        (reads_tolist, "your code reads tensor values on the host"),
        (reads_numpy, "your code reads tensor values on the host"),
        (branches_on_value, "your code reads tensor values on the host"),
        (masks, "your code uses aten.index (through torch.nonzero), whose result depends on the tensors' values"),
        (returns_cpu, "returns_cpu returned a tensor on cpu although its inputs were on the meta device: pass device="),
        (builds_module_on_cpu, "builds_module_on_cpu returned a tensor on cpu (output.weight)"),
        (
            raises_type_error,
            "raises_type_error failed with its inputs on the meta device (tensors without data): TypeError: boom",
        ),
    ],
)
def test_check_device_agnostic_explains_failures(fn, message):
    x = torch.randn(2, 3)
    fn(x)  # every one works on the CPU
    with pytest.raises(AssertionError, match=re.escape(message)):
        testing.check_device_agnostic(fn, x)


def test_check_device_agnostic_rejects_non_callables():
    with pytest.raises(TypeError, match="fn must be callable, got Tensor"):
        testing.check_device_agnostic(torch.zeros(2))


# ---------------------------------------------------------------------------------------------
# no_host_sync
# ---------------------------------------------------------------------------------------------


@pytest.mark.skipif(CUDA, reason="checks the behaviour without CUDA")
def test_no_host_sync_skips_without_cuda():
    with pytest.raises(unittest.SkipTest, match="CUDA not available"):
        testing.no_host_sync(lambda x: x, torch.zeros(2))
    with pytest.raises(unittest.SkipTest, match="CUDA not available"):
        with testing.no_host_sync():
            pass


@needs_cuda
def test_no_host_sync_on_cuda():
    x = torch.randn(4, 5, device="cuda")
    conv2d_unfold(x[None, None], torch.randn(1, 1, 3, 3, device="cuda"))  # warm-up
    previous = torch.cuda.get_sync_debug_mode()
    out = testing.no_host_sync(lambda t: t * 2 + 1, x)
    testing.assert_close(out, x * 2 + 1)
    with testing.no_host_sync():
        conv2d_unfold(x[None, None], torch.randn(1, 1, 3, 3, device="cuda"))
    with pytest.raises(AssertionError, match=r"your code made the CPU wait for the GPU .* \(CUDA: "):
        testing.no_host_sync(reads_item, x)
    with pytest.raises(AssertionError, match="your code made the CPU wait for the GPU"):
        with testing.no_host_sync():
            masks(x)
    assert torch.cuda.get_sync_debug_mode() == previous
    with pytest.raises(ValueError, match="argument 0 is on cpu; pass CUDA tensors"):
        testing.no_host_sync(reads_item, x.cpu())


@needs_cuda
def test_check_device_agnostic_code_also_runs_on_cuda():
    for fn, args in [
        (conv2d_unfold, (torch.randn(2, 3, 9, 8), torch.randn(4, 3, 3, 3))),
        (bilinear_scratch, (torch.randn(2, 3, 4, 5), (9, 7))),
        (cross_entropy_scratch, (torch.randn(2, 3, 7, 6), TARGET)),
    ]:
        testing.check_device_agnostic(fn, *args)
        cuda_args = [a.cuda() if isinstance(a, torch.Tensor) else a for a in args]
        fn(*cuda_args)
        testing.assert_close(testing.no_host_sync(fn, *cuda_args), fn(*args), check_device=False, rtol=1e-4, atol=1e-5)


# ---------------------------------------------------------------------------------------------
# Import cost
# ---------------------------------------------------------------------------------------------


def test_import_loads_no_test_framework_or_metrics_library():
    code = (
        "import sys, segutils.testing; "
        "print(sorted(m for m in ('pytest', 'torchmetrics', 'segutils.models') if m in sys.modules))"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert result.stdout.strip() == "[]"


# ---------------------------------------------------------------------------------------------
# Feature maps and parameters of a network (trace_feature_maps, check_parameters_get_gradients)
# ---------------------------------------------------------------------------------------------


class _TwoLevelNet(nn.Module):
    """Conv, pool, conv, upsample; with ``skip`` the last conv also reads the first conv's map."""

    def __init__(self, skip: bool, unused: bool = False) -> None:
        super().__init__()
        self.skip = skip
        self.enc = nn.Conv2d(3, 4, 3, padding=1)
        self.mid = nn.Conv2d(4, 4, 3, padding=1)
        self.head = nn.Conv2d(8 if skip else 4, 2, 1)
        if unused:
            self.spare = nn.Conv2d(4, 4, 1)

    def forward(self, x):
        e = self.enc(x)
        m = F.interpolate(self.mid(F.max_pool2d(e, 2)), scale_factor=2.0)
        return self.head(torch.cat([e, m], 1) if self.skip else m)


@pytest.mark.parametrize("skip", [True, False])
def test_trace_feature_maps_records_shapes_sources_and_skips(skip):
    maps = testing.trace_feature_maps(_TwoLevelNet(skip), torch.randn(2, 3, 8, 6))
    names = [name for name, _, _ in maps]
    assert names[:4] == ["conv2d", "max_pool2d", "conv2d", "interpolate"], names
    # Shapes and sources written out by hand for this network: enc (0) -> pool (1) -> mid (2) -> up (3).
    assert [shape for _, shape, _ in maps[:4]] == [(2, 4, 8, 6), (2, 4, 4, 3), (2, 4, 4, 3), (2, 4, 8, 6)]
    assert [sources for _, _, sources in maps[:4]] == [[], [0], [1], [2]]
    assert testing.coarsest_map(maps) == 1
    reused = testing.encoder_maps_reused(maps)
    assert bool(reused) == skip  # the control: the same network without its skip reads no encoder map
    if skip:
        assert reused[0][1] == "cat" and reused[0][0] == 4


def test_trace_feature_maps_ignores_other_batch_sizes_and_rejects_bad_images(capsys):
    maps = testing.trace_feature_maps(lambda x: x.new_zeros(3, 1, 2, 2) + x.mean(), torch.randn(2, 3, 4, 4))
    assert maps == []
    with pytest.raises(TypeError, match="N, C, H, W"):
        testing.trace_feature_maps(_TwoLevelNet(True), torch.randn(3, 4, 4))
    testing.show_trace(testing.trace_feature_maps(_TwoLevelNet(True), torch.randn(1, 3, 4, 4)))
    out = capsys.readouterr().out
    assert "<- coarsest" in out and "<- reads an encoder map" in out
    with pytest.raises(ValueError, match="no feature map"):
        testing.coarsest_map([])


def test_check_parameters_get_gradients_passes_used_layers_and_fails_an_unused_one():
    net = _TwoLevelNet(True)
    testing.check_parameters_get_gradients(net, torch.randn(2, 3, 8, 6))
    assert all(p.grad is None for p in net.parameters())  # autograd.grad: .grad left as it was
    with pytest.raises(AssertionError, match=r"2 of 8 got none, e.g. \['spare.weight', 'spare.bias'\]"):
        testing.check_parameters_get_gradients(_TwoLevelNet(True, unused=True), torch.randn(2, 3, 8, 6))


def test_check_parameters_get_gradients_fails_a_detached_output_and_a_raising_forward():
    class Detached(_TwoLevelNet):
        def forward(self, x):
            return super().forward(x).detach()

    with pytest.raises(AssertionError, match="does not depend on any parameter"):
        testing.check_parameters_get_gradients(Detached(False), torch.randn(1, 3, 4, 4))
    with pytest.raises(AssertionError, match="raised RuntimeError"):
        testing.check_parameters_get_gradients(_TwoLevelNet(False), torch.randn(1, 5, 4, 4))
    with pytest.raises(TypeError, match="nn.Module"):
        testing.check_parameters_get_gradients(lambda x: x, torch.randn(1))


@pytest.mark.parametrize(
    "fn, problem",
    [
        (lambda x, s: x, "itself"),
        (lambda x, s: x.reshape(-1, x.shape[-1]).view_as(x), "a view"),
        (lambda x, s: x[..., None].expand(*x.shape, s).flatten(-2), "a view"),  # expand + flatten of a 1-wide axis
        (lambda x, s: x.transpose(2, 3).transpose(2, 3), "a view"),
    ],
)
def test_check_returns_new_tensor_fails_the_input_and_its_views(fn, problem):
    x = torch.randn(1, 2, 3, 4)
    with pytest.raises(AssertionError, match=f"returned (its argument 0 {problem}|{problem} of its argument 0)"):
        testing.check_returns_new_tensor(fn, x, 1, name="upsample")


def test_check_returns_new_tensor_passes_copies_and_returns_the_output():
    x = torch.randn(1, 2, 3, 4)
    out = testing.check_returns_new_tensor(lambda t, s: t.repeat_interleave(s, -1), x, 1)
    torch.testing.assert_close(out, x)  # equal values, its own memory
    with pytest.raises(AssertionError, match="expected a tensor, got list"):
        testing.check_returns_new_tensor(lambda t: [t.clone()], x)
    with pytest.raises(TypeError, match="callable"):
        testing.check_returns_new_tensor(x, x)


# ---------------------------------------------------------------- check_devices_and_dtypes with module arguments


def _apply_module(module, x):
    return module(x)


def test_check_devices_and_dtypes_runs_module_arguments_everywhere():
    import torch.nn as nn

    report = testing.check_devices_and_dtypes(
        _apply_module, lambda dtype: (nn.Linear(3, 2).to(dtype), torch.randn(4, 3, dtype=dtype)), expected_shape=(4, 2)
    )
    assert {"meta float32: ran", "simulated cuda float64: ran", "cpu float64: ran"} <= set(report)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU: on the CPU there is nowhere to move to")
def test_check_devices_and_dtypes_moves_module_arguments_to_the_gpu():
    import torch.nn as nn

    report = testing.check_devices_and_dtypes(
        _apply_module, lambda dtype: (nn.Linear(3, 2).to(dtype), torch.randn(4, 3, dtype=dtype)), expected_shape=(4, 2)
    )
    assert "cuda float32: ran" in report  # a module left on the CPU fails against CUDA inputs


def test_check_values_calls_a_case_without_a_tensor_to_vary_once():
    # bilinear_kernel(channels, scale) takes ints only: without a tensor to pass in other layouts, each case is
    # still one call (it was none, so that a wrong function passed); the wrong function is the control.
    calls = []

    def kernel(c, f):
        calls.append((c, f))
        return torch.full((c, c), float(f))

    testing.check_values(kernel, lambda c, f: torch.full((c, c), float(f)), [(1, 2), (3, 4)])
    assert calls == [(1, 2), (3, 4)]
    with pytest.raises(AssertionError, match=r"kernel\(3, 4\)"):
        testing.check_values(kernel, lambda c, f: torch.full((c, c), float(f + 1)), [(3, 4)])


def test_a_test_cell_ending_with_check_values_gets_full_credit_from_nbgrader():
    # nbgrader reads a number shown as a graded cell's last value as partial credit: check_values returned its
    # count of comparisons, so a passing cell scored that count (or failed the whole notebook when the count
    # exceeded the cell's points). The control: nbgrader gives a cell showing a number that number.
    from nbformat.v4 import new_code_cell, new_output
    from nbgrader.utils import determine_grade

    def graded_cell(value):
        outputs = (
            [] if value is None else [new_output("execute_result", {"text/plain": repr(value)}, execution_count=1)]
        )
        return new_code_cell(
            "...",
            metadata={"nbgrader": {"grade": True, "points": 2, "grade_id": "t", "solution": False, "locked": True}},
            outputs=outputs,
        )

    shown = testing.check_values(torch.neg, lambda x: -x, [torch.ones(2, 3)])
    assert determine_grade(graded_cell(shown)) == (2, 2)
    assert determine_grade(graded_cell(1)) == (1, 2)
