"""Tests of segutils.models: shapes for any size, equivalences, devices, gradients, errors."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from segutils.models import (
    MODEL_NAMES,
    ConvPatchClassifier,
    DilatedFCN,
    EncoderDecoderFCN,
    PatchClassifier,
    PatchCNN,
    PlainFCN,
    UNet,
    bilinear_kernel,
    build_model,
    convolutionalize,
    count_parameters,
    sliding_window_logits,
    window_classifier,
)

SIZES = [(37, 53), (64, 64), (1, 1), (5, 7), (10, 3)]
# Every segmentation model, with the encoder-decoder in each upsampling mode and without skips.
MODEL_SPECS = [
    ("patch", {}),
    ("patch_cnn", {}),
    ("plain", {}),
    ("dilated", {}),
    ("fcn", {}),
    ("fcn", {"upsample": "bilinear"}),
    ("fcn", {"upsample": "nearest", "skips": False}),
    ("fcn", {"depth": 1}),
    ("unet", {}),
    ("unet", {"depth": 1}),
]
SPEC_IDS = [name + "".join(f"-{k}={v}" for k, v in kwargs.items()) for name, kwargs in MODEL_SPECS]


def small(name: str, **kwargs) -> nn.Module:
    """A narrow version of model ``name`` (3 -> 5 classes) for fast tests."""
    width = {
        "patch": {"hidden": (8,), "patch_size": 5},
        "patch_cnn": {"width": 4, "dilations": (1, 2)},
        "plain": {"channels": 8},
        "dilated": {"channels": 8},
        "fcn": {"base_channels": 4},
        "unet": {"base_channels": 4},
    }[name]
    torch.manual_seed(0)
    return build_model(name, 3, 5, **{**width, **kwargs})


# --- shapes, batches, devices -------------------------------------------------------------


@pytest.mark.parametrize("size", SIZES, ids=lambda s: f"{s[0]}x{s[1]}")
@pytest.mark.parametrize(("name", "kwargs"), MODEL_SPECS, ids=SPEC_IDS)
def test_output_shape_any_size(name, kwargs, size):
    model = small(name, **kwargs)
    out = model(torch.randn(2, 3, *size))
    assert out.shape == (2, 5, *size)
    assert out.dtype == torch.float32


def test_build_model_names_and_kwargs():
    assert set(MODEL_NAMES) == {"patch", "patch_cnn", "plain", "dilated", "fcn", "unet"}
    classes = {
        "patch": ConvPatchClassifier,
        "patch_cnn": ConvPatchClassifier,
        "plain": PlainFCN,
        "dilated": DilatedFCN,
        "fcn": EncoderDecoderFCN,
        "unet": UNet,
    }
    for name in MODEL_NAMES:
        model = build_model(name)
        assert isinstance(model, classes[name])
        assert (model.in_channels, model.num_classes) == (3, 5)
    assert build_model("patch").patch_size == 9
    assert build_model("patch", 1, 2, patch_size=3).patch_size == 3
    assert build_model("patch_cnn").patch_size == 31  # 1 + 2 * (1 + 2 + 4 + 8)
    assert build_model("patch_cnn", dilations=(1, 1, 3)).patch_size == 11
    assert build_model("plain", 1, 2, num_layers=7).num_layers == 7
    assert build_model("fcn", upsample="nearest").upsample == "nearest"


@pytest.mark.parametrize(("name", "kwargs"), MODEL_SPECS, ids=SPEC_IDS)
def test_batch_independence(name, kwargs):
    model = small(name, **kwargs).eval()
    x = torch.randn(3, 3, 19, 23)
    with torch.no_grad():
        batched = model(x)
        singles = torch.cat([model(x[i : i + 1]) for i in range(3)])
    torch.testing.assert_close(batched, singles, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("name", MODEL_NAMES)
def test_meta_device_via_context(name):
    with torch.device("meta"):
        model = build_model(name)
        x = torch.randn(2, 3, 37, 53)
    assert all(p.device.type == "meta" for p in model.parameters())
    out = model(x)
    assert out.device.type == "meta"
    assert out.shape == (2, 5, 37, 53)


@pytest.mark.parametrize("name", MODEL_NAMES)
def test_meta_device_via_to(name):
    model = build_model(name).to("meta")
    out = model(torch.empty(1, 3, 13, 29, device="meta"))
    assert out.device.type == "meta"
    assert out.shape == (1, 5, 13, 29)


def test_convolutionalize_on_meta_stays_on_meta():
    classifier = PatchClassifier(3, 5, 7).to("meta")
    conv = convolutionalize(classifier)
    assert all(p.device.type == "meta" for p in conv.parameters())
    assert conv(torch.empty(2, 3, 11, 9, device="meta")).shape == (2, 5, 11, 9)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
@pytest.mark.parametrize("name", MODEL_NAMES)
def test_cuda_matches_cpu(name, monkeypatch):
    monkeypatch.setattr(torch.backends.cudnn, "allow_tf32", False)
    monkeypatch.setattr(torch.backends.cuda.matmul, "allow_tf32", False)
    model = small(name).eval()
    x = torch.randn(2, 3, 37, 53)
    with torch.no_grad():
        expected = model(x)
        got = model.to("cuda")(x.to("cuda"))
    assert got.device.type == "cuda"
    torch.testing.assert_close(got.cpu(), expected, atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize(("name", "kwargs"), MODEL_SPECS, ids=SPEC_IDS)
def test_gradients_reach_every_parameter(name, kwargs):
    model = small(name, **kwargs).train()
    x = torch.randn(2, 3, 21, 18, requires_grad=True)
    target = torch.randint(0, 5, (2, 21, 18))
    F.cross_entropy(model(x), target).backward()
    assert x.grad is not None and x.grad.abs().sum() > 0
    for pname, param in model.named_parameters():
        assert param.grad is not None, pname
        assert torch.isfinite(param.grad).all(), pname
        assert param.grad.abs().sum() > 0, pname


# --- input validation ---------------------------------------------------------------------


@pytest.mark.parametrize("name", MODEL_NAMES)
def test_bad_inputs_have_clear_messages(name):
    model = small(name)
    with pytest.raises(ValueError, match=r"4-D input \(N, C, H, W\), got a 3-D"):
        model(torch.randn(3, 8, 8))
    with pytest.raises(ValueError, match="expects 3 input channels, got 1"):
        model(torch.randn(2, 1, 8, 8))
    with pytest.raises(TypeError, match="floating-point input, got dtype torch.uint8"):
        model(torch.zeros(2, 3, 8, 8, dtype=torch.uint8))
    with pytest.raises(ValueError, match="empty batch"):
        model(torch.randn(0, 3, 8, 8))
    with pytest.raises(ValueError, match="empty image"):
        model(torch.randn(1, 3, 0, 8))
    with pytest.raises(TypeError, match="expects a torch.Tensor, got list"):
        model([[1.0]])


def test_bad_constructor_arguments():
    with pytest.raises(ValueError, match="patch_size must be odd"):
        PatchClassifier(3, 5, 4)
    with pytest.raises(ValueError, match=r"hidden\[1\] must be >= 1, got 0"):
        PatchClassifier(3, 5, 3, hidden=(4, 0))
    with pytest.raises(ValueError, match="num_classes must be >= 1, got 0"):
        PlainFCN(3, 0)
    with pytest.raises(ValueError, match="num_layers must be >= 1"):
        PlainFCN(3, 5, num_layers=0)
    with pytest.raises(TypeError, match="channels must be an int, got float"):
        PlainFCN(3, 5, channels=8.0)
    with pytest.raises(ValueError, match="dilations must name at least one layer"):
        DilatedFCN(3, 5, dilations=())
    with pytest.raises(ValueError, match=r"dilations\[1\] must be >= 1, got 0"):
        DilatedFCN(3, 5, dilations=(1, 0))
    with pytest.raises(ValueError, match="upsample must be one of"):
        EncoderDecoderFCN(3, 5, upsample="bicubic")
    with pytest.raises(ValueError, match="depth must be >= 1"):
        UNet(3, 5, depth=0)
    with pytest.raises(ValueError, match="unknown model name 'segnet'; choose one of patch, patch_cnn, plain"):
        build_model("segnet")
    with pytest.raises(TypeError, match="unexpected keyword"):
        build_model("plain", depth=3)


# --- patch classifier, sliding windows, convolutionalize ------------------------------------


def test_patch_classifier_is_an_mlp_on_patches():
    model = PatchClassifier(2, 4, 5, hidden=(6, 3))
    types = [type(layer) for layer in model.layers]
    assert types == [nn.Flatten, nn.Linear, nn.ReLU, nn.Linear, nn.ReLU, nn.Linear]
    assert model(torch.randn(7, 2, 5, 5)).shape == (7, 4)
    with pytest.raises(ValueError, match="expects 5x5 patches, got 6x5"):
        model(torch.randn(7, 2, 6, 5))
    assert [type(layer) for layer in PatchClassifier(2, 4, 3, hidden=()).layers] == [nn.Flatten, nn.Linear]


def _naive_sliding_window(classifier: PatchClassifier, images: torch.Tensor) -> torch.Tensor:
    """Classify every pixel's zero-padded window one at a time, with slicing only."""
    p = classifier.patch_size
    padded = F.pad(images, (p // 2,) * 4)
    n, _, h, w = images.shape
    out = torch.empty(n, classifier.num_classes, h, w, dtype=images.dtype)
    for i in range(h):
        for j in range(w):
            out[:, :, i, j] = classifier(padded[:, :, i : i + p, j : j + p])
    return out


@pytest.mark.parametrize("patch_size", [1, 3, 5])
def test_sliding_window_matches_naive_loop(patch_size):
    torch.manual_seed(1)
    classifier = PatchClassifier(2, 3, patch_size, hidden=(6,))
    images = torch.randn(2, 2, 5, 7)
    with torch.no_grad():
        expected = _naive_sliding_window(classifier, images)
        torch.testing.assert_close(sliding_window_logits(classifier, images), expected, atol=1e-6, rtol=1e-6)
        torch.testing.assert_close(
            sliding_window_logits(classifier, images, chunk_size=4), expected, atol=1e-6, rtol=1e-6
        )


@pytest.mark.parametrize("hidden", [(), (16,), (32, 16)], ids=str)
@pytest.mark.parametrize("patch_size", [1, 3, 7, 15])
def test_convolutionalize_equals_sliding_window(patch_size, hidden):
    torch.manual_seed(2)
    classifier = PatchClassifier(3, 5, patch_size, hidden=hidden)
    conv = convolutionalize(classifier)
    images = torch.randn(3, 3, 37, 53)
    with torch.no_grad():
        expected = sliding_window_logits(classifier, images)
        got = conv(images)
    assert got.shape == (3, 5, 37, 53)
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=1e-5)


def test_convolutionalize_float64_is_exact_to_rounding():
    torch.manual_seed(3)
    classifier = PatchClassifier(3, 5, 9, hidden=(12, 7)).double()
    conv = convolutionalize(classifier)
    assert conv.layers[0].weight.dtype == torch.float64
    images = torch.randn(2, 3, 17, 10, dtype=torch.float64)
    with torch.no_grad():
        torch.testing.assert_close(conv(images), sliding_window_logits(classifier, images), atol=1e-12, rtol=1e-12)


def test_convolutionalize_structure_and_copies():
    classifier = PatchClassifier(3, 5, 7, hidden=(16, 8))
    conv = convolutionalize(classifier)
    convs = [m for m in conv.layers if isinstance(m, nn.Conv2d)]
    assert [(c.kernel_size, c.padding, c.in_channels, c.out_channels) for c in convs] == [
        ((7, 7), (3, 3), 3, 16),
        ((1, 1), (0, 0), 16, 8),
        ((1, 1), (0, 0), 8, 5),
    ]
    assert not any(isinstance(m, nn.Linear) for m in conv.modules())
    assert count_parameters(conv) == count_parameters(classifier)
    with torch.no_grad():
        classifier.layers[1].weight.zero_()
    assert convs[0].weight.abs().sum() > 0  # weights were copied, not shared
    with pytest.raises(TypeError, match="convolutionalize expects a PatchClassifier or PatchCNN, got Sequential"):
        convolutionalize(nn.Sequential(nn.Flatten(), nn.Linear(3, 2)))


def _naive_patch_cnn(cnn: PatchCNN, images: torch.Tensor) -> torch.Tensor:
    """The PatchCNN on every zero-padded window, one window at a time (independent of F.unfold)."""
    p = cnn.patch_size
    padded = F.pad(images, (p // 2,) * 4)
    n, _, h, w = images.shape
    out = torch.empty(n, cnn.num_classes, h, w, dtype=images.dtype)
    for i in range(h):
        for j in range(w):
            out[:, :, i, j] = cnn(padded[:, :, i : i + p, j : j + p])
    return out


@pytest.mark.parametrize("dilations", [(1,), (1, 2), (2, 1, 3)], ids=str)
def test_patch_cnn_convolutionalized_equals_its_sliding_window(dilations):
    torch.manual_seed(4)
    cnn = PatchCNN(3, 5, width=6, dilations=dilations)
    for module in cnn.modules():  # non-trivial BatchNorm statistics, so that eval mode matters
        if isinstance(module, nn.BatchNorm2d):
            module.running_mean.uniform_(-0.5, 0.5)
            module.running_var.uniform_(0.5, 2.0)
    cnn.eval()
    assert cnn.patch_size == 1 + 2 * sum(dilations)
    conv = convolutionalize(cnn).eval()
    images = torch.randn(2, 3, 9, 13)
    with torch.no_grad():
        naive = _naive_patch_cnn(cnn, images)
        torch.testing.assert_close(sliding_window_logits(cnn, images), naive, atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(conv(images), naive, atol=1e-5, rtol=1e-5)
    with pytest.raises(ValueError, match=f"expects {cnn.patch_size}x{cnn.patch_size} windows"):
        cnn(torch.randn(1, 3, cnn.patch_size + 2, cnn.patch_size))
    with pytest.raises(ValueError, match="dilations must name at least one layer"):
        PatchCNN(3, 5, dilations=())


def test_patch_cnn_has_no_padding_inside_the_window():
    # Padding inside the window would make the sliding window differ from the one-pass form.
    from segutils.receptive_field import receptive_field

    cnn = PatchCNN(3, 5)
    assert all(m.padding == (0, 0) for m in cnn.modules() if isinstance(m, nn.Conv2d))
    conv = convolutionalize(cnn)
    assert conv.kind == "cnn" and convolutionalize(PatchClassifier(3, 5, 3)).kind == "mlp"
    assert [m.padding for m in conv.modules() if isinstance(m, nn.Conv2d)] == [(15, 15)] + [(0, 0)] * 4
    assert receptive_field(conv) == cnn.patch_size == 31
    assert count_parameters(conv) == count_parameters(cnn)


@pytest.mark.parametrize(
    "model", [PatchClassifier(3, 5, 7, hidden=(8, 4)), PatchCNN(3, 5, width=4, dilations=(1, 3))], ids=["mlp", "cnn"]
)
def test_window_classifier_inverts_convolutionalize(model):
    torch.manual_seed(5)
    conv = convolutionalize(model).eval()
    back = window_classifier(conv)
    assert type(back) is type(model) and back.patch_size == model.patch_size and not back.training
    images = torch.randn(2, 3, 10, 12)
    with torch.no_grad():
        torch.testing.assert_close(sliding_window_logits(back, images), conv(images), atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(
            sliding_window_logits(back, images), sliding_window_logits(model.eval(), images), atol=1e-6, rtol=1e-6
        )
    with pytest.raises(TypeError, match="window_classifier expects a ConvPatchClassifier, got PlainFCN"):
        window_classifier(PlainFCN(3, 5))


def test_sliding_window_bad_arguments():
    classifier = PatchClassifier(3, 5, 3)
    with pytest.raises(ValueError, match="odd int patch_size attribute, got None"):
        sliding_window_logits(nn.Linear(27, 5), torch.randn(1, 3, 4, 4))
    with pytest.raises(ValueError, match="chunk_size must be >= 1, got 0"):
        sliding_window_logits(classifier, torch.randn(1, 3, 4, 4), chunk_size=0)
    with pytest.raises(ValueError, match="sliding_window_logits expects 3 input channels, got 2"):
        sliding_window_logits(classifier, torch.randn(1, 2, 4, 4))
    with pytest.raises(ValueError, match="sliding_window_logits expects a 4-D input"):
        sliding_window_logits(classifier, torch.randn(3, 4, 4))


# --- bilinear kernel and the encoder-decoder --------------------------------------------------


def test_bilinear_kernel_hand_values():
    weight = bilinear_kernel(3, 2)
    assert weight.shape == (3, 3, 4, 4)
    taps = torch.tensor([0.25, 0.75, 0.75, 0.25])
    for i in range(3):
        for j in range(3):
            expected = torch.outer(taps, taps) if i == j else torch.zeros(4, 4)
            torch.testing.assert_close(weight[i, j], expected)
    taps3 = torch.tensor([1 / 3, 2 / 3, 1.0, 2 / 3, 1 / 3])  # k = 5 for scale 3
    torch.testing.assert_close(bilinear_kernel(1, 3)[0, 0], torch.outer(taps3, taps3))
    assert bilinear_kernel(2, 8).shape == (2, 2, 16, 16)
    assert bilinear_kernel(1, 1).flatten().tolist() == [1.0]
    with pytest.raises(ValueError, match="scale must be >= 1, got 0"):
        bilinear_kernel(2, 0)


@pytest.mark.parametrize("scale", [2, 3, 4, 5, 8])
def test_bilinear_transposed_conv_equals_interpolate_in_interior(scale):
    channels = 2
    kernel = 2 * scale - scale % 2
    up = nn.ConvTranspose2d(
        channels, channels, kernel, stride=scale, padding=math.ceil((scale - 1) / 2), bias=False, dtype=torch.float64
    )
    with torch.no_grad():
        up.weight.copy_(bilinear_kernel(channels, scale, dtype=torch.float64))
        x = torch.randn(2, channels, 9, 11, dtype=torch.float64)
        got = up(x)
    expected = F.interpolate(x, scale_factor=scale, mode="bilinear", align_corners=False)
    assert got.shape == expected.shape == (2, channels, 9 * scale, 11 * scale)
    band = scale // 2  # interpolate clamps at the edge, the transposed conv sees zeros
    inner = (..., slice(band, -band), slice(band, -band))
    torch.testing.assert_close(got[inner], expected[inner], atol=1e-12, rtol=0)
    assert (got - expected)[..., :band, :].abs().amax() > 1e-3
    assert (got - expected)[..., :, -band:].abs().amax() > 1e-3
    corners = F.interpolate(x, scale_factor=scale, mode="bilinear", align_corners=True)
    assert (got[inner] - corners[inner]).abs().amax() > 1e-3


def test_encoder_decoder_transposed_layers_start_bilinear():
    model = EncoderDecoderFCN(3, 5, base_channels=4, depth=3)
    ups = [m for m in model.modules() if isinstance(m, nn.ConvTranspose2d)]
    assert len(ups) == 3
    for up in ups:
        assert up.stride == (2, 2) and up.kernel_size == (4, 4)
        torch.testing.assert_close(up.weight, bilinear_kernel(5, 2))
    (single,) = [
        m for m in EncoderDecoderFCN(3, 5, depth=3, skips=False).modules() if isinstance(m, nn.ConvTranspose2d)
    ]
    assert single.stride == (8, 8) and single.kernel_size == (16, 16)
    assert not any(isinstance(m, nn.ConvTranspose2d) for m in EncoderDecoderFCN(3, 5, upsample="bilinear").modules())


def test_encoder_decoder_skips_start_at_zero_and_are_used():
    """With nearest upsampling (x2 three times == x8 once) the skip model starts as the no-skip model."""
    coarse = EncoderDecoderFCN(3, 5, base_channels=4, upsample="nearest", skips=False).eval()
    fused = EncoderDecoderFCN(3, 5, base_channels=4, upsample="nearest", skips=True).eval()
    missing, unexpected = fused.load_state_dict(coarse.state_dict(), strict=False)
    assert not unexpected and all(key.startswith("skip_scores.") for key in missing)
    x = torch.randn(2, 3, 37, 53)
    with torch.no_grad():
        torch.testing.assert_close(fused(x), coarse(x))
        fused.skip_scores[0].bias.fill_(1.0)
        assert not torch.allclose(fused(x), coarse(x))


def test_fcn_16s_analogue_fuses_only_the_coarsest_skip():
    coarse = EncoderDecoderFCN(3, 5, base_channels=4, upsample="nearest", skips=False).eval()
    fcn16 = EncoderDecoderFCN(3, 5, base_channels=4, upsample="nearest", skips=1).eval()
    assert fcn16.skip_stages == [1] and [up.scale_factor for up in fcn16.ups] == [2, 4]
    assert EncoderDecoderFCN(3, 5, skips=2).skip_stages == [0, 1] == EncoderDecoderFCN(3, 5, skips=True).skip_stages
    fcn16.load_state_dict(coarse.state_dict(), strict=False)
    x = torch.randn(2, 3, 40, 24)
    with torch.no_grad():
        torch.testing.assert_close(fcn16(x), coarse(x))  # zero skip scores: the coarse model
        fcn16.skip_scores[0].weight.normal_()
        changed = (fcn16(x) - coarse(x)).abs().amax(dim=1)  # (N, H, W)
    # The stride-4 skip changes the logits in 4x4 blocks (nearest upsampling), not finer.
    blocks = changed.unflatten(1, (10, 4)).unflatten(3, (6, 4))
    assert changed.max() > 0
    torch.testing.assert_close(blocks, blocks[:, :, :1, :, :1].expand_as(blocks))
    with pytest.raises(ValueError, match=r"skips must be a bool or an int in \[0, depth - 1\]"):
        EncoderDecoderFCN(3, 5, depth=3, skips=3)


@pytest.mark.parametrize("model_cls", [EncoderDecoderFCN, UNet])
def test_odd_sizes_are_zero_padded_then_cropped(model_cls):
    torch.manual_seed(4)
    model = model_cls(3, 5, base_channels=4, depth=3).eval()
    x = torch.randn(2, 3, 37, 53)
    with torch.no_grad():
        expected = model(F.pad(x, (0, 3, 0, 3)))[..., :37, :53]  # 40 x 56 divides by 8
        torch.testing.assert_close(model(x), expected)


def test_unet_concatenates_skips():
    model = UNet(3, 5, base_channels=4, depth=3)
    assert [block[0].in_channels for block in model.up_convs] == [32, 16, 8]  # 2x the skip width
    assert [up.out_channels for up in model.up] == [16, 8, 4]


# --- parameter counts -------------------------------------------------------------------------


def test_count_parameters_by_hand():
    assert count_parameters(PatchClassifier(3, 5, 7, hidden=(16, 8))) == (147 * 16 + 16) + (16 * 8 + 8) + (8 * 5 + 5)
    # two bias-free 3x3 convs with BatchNorm (2 x 8 affine), then a 1x1 classifier with bias
    plain = PlainFCN(3, 5, channels=8, num_layers=2)
    assert count_parameters(plain) == 3 * 8 * 9 + 16 + 8 * 8 * 9 + 16 + 8 * 5 + 5
    plain.classifier.requires_grad_(False)
    assert count_parameters(plain, trainable_only=True) == 3 * 8 * 9 + 16 + 8 * 8 * 9 + 16
    assert count_parameters(plain.to("meta")) == 3 * 8 * 9 + 16 + 8 * 8 * 9 + 16 + 8 * 5 + 5
    with pytest.raises(TypeError, match="expects an nn.Module, got Tensor"):
        count_parameters(torch.zeros(3))


def test_models_are_small_enough_for_a_cpu():
    for name in MODEL_NAMES:
        assert count_parameters(build_model(name)) < 1_000_000, name
