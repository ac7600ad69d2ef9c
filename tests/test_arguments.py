"""The shared argument checks of segutils.arguments: what they accept, and the message for each bad input."""

from __future__ import annotations

import pytest
import torch

from segutils.arguments import check_images, check_positive_int


@pytest.mark.parametrize("value,minimum", [(1, 1), (7, 1), (0, 0), (3, 3)])
def test_positive_ints_at_or_above_the_minimum_are_returned(value, minimum):
    assert check_positive_int(value, "n", minimum) == value


@pytest.mark.parametrize(
    "value,error,message",
    [
        (True, TypeError, "n must be an int, got bool"),
        (2.0, TypeError, "n must be an int, got float"),
        ("3", TypeError, "n must be an int, got str"),
        (0, ValueError, "n must be >= 1, got 0"),
        (-4, ValueError, "n must be >= 1, got -4"),
    ],
)
def test_positive_int_refuses_with_the_name_and_value(value, error, message):
    with pytest.raises(error, match=message):
        check_positive_int(value, "n")


def test_images_of_the_right_shape_and_dtype_pass():
    check_images(torch.zeros(2, 3, 5, 4), 3, "Net")
    check_images(torch.zeros(1, 7, 1, 1, dtype=torch.float64), None, "Net")
    check_images(torch.zeros(1, 3, 2, 2, device="meta"), 3, "Net")


@pytest.mark.parametrize(
    "x,error,message",
    [
        ([[0.0]], TypeError, "Net expects a torch.Tensor, got list"),
        (
            torch.zeros(3, 5, 4),
            ValueError,
            r"Net expects a 4-D input \(N, C, H, W\), got a 3-D tensor of shape \(3, 5, 4\)",
        ),
        (torch.zeros(1, 3, 5, 4, dtype=torch.long), TypeError, "floating-point input, got dtype torch.int64"),
        (torch.zeros(1, 1, 5, 4), ValueError, r"expects 3 input channels, got 1 \(input shape \(1, 1, 5, 4\)\)"),
        (torch.zeros(0, 3, 5, 4), ValueError, r"empty batch \(N=0\)"),
        (torch.zeros(1, 3, 0, 4), ValueError, r"empty image \(H or W is 0\)"),
    ],
)
def test_bad_images_are_refused_with_what_is_wrong(x, error, message):
    with pytest.raises(error, match=message):
        check_images(x, 3, "Net")
