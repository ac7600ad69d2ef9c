"""torchvision's pretrained networks from the local cache (segutils.pretrained), their anatomy
(segutils.architecture), the photographs, and the `weights`/`segment`/`train --data voc` commands
(tests/test_real_photographs_chapter.py executes chapter 10 without and with weights).

No test downloads anything: "pretrained" weights here are randomly initialised state dicts of the
right architectures, written where the loader looks (a temporary ``$TORCH_HOME``); the numbers they
give are meaningless and never asserted.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torch.nn import functional as F

from segutils import architecture as arch
from segutils import pretrained
from segutils.photos import PHOTOS, load_photo, read_image
from segutils.receptive_field import empirical_receptive_field

# ---------------------------------------------------------------- helpers and fixtures


def write_weights(torch_home: Path, names=pretrained.PRETRAINED_NAMES) -> None:
    """Random state dicts of the right architectures where the loader looks (float16 halves the files)."""
    old = os.environ.get("TORCH_HOME")
    os.environ["TORCH_HOME"] = str(torch_home)
    try:
        torch.manual_seed(0)
        for name in names:
            path = pretrained.checkpoint_path(name)
            path.parent.mkdir(parents=True, exist_ok=True)
            state = pretrained.build_architecture(name).state_dict()
            torch.save({k: v.half() if v.is_floating_point() else v for k, v in state.items()}, path)
    finally:
        if old is None:
            del os.environ["TORCH_HOME"]
        else:
            os.environ["TORCH_HOME"] = old


def write_tiny_voc(root: Path, count: int = 3, size: tuple[int, int] = (40, 32)) -> Path:
    """A PASCAL VOC 2012 devkit layout: ``count`` random images and palette label PNGs (person/cat boxes, void rows)."""
    base = root / "VOCdevkit" / "VOC2012"
    for sub in ("JPEGImages", "SegmentationClass", "ImageSets/Segmentation"):
        (base / sub).mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    ids = [f"2007_{i:06d}" for i in range(count)]
    width, height = size
    for i, name in enumerate(ids):
        Image.fromarray(rng.integers(0, 256, (height, width, 3), dtype=np.uint8)).save(
            base / "JPEGImages" / f"{name}.jpg"
        )
        mask = np.zeros((height, width), dtype=np.uint8)
        mask[height // 4 : 3 * height // 4, width // 4 : 3 * width // 4] = 15 if i % 2 == 0 else 8
        mask[height // 4, :] = 255
        label = Image.fromarray(mask, mode="P")
        label.putpalette([0, 0, 0] * 256)
        label.save(base / "SegmentationClass" / f"{name}.png")
    for split in ("train", "val"):
        (base / "ImageSets" / "Segmentation" / f"{split}.txt").write_text("\n".join(ids) + "\n")
    return root


@pytest.fixture(scope="module")
def weights_home(tmp_path_factory) -> Path:
    home = tmp_path_factory.mktemp("torch_home")
    write_weights(home)
    return home


@pytest.fixture
def empty_home(tmp_path, monkeypatch) -> Path:
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    return tmp_path


def run_cli(*args: str, env: dict[str, str] | None = None, timeout: int = 600) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "segutils", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        env={**os.environ, **(env or {})},
    )


# ---------------------------------------------------------------- where the weights are, and loading them


def test_checkpoint_path_is_where_torchvision_itself_puts_the_download(empty_home, monkeypatch):
    # torchvision's own loader, with the network replaced by a function that records the destination.
    destinations = []

    def fake_download(url, dst, hash_prefix=None, progress=True):
        destinations.append(Path(dst))
        torch.save(pretrained.build_architecture("lraspp_mobilenet_v3_large").state_dict(), dst)

    monkeypatch.setattr(torch.hub, "download_url_to_file", fake_download)
    pretrained.weights_of("lraspp_mobilenet_v3_large").get_state_dict(progress=False)
    assert destinations == [pretrained.checkpoint_path("lraspp_mobilenet_v3_large")]
    assert destinations[0].parent == empty_home / "hub" / "checkpoints"
    assert pretrained.available("lraspp_mobilenet_v3_large")


def test_fetch_downloads_with_torchvision_then_checks_the_file(empty_home, monkeypatch):
    calls = []

    def fake_download(url, dst, hash_prefix=None, progress=True):
        calls.append((url, hash_prefix))
        torch.save(pretrained.build_architecture("lraspp_mobilenet_v3_large").state_dict(), dst)

    monkeypatch.setattr(torch.hub, "download_url_to_file", fake_download)
    path = pretrained.fetch("lraspp_mobilenet_v3_large", progress=False)
    assert path == pretrained.checkpoint_path("lraspp_mobilenet_v3_large") and path.is_file()
    url = pretrained.weights_of("lraspp_mobilenet_v3_large").url
    assert calls == [(url, "d234d4ea")]  # torchvision checks the hash prefix of the file name
    pretrained.fetch("lraspp_mobilenet_v3_large", progress=False)
    assert len(calls) == 1, "a file already in the cache is not downloaded again"


def test_missing_weights_name_the_fetch_command(empty_home):
    with pytest.raises(pretrained.WeightsNotFoundError) as error:
        pretrained.load_pretrained("fcn_resnet50")
    message = str(error.value)
    assert "segutils weights fetch fcn_resnet50" in message
    assert str(pretrained.checkpoint_path("fcn_resnet50")) in message


def test_loads_a_state_dict_of_the_right_architecture(empty_home):
    write_weights(empty_home, ["lraspp_mobilenet_v3_large"])
    state = torch.load(pretrained.checkpoint_path("lraspp_mobilenet_v3_large"), weights_only=True)
    model = pretrained.load_pretrained("lraspp_mobilenet_v3_large")
    assert not model.training
    for key, value in model.state_dict().items():
        torch.testing.assert_close(value, state[key].to(value.dtype), msg=key)


def test_auxiliary_head_dropped_unless_asked(weights_home, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(weights_home))
    assert pretrained.load_pretrained("fcn_resnet50").aux_classifier is None
    assert pretrained.load_pretrained("fcn_resnet50", aux=True).aux_classifier is not None


@pytest.mark.parametrize("content", [b"not a checkpoint at all", b""], ids=["garbage", "empty"])
def test_corrupt_file_is_rejected_with_its_name(empty_home, content):
    path = pretrained.checkpoint_path("lraspp_mobilenet_v3_large")
    path.parent.mkdir(parents=True)
    path.write_bytes(content)
    with pytest.raises(pretrained.WeightsFileError, match="corrupt") as error:
        pretrained.load_pretrained("lraspp_mobilenet_v3_large")
    assert str(path) in str(error.value)


def test_truncated_file_is_rejected(empty_home):
    write_weights(empty_home, ["lraspp_mobilenet_v3_large"])
    path = pretrained.checkpoint_path("lraspp_mobilenet_v3_large")
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    with pytest.raises(pretrained.WeightsFileError, match="corrupt or truncated"):
        pretrained.load_pretrained("lraspp_mobilenet_v3_large")


def test_weights_of_another_architecture_are_rejected(empty_home):
    path = pretrained.checkpoint_path("fcn_resnet50")
    path.parent.mkdir(parents=True)
    torch.save(pretrained.build_architecture("lraspp_mobilenet_v3_large").state_dict(), path)
    with pytest.raises(pretrained.WeightsFileError) as error:
        pretrained.load_pretrained("fcn_resnet50")
    message = str(error.value)
    assert str(path) in message and "does not hold the weights of fcn_resnet50" in message
    assert "missing" in message and "unexpected" in message


def test_weights_with_other_shapes_are_rejected(empty_home):
    path = pretrained.checkpoint_path("fcn_resnet50")
    path.parent.mkdir(parents=True)
    torch.save(pretrained.build_architecture("fcn_resnet50", num_classes=5).state_dict(), path)
    with pytest.raises(
        pretrained.WeightsFileError,
        match=r"wrong shape \(e.g. classifier.4.weight \(5, 512, 1, 1\) instead of \(21, 512, 1, 1\)",
    ):
        pretrained.load_pretrained("fcn_resnet50")


def test_a_file_that_is_no_state_dict_is_rejected(empty_home):
    path = pretrained.checkpoint_path("fcn_resnet50")
    path.parent.mkdir(parents=True)
    torch.save(torch.zeros(3), path)
    with pytest.raises(pretrained.WeightsFileError, match="does not hold a state dict"):
        pretrained.load_pretrained("fcn_resnet50")


def test_metadata_needs_no_download(empty_home):
    assert pretrained.published_metrics("fcn_resnet50")["COCO-val2017-VOC-labels"] == {"miou": 60.5, "pixel_acc": 91.4}
    assert pretrained.categories("deeplabv3_resnet50")[15] == "person"
    assert len(pretrained.categories("lraspp_mobilenet_v3_large")) == 21
    assert not any(empty_home.rglob("*"))


def test_unknown_name_is_refused():
    with pytest.raises(ValueError, match="unknown pretrained model 'fcn_resnet18'"):
        pretrained.checkpoint_path("fcn_resnet18")


# ---------------------------------------------------------------- inference and anatomy


@pytest.mark.parametrize("name", pretrained.PRETRAINED_NAMES)
def test_coarse_logits_upsampled_are_the_models_output(name):
    torch.manual_seed(0)
    model = pretrained.build_architecture(name, aux=False).eval()
    x = torch.randn(1, 3, 72, 96)
    with torch.no_grad():
        coarse = pretrained.coarse_logits(model, x)
        out = model(x)["out"]
    assert coarse.shape[-2:] == (9, 12)  # output stride 8
    torch.testing.assert_close(F.interpolate(coarse, size=(72, 96), mode="bilinear", align_corners=False), out)


def test_segment_keeps_the_image_size_and_the_models_path():
    torch.manual_seed(0)
    model = pretrained.build_architecture("lraspp_mobilenet_v3_large").eval()
    image = torch.rand(3, 30, 50)
    s = pretrained.segment(model, image, "lraspp_mobilenet_v3_large")
    assert s.input.shape[-2:] == (520, 866)  # shorter side 520, as the weights' transforms resize
    assert s.logits.shape == (1, 21, 30, 50) and s.labels.shape == (30, 50)
    with torch.no_grad():
        own = model(s.input)["out"]
    torch.testing.assert_close(F.interpolate(own, size=(30, 50), mode="bilinear", align_corners=False), s.logits)
    torch.testing.assert_close(pretrained.predict(model, image, "lraspp_mobilenet_v3_large"), s.logits)


def test_stage_strides_show_dilation_replacing_stride():
    model = pretrained.build_architecture("fcn_resnet50")
    stages = {s.stage: s for s in arch.stage_strides("fcn_resnet50", model)}
    # torchvision builds the backbone with replace_stride_with_dilation=[False, True, True].
    assert [(stages[n].classifier_stride, stages[n].stride) for n in ("layer2", "layer3", "layer4")] == [
        (8, 8),
        (16, 8),
        (32, 8),
    ]
    assert max(stages["layer3"].dilations) == 2 and max(stages["layer4"].dilations) == 4
    assert arch.output_stride(model) == 8
    lraspp = {
        s.stage: s
        for s in arch.stage_strides(
            "lraspp_mobilenet_v3_large", pretrained.build_architecture("lraspp_mobilenet_v3_large")
        )
    }
    assert max(s.stride for s in lraspp.values()) == 16 and max(s.classifier_stride for s in lraspp.values()) == 32


def test_receptive_field_of_resnet50_by_hand():
    # conv1 7x7/2 -> 7; maxpool 3x3/2 -> 11; layer1 3 x (3x3 at jump 4) -> 35; layer2 +8 then 3 x 16 -> 91;
    # layer3 +16 then 5 x 32 -> 267; layer4 +32 then 2 x 64 -> 427. Dilation at stride 8 keeps the same field.
    model = pretrained.build_architecture("fcn_resnet50", aux=False)
    assert arch.receptive_field_of(model.backbone).local == 427
    assert arch.receptive_field_of(model) == arch.ReceptiveField(427 + 2 * 8, [])  # FCNHead's 3x3 at stride 8
    deeplab = arch.receptive_field_of(pretrained.build_architecture("deeplabv3_resnet50", aux=False))
    assert deeplab.local == 427 + 2 * 36 * 8 + 2 * 8 and deeplab.global_pools == ["classifier.0.convs.4.0"]
    assert len(arch.receptive_field_of(pretrained.build_architecture("lraspp_mobilenet_v3_large")).global_pools) == 9


@pytest.mark.parametrize("dilated", [False, True], ids=["strided", "dilated"])
def test_receptive_field_of_agrees_with_the_gradients(dilated):
    from torchvision.models import resnet50

    torch.manual_seed(0)
    backbone = resnet50(weights=None, replace_stride_with_dilation=[dilated, False, False])
    truncated = torch.nn.Sequential(
        *[getattr(backbone, n) for n in ("conv1", "bn1", "relu", "maxpool", "layer1", "layer2")]
    )
    analytic = arch.receptive_field_of(truncated)
    assert analytic.global_pools == []
    assert analytic.local == empirical_receptive_field(truncated, size=161, samples=4)


def test_upsampling_variants_against_plain_references():
    torch.manual_seed(0)
    coarse = torch.randn(1, 4, 5, 6)
    variants = arch.upsampling_variants(coarse, (40, 48))
    blocks = coarse.argmax(1)[0].repeat_interleave(8, 0).repeat_interleave(8, 1)
    assert torch.equal(variants["nearest"], blocks)
    own = F.interpolate(coarse, size=(40, 48), mode="bilinear", align_corners=False).argmax(1)[0]
    assert torch.equal(variants["model's own"], own)
    assert (variants["bilinear probabilities"] != variants["nearest"]).any()


def test_upsampling_disagreement_lies_at_the_boundary():
    coarse = torch.zeros(1, 2, 2, 2)
    coarse[0, 1, :, 1] = 1.0  # right half class 1: all three paths agree except near the middle
    result = arch.upsampling_disagreement(coarse, (16, 16), width=8)
    assert result["nearest"]["share"] > 0 and result["nearest"]["in_band"] == 1.0
    # The model's own boundary lies between columns 3 and 4, nearest's between 7 and 8: a band of one pixel
    # around the former holds only part of the columns where they disagree.
    narrow = arch.upsampling_disagreement(coarse, (16, 16), width=1)
    assert 0 < narrow["nearest"]["in_band"] < 1 and narrow["band"]["share"] < result["band"]["share"]


def test_busiest_box_finds_the_dense_corner():
    changed = torch.zeros(64, 64, dtype=torch.bool)
    changed[40:56, 44:60] = True
    top, left, height, width = arch.busiest_box(changed, 16)
    assert (height, width) == (16, 16) and changed[top : top + 16, left : left + 16].sum() >= 0.75 * 256


# ---------------------------------------------------------------- photographs


def test_photographs_load_from_scikit_images_files():
    import skimage.data

    references = {
        "astronaut": skimage.data.astronaut(),
        "chelsea": skimage.data.chelsea(),
        "coffee": skimage.data.coffee(),
        "camera": np.repeat(skimage.data.camera()[..., None], 3, axis=2),
    }  # greyscale, read as RGB
    assert set(PHOTOS) == set(references)
    for name, reference in references.items():
        photo = load_photo(name)
        assert photo.dtype == torch.float32 and photo.shape == (3, *reference.shape[:2])
        assert torch.equal((photo * 255).round().to(torch.uint8).permute(1, 2, 0), torch.from_numpy(reference)), name
        assert PHOTOS[name].credit and PHOTOS[name].licence


def test_read_image_refuses_what_is_no_image(tmp_path):
    with pytest.raises(FileNotFoundError, match="no image file"):
        read_image(tmp_path / "absent.png")
    (tmp_path / "text.png").write_text("hello")
    with pytest.raises(ValueError, match="not an image"):
        read_image(tmp_path / "text.png")


# ---------------------------------------------------------------- command line


def test_weights_fetch_without_network_fails_clearly(tmp_path):
    # An unreachable local proxy stands for "no network", whatever this machine can reach.
    proxy = "http://127.0.0.1:9"
    result = run_cli(
        "weights",
        "fetch",
        "lraspp_mobilenet_v3_large",
        "--quiet",
        env={"TORCH_HOME": str(tmp_path), "https_proxy": proxy, "HTTPS_PROXY": proxy, "no_proxy": "", "NO_PROXY": ""},
    )
    assert result.returncode == 1, result.stderr
    assert "segutils weights fetch: error: could not download the weights of lraspp_mobilenet_v3_large" in result.stderr
    assert "Traceback" not in result.stderr
    assert not any((tmp_path / "hub" / "checkpoints").glob("*.pth")), "no partial weights file is left behind"


def test_weights_list_and_unknown_model(tmp_path):
    result = run_cli("weights", "list", env={"TORCH_HOME": str(tmp_path)})
    assert result.returncode == 0 and result.stdout.count("missing") == 3
    result = run_cli("weights", "fetch", "fcn_resnet18", env={"TORCH_HOME": str(tmp_path)})
    assert result.returncode == 2 and "invalid choice: 'fcn_resnet18'" in result.stderr


def test_segment_without_weights_names_the_fetch_command(tmp_path):
    import skimage.data

    result = run_cli(
        "segment",
        str(Path(skimage.data.data_dir) / "chelsea.png"),
        "--out",
        str(tmp_path / "o.png"),
        env={"TORCH_HOME": str(tmp_path)},
    )
    assert result.returncode == 1 and "segutils weights fetch fcn_resnet50" in result.stderr
    assert "Traceback" not in result.stderr and not (tmp_path / "o.png").exists()


def test_segment_writes_an_overlay_of_the_photographs_size(weights_home, tmp_path):
    import skimage.data

    photo = Path(skimage.data.data_dir) / "chelsea.png"
    out = tmp_path / "overlay.png"
    result = run_cli(
        "segment",
        str(photo),
        "--model",
        "lraspp_mobilenet_v3_large",
        "--out",
        str(out),
        "--device",
        "cpu",
        env={"TORCH_HOME": str(weights_home)},
    )
    assert result.returncode == 0, result.stderr
    assert "segmented in" in result.stdout and "wrote" in result.stdout
    with Image.open(out) as written, Image.open(photo) as original:
        assert written.size == original.size == (451, 300) and written.mode == "RGB"


def test_voc_training_data_from_a_tiny_devkit(tmp_path):
    from segutils.cli_pretrained import voc_training_data

    train, val = voc_training_data(write_tiny_voc(tmp_path), 24)
    for dataset in (train, val):
        image, mask = dataset[0]
        assert image.shape == (3, 24, 24) and image.dtype == torch.float32 and mask.shape == (24, 24)
        assert set(mask.unique().tolist()) <= {0, 15, 255}, "masks are resampled by nearest neighbour"
    assert 15 in val[0][1].unique().tolist()


@pytest.mark.slow
def test_train_on_voc_from_the_command_line(tmp_path):
    root = write_tiny_voc(tmp_path / "voc")
    checkpoint = tmp_path / "plain.pt"
    result = run_cli(
        "train",
        "--data",
        "voc",
        "--voc-root",
        str(root),
        "--model",
        "plain",
        "--epochs",
        "1",
        "--image-size",
        "24",
        "--batch-size",
        "2",
        "--workers",
        "0",
        "--device",
        "cpu",
        "--checkpoint",
        str(checkpoint),
    )
    assert result.returncode == 0, result.stderr
    assert '"val_mean_iou"' in result.stdout
    state = torch.load(checkpoint, weights_only=True)["model"]
    assert next(v for k, v in state.items() if k.endswith("weight") and v.ndim == 4 and v.shape[0] == 21) is not None


@pytest.mark.slow
def test_fine_tune_a_pretrained_network_on_voc(weights_home, tmp_path):
    root = write_tiny_voc(tmp_path / "voc", count=2)
    result = run_cli(
        "train",
        "--data",
        "voc",
        "--voc-root",
        str(root),
        "--model",
        "lraspp_mobilenet_v3_large",
        "--epochs",
        "1",
        "--image-size",
        "32",
        "--batch-size",
        "2",
        "--workers",
        "0",
        "--device",
        "cpu",
        env={"TORCH_HOME": str(weights_home)},
    )
    assert result.returncode == 0, result.stderr
    assert "training lraspp_mobilenet_v3_large" in result.stdout and '"val_mean_iou"' in result.stdout


def test_train_refuses_bad_voc_arguments(tmp_path):
    result = run_cli("train", "--data", "voc", "--model", "plain")
    assert result.returncode == 2 and "--data voc needs --voc-root PATH" in result.stderr
    result = run_cli("train", "--data", "voc", "--voc-root", str(tmp_path), "--model", "plain")
    assert result.returncode == 1 and "PASCAL VOC 2012 was not found" in result.stderr
    result = run_cli("train", "--model", "fcn_resnet50")
    assert result.returncode == 2 and "use --data voc" in result.stderr
