"""Tests of the hidden tests' checks in segutils.testing: each passes a right function and fails a wrong one
with a message in the student's terms. References are built-ins (F.conv2d, torch.bincount) or written here."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from segutils import testing
from segutils.testing import Case


def reads_memory_as_contiguous(x):
    """Wrong for non-contiguous inputs: reinterprets the storage with contiguous strides."""
    return torch.as_strided(x, x.shape, x.contiguous().stride()) * 2


def confusion_matrix(pred, target, k):
    return torch.bincount((target.flatten() * k + pred.flatten()).long(), minlength=k * k).reshape(k, k)


def confusion_matrix_on_cpu(pred, target, k):
    return torch.bincount((target.flatten() * k + pred.flatten()).long().cpu(), minlength=k * k).reshape(k, k)


# ---------------------------------------------------------------------------------------------
# layout_variants, check_values
# ---------------------------------------------------------------------------------------------


def test_layout_variants_hold_the_same_values_in_other_layouts():
    x = torch.randn(2, 3, 4, 5)
    variants = testing.layout_variants(x)
    assert set(variants) == {"contiguous", "channels_last", "transposed view", "strided view"}
    for name, v in variants.items():
        assert torch.equal(v, x), name
    assert variants["channels_last"].is_contiguous(memory_format=torch.channels_last)
    assert not variants["transposed view"].is_contiguous() and not variants["strided view"].is_contiguous()
    assert set(testing.layout_variants(torch.randn(5))) == {"contiguous", "strided view"}


def test_check_values_passes_a_right_function_over_every_case_and_layout():
    cases = [
        Case(torch.randn(1, 2, 5, 5), torch.randn(3, 2, 3, 3), padding=1),
        (torch.randn(2, 1, 4, 6), torch.randn(2, 1, 1, 3)),
    ]
    calls = []

    def conv(x, w, padding=0):
        calls.append(x.stride())
        return F.conv2d(x, w, padding=padding)

    testing.check_values(conv, F.conv2d, cases)
    assert len(calls) == 2 * 4  # two cases, four layouts of x


def test_check_values_fails_a_function_that_assumes_contiguous_memory():
    with pytest.raises(AssertionError, match="as a channels_last"):
        testing.check_values(reads_memory_as_contiguous, lambda x: x * 2, [torch.randn(1, 3, 4, 4)])


def test_check_values_fails_wrong_values_and_names_the_call():
    with pytest.raises(
        AssertionError,
        match=r"conv\(a float32 tensor of shape \(1, 2, 5, 5\).*padding=1.*"
        r"does not match",
    ):
        testing.check_values(
            lambda x, w, padding: F.conv2d(x, w, padding=padding) + 1e-3,
            F.conv2d,
            [Case(torch.randn(1, 2, 5, 5), torch.randn(3, 2, 3, 3), padding=1)],
            name="conv",
        )


def test_check_values_reports_an_exception_of_the_function():
    def fails(x):
        raise ValueError("size must be an int")

    with pytest.raises(AssertionError, match="but it raised ValueError: size must be an int"):
        testing.check_values(fails, lambda x: x, [torch.randn(1, 1, 2, 2)])


def test_check_values_fails_a_function_that_changes_its_input():
    def doubles_in_place(x):
        return x.mul_(2)

    with pytest.raises(AssertionError, match="changed its argument 0 in place"):
        testing.check_values(doubles_in_place, lambda x: x * 2, [torch.randn(1, 1, 2, 2)])


def test_check_values_compares_tuples_of_outputs():
    testing.check_values(lambda x: (x.max(), x.argmax()), lambda x: (x.max(), x.argmax()), [torch.randn(7)])
    with pytest.raises(AssertionError, match="output 1"):
        testing.check_values(lambda x: (x.max(), x.argmin()), lambda x: (x.max(), x.argmax()), [torch.arange(7.0)])


def test_check_values_needs_cases():
    with pytest.raises(ValueError, match="at least one case"):
        testing.check_values(torch.neg, torch.neg, [])


# ---------------------------------------------------------------------------------------------
# check_gradients
# ---------------------------------------------------------------------------------------------


class _WrongBackward(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x):
        return x * x

    @staticmethod
    def backward(ctx, grad):
        return grad  # should be 2 x grad


def test_check_gradients_passes_right_gradients_and_ignores_int_arguments():
    testing.check_gradients(lambda x, s: x.repeat_interleave(s, dim=-1) ** 2, torch.randn(2, 3), 2)


def test_check_gradients_fails_wrong_gradients():
    with pytest.raises(AssertionError, match="wrong gradients"):
        testing.check_gradients(_WrongBackward.apply, torch.randn(3))


class _OneEntryOff(torch.autograd.Function):
    """y = 2 x, whose backward is right except for one entry of the input gradient, off by 0.01."""

    @staticmethod
    def forward(ctx, x):
        return 2 * x

    @staticmethod
    def backward(ctx, grad):
        grad = 2 * grad
        grad.view(-1)[5] += 0.01
        return grad


@pytest.mark.parametrize("seed", range(20))
def test_check_gradients_fails_a_gradient_wrong_in_one_entry_whatever_the_seed(seed):
    """Fast mode compares one random projection of the Jacobian: a small error in one entry of 96 still fails."""
    torch.manual_seed(seed)
    testing.check_gradients(lambda x: 2 * x, torch.randn(2, 3, 4, 4))  # the control: the right gradient passes
    with pytest.raises(AssertionError, match="wrong gradients"):
        testing.check_gradients(_OneEntryOff.apply, torch.randn(2, 3, 4, 4))


def test_check_gradients_calls_the_function_a_few_times_not_once_per_element():
    calls = []

    def counted(x):
        calls.append(1)
        return F.unfold(x, 3, padding=1)

    testing.check_gradients(counted, torch.randn(1, 2, 8, 8))  # 128 input and 1,152 output elements
    assert 0 < len(calls) <= 10, f"fn ran {len(calls)} times"


def test_check_gradients_fails_an_output_outside_the_autograd_graph():
    with pytest.raises(AssertionError, match="does not require grad"):
        testing.check_gradients(lambda x: torch.tensor(x.tolist(), dtype=x.dtype) * 2, torch.randn(3))


def test_check_gradients_needs_a_floating_point_argument():
    with pytest.raises(ValueError, match="no floating-point tensor"):
        testing.check_gradients(lambda i: i * 2, torch.arange(3))


# ---------------------------------------------------------------------------------------------
# check_raises
# ---------------------------------------------------------------------------------------------


def _checked_sqrt(x):
    if x < 0:
        raise ValueError(f"x must be non-negative, got {x}")
    return x**0.5


def test_check_raises_passes_a_function_that_raises_with_a_message():
    error = testing.check_raises(_checked_sqrt, (-1,), "a negative x", match="non-negative")
    assert isinstance(error, ValueError)


@pytest.mark.parametrize(
    "fn, expected",
    [
        (lambda x: x, "but <lambda> returned"),
        (lambda x: [][x], "got IndexError"),
        (lambda x: (_ for _ in ()).throw(ValueError()), "empty message"),
    ],
)
def test_check_raises_fails_a_function_that_does_not_raise_the_documented_error(fn, expected):
    with pytest.raises(AssertionError, match=expected):
        testing.check_raises(fn, (1,), "a bad x")


def test_check_raises_checks_the_words_of_the_message_when_asked():
    with pytest.raises(AssertionError, match="does not mention 'positive'"):
        testing.check_raises(_checked_sqrt, (-1,), "a negative x", match="positive")


# ---------------------------------------------------------------------------------------------
# run_on_fake_cuda, check_devices_and_dtypes
# ---------------------------------------------------------------------------------------------


def test_fake_cuda_runs_value_dependent_code_and_returns_the_values():
    pred, target = torch.randint(0, 3, (2, 4, 4)), torch.randint(0, 3, (2, 4, 4))
    got = testing.run_on_fake_cuda(confusion_matrix, pred, target, 3)
    assert got.device.type == "cpu" and torch.equal(got, confusion_matrix(pred, target, 3))
    masked = testing.run_on_fake_cuda(lambda x: x[x > 0] if bool((x > 0).any()) else x, torch.tensor([1.0, -1.0]))
    assert torch.equal(masked, torch.tensor([1.0]))


@pytest.mark.parametrize(
    "fn, expected",
    [
        (confusion_matrix_on_cpu, "returned a tensor on cpu"),
        (lambda p, t, k: confusion_matrix(p, t, k) + torch.zeros(k, k, dtype=torch.long), "met tensors on the inputs"),
        (lambda p, t, k: torch.from_numpy(p.numpy()), r"called \.numpy\(\) on a GPU tensor"),
    ],
)
def test_fake_cuda_catches_a_hard_coded_cpu_without_a_gpu(fn, expected):
    with pytest.raises(AssertionError, match=expected):
        testing.run_on_fake_cuda(fn, torch.randint(0, 3, (2, 4, 4)), torch.randint(0, 3, (2, 4, 4)), 3)


def test_fake_cuda_runs_modules_and_catches_a_buffer_created_in_forward():
    class AddsOffset(torch.nn.Module):
        def forward(self, x):
            return x + torch.ones(x.shape[-1])  # created on the CPU

    net = torch.nn.Sequential(torch.nn.Conv2d(2, 3, 3), torch.nn.BatchNorm2d(3)).eval()
    x = torch.randn(1, 2, 5, 5)
    testing.assert_close(testing.run_on_fake_cuda(net, x), net(x))
    assert next(net.parameters()).device.type == "cpu"  # the module passed in is left alone
    with pytest.raises(AssertionError, match="met tensors on the inputs"):
        testing.run_on_fake_cuda(AddsOffset(), x)


def test_fake_cuda_converts_modules_inside_the_function_and_refuses_backward_passes():
    net = torch.nn.Sequential(torch.nn.Conv2d(3, 2, 3), torch.nn.BatchNorm2d(2)).eval()
    x = torch.randn(2, 3, 5, 5)
    got = testing.run_on_fake_cuda(lambda m, t: m.to(torch.float64)(t.double()), net, x)
    testing.assert_close(got, net.double()(x.double()))
    assert not torch.__future__.get_swap_module_params_on_conversion()  # the global flag is restored
    with pytest.raises(testing.FakeCudaUnsupported, match="backward"):
        testing.run_on_fake_cuda(lambda t: (t * 2).sum().backward(), torch.randn(3, requires_grad=True))
    with pytest.raises(testing.FakeCudaUnsupported):  # the author's limit, not the student's mistake
        testing.check_devices_and_dtypes(
            lambda t: torch.autograd.grad((t * t).sum(), t)[0],
            lambda dt: (torch.randn(3, dtype=dt, requires_grad=True),),
            meta=False,
        )


def _nails(x, s):
    out = x.new_zeros(*x.shape[:2], x.shape[2] * s, x.shape[3] * s)
    out[..., ::s, ::s] = x
    return out


def _nails_reference(x, s):
    kernel = torch.zeros(x.shape[1], 1, s, s, dtype=x.dtype)
    kernel[:, :, 0, 0] = 1
    return F.conv_transpose2d(x, kernel, stride=s, groups=x.shape[1])


def test_check_devices_and_dtypes_passes_a_right_function_and_reports_where_it_ran():
    report = testing.check_devices_and_dtypes(
        _nails,
        lambda dt: (torch.randn(2, 3, 4, 5, dtype=dt), 2),
        reference=_nails_reference,
        expected_shape=(2, 3, 8, 10),
    )
    assert "meta float32: ran" in report and "simulated cuda float64: ran, values compared" in report
    assert "cpu float32: ran, values compared" in report
    if not torch.cuda.is_available():
        assert "cuda float16: skipped (no GPU)" in report


def test_check_devices_and_dtypes_fails_a_hard_coded_device_without_a_gpu():
    make = lambda dt: (torch.randint(0, 3, (2, 4, 4), dtype=dt), torch.randint(0, 3, (2, 4, 4), dtype=dt), 3)  # noqa: E731
    kwargs = dict(reference=confusion_matrix, dtypes=(torch.uint8, torch.int64), output_dtype=torch.int64, meta=False)
    testing.check_devices_and_dtypes(confusion_matrix, make, **kwargs)
    with pytest.raises(AssertionError, match="on simulated cuda: confusion_matrix_on_cpu returned a tensor on cpu"):
        testing.check_devices_and_dtypes(confusion_matrix_on_cpu, make, **kwargs)


def test_check_devices_and_dtypes_fails_a_wrong_dtype():
    with pytest.raises(AssertionError, match="float64 on .*expected an output of dtype float64, got float32"):
        testing.check_devices_and_dtypes(lambda x: x.float() * 2, lambda dt: (torch.randn(3, dtype=dt),))


# ---------------------------------------------------------------------------------------------
# check_no_builtin
# ---------------------------------------------------------------------------------------------


class _ConvInBackward(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x):
        return x * 2

    @staticmethod
    def backward(ctx, grad):
        return F.conv2d(grad, torch.full((grad.shape[1], 1, 1, 1), 2.0), groups=grad.shape[1])


def test_check_no_builtin_passes_elementary_code_and_returns_the_output():
    x = torch.randn(1, 2, 3, 3, requires_grad=True)
    out = testing.check_no_builtin(lambda t: t * 2, testing.CONVOLUTION_OPS, x)
    assert torch.equal(out, x * 2)


@pytest.mark.parametrize(
    "fn, expected",
    [
        (lambda t: F.conv2d(t, torch.ones(2, 1, 1, 1), groups=2), "forbidden operation aten.convolution"),
        (_ConvInBackward.apply, "forbidden operation aten.convolution"),
    ],
)
def test_check_no_builtin_fails_a_builtin_forward_or_backward(fn, expected):
    with pytest.raises(AssertionError, match=expected):
        testing.check_no_builtin(fn, testing.CONVOLUTION_OPS, torch.randn(1, 2, 3, 3, requires_grad=True))


def test_check_no_builtin_fails_delegation_to_the_course_package():
    from segutils import metrics

    def delegates(pred, target):
        return metrics.confusion_matrix(pred, target, 3)

    with pytest.raises(AssertionError, match="should do the work itself"):
        testing.check_no_builtin(
            delegates, testing.CROSS_ENTROPY_OPS, torch.zeros(4, dtype=torch.long), torch.zeros(4, dtype=torch.long)
        )
