"""Tests of segutils.receptive_field: the analytic formula against gradients and hand counts."""

from __future__ import annotations

import warnings

import pytest
import torch
from torch import nn

from segutils.models import DilatedFCN, EncoderDecoderFCN, PatchClassifier, PlainFCN, UNet, convolutionalize
from segutils.receptive_field import (
    empirical_receptive_field,
    gradient_map,
    receptive_field,
    receptive_field_layers,
)


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


def test_formula_by_hand():
    assert receptive_field([]) == 1
    assert receptive_field([(3, 1, 1)]) == 3
    assert receptive_field([(3, 1, 1)] * 5) == 11
    assert receptive_field([(3, 1, 2), (3, 1, 4)]) == 1 + 4 + 8
    # conv3, conv3 -> 5; 2x2 pool stride 2 -> 6; conv3 on the stride-2 grid adds 2 * 2 -> 10
    assert receptive_field([(3, 1, 1), (3, 1, 1), (2, 2, 1), (3, 1, 1)]) == 10
    # a stride-2 conv3 then conv3: 3 + 2 * 2 = 7
    assert receptive_field([(3, 2, 1), (3, 1, 1)]) == 7
    assert receptive_field(((7, 1, 1),)) == 7


@pytest.mark.parametrize("num_layers", [1, 2, 5, 8])
def test_plain_fcn_is_one_plus_two_l(num_layers):
    model = PlainFCN(3, 5, channels=8, num_layers=num_layers)
    assert receptive_field_layers(model) == [(3, 1, 1)] * num_layers + [(1, 1, 1)]
    assert receptive_field(model) == 1 + 2 * num_layers
    assert empirical_receptive_field(model, size=41) == 1 + 2 * num_layers


@pytest.mark.parametrize("dilations", [(1,), (2,), (1, 2, 4, 8), (2, 3), (1, 1, 2, 3, 5)], ids=str)
def test_dilated_fcn(dilations):
    model = DilatedFCN(3, 5, channels=8, dilations=dilations)
    expected = 1 + 2 * sum(dilations)
    assert receptive_field(model) == expected
    assert empirical_receptive_field(model, size=expected + 10) == expected


@pytest.mark.parametrize("patch_size", [1, 3, 9, 15])
def test_convolutionalized_patch_classifier_sees_its_patch(patch_size):
    model = convolutionalize(PatchClassifier(3, 5, patch_size, hidden=(16, 8)))
    assert receptive_field(model) == patch_size
    assert empirical_receptive_field(model, size=31) == patch_size


def test_strided_stack_analytic_equals_empirical():
    # average pooling spreads the gradient over its whole window (max pooling would not)
    model = nn.Sequential(
        nn.Conv2d(2, 4, 3, padding=1),
        nn.ReLU(),
        nn.Conv2d(4, 4, 3, padding=1),
        nn.ReLU(),
        nn.AvgPool2d(2),
        nn.Conv2d(4, 3, 3, padding=1),
    )
    assert receptive_field(model) == 10
    assert empirical_receptive_field(model, in_channels=2, size=32) == 10


def test_gradient_map_zero_outside_patch_and_model_untouched():
    classifier = PatchClassifier(1, 2, 5, hidden=(8,))
    model = convolutionalize(classifier).train()
    grad = gradient_map(model, in_channels=1, size=11)
    assert grad.shape == (11, 11) and grad.dtype == torch.float64
    assert (grad[3:8, 3:8] > 0).all()
    grad[3:8, 3:8] = 0
    assert (grad == 0).all()
    assert model.training and model.layers[0].weight.dtype == torch.float32


def test_gradient_map_is_the_linear_weight_for_a_linear_classifier():
    """Independent check: for a linear patch classifier the gradient is |W| summed over classes/channels."""
    classifier = PatchClassifier(2, 3, 5, hidden=())
    grad = gradient_map(convolutionalize(classifier), in_channels=2, size=9, samples=3)
    expected = 3 * classifier.layers[1].weight.detach().double().reshape(3, 2, 5, 5).sum(0).abs().sum(0)
    torch.testing.assert_close(grad[2:7, 2:7], expected)


def test_encoder_decoders_need_the_empirical_route():
    # encoder path alone, as hand-counted for depth 3: 5 -> pool 6 -> +4+4 = 14 -> pool 16
    # -> +8+8 = 32 -> pool 36 -> bottom/bottleneck convs at stride 8: +16+16 = 68
    encoder = [(3, 1, 1), (3, 1, 1), (2, 2, 1)] * 3 + [(3, 1, 1), (3, 1, 1)]
    assert receptive_field(encoder) == 68
    for model in (
        UNet(3, 5, base_channels=4, depth=3),
        EncoderDecoderFCN(3, 5, base_channels=4, depth=3),
        EncoderDecoderFCN(3, 5, base_channels=4, upsample="bilinear", skips=False),
    ):
        with pytest.raises(NotImplementedError, match="several paths.*empirical_receptive_field"):
            receptive_field(model)
        with warnings.catch_warnings():
            warnings.simplefilter("error")  # the probe image is large enough: no border warning
            assert empirical_receptive_field(model, size=161) >= 68
    assert empirical_receptive_field(PlainFCN(3, 5, num_layers=4), size=41) < 68


def test_upsampling_layers_are_refused():
    model = nn.Sequential(nn.Conv2d(1, 1, 3), nn.Upsample(scale_factor=2))
    with pytest.raises(NotImplementedError, match="contains upsampling \\(Upsample\\)"):
        receptive_field(model)


def test_bad_arguments():
    with pytest.raises(TypeError, match="does not know the layer Flatten; convolutionalize"):
        receptive_field(PatchClassifier(3, 5, 3))
    with pytest.raises(ValueError, match="square layers only"):
        receptive_field(nn.Conv2d(1, 1, (1, 3)))
    with pytest.raises(ValueError, match=r"layer 1 must be a \(kernel_size, stride, dilation\) tuple"):
        receptive_field([(3, 1, 1), (3, 0, 1)])
    with pytest.raises(TypeError, match="expects an nn.Module or a sequence"):
        receptive_field(3)
    with pytest.raises(ValueError, match="size must be a positive int"):
        empirical_receptive_field(PlainFCN(3, 5), size=0)
    with pytest.raises(ValueError, match="meta device"):
        gradient_map(PlainFCN(3, 5).to("meta"))
    with pytest.warns(UserWarning, match="touches the border"):
        assert empirical_receptive_field(PlainFCN(3, 5, channels=8, num_layers=6), size=9) == 9


def test_analytic_works_on_meta():
    assert receptive_field(DilatedFCN(3, 5).to("meta")) == 31


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_empirical_on_cuda():
    model = DilatedFCN(3, 5, channels=8, dilations=(1, 2, 3)).to("cuda")
    assert empirical_receptive_field(model, size=21) == 13
    assert gradient_map(model, size=21).device.type == "cuda"
