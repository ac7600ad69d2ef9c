"""segutils.zoo: trained models are cached, reused, and retrained only when their code changes."""

from __future__ import annotations

import pytest
import torch

from segutils import zoo
from segutils.zoo import TrainingConfig, trained_model

TINY = TrainingConfig(image_size=16, train_size=8, val_size=4, batch_size=4, epochs=1)


def test_fingerprint_ignores_docstrings_and_comments_but_not_code():
    base = zoo._code_fingerprint(
        '"""Module."""\nX: int = 1\n"""About X."""\n\ndef f(x):\n    """Doc."""\n    return x  # c\n'
    )
    reworded = zoo._code_fingerprint(
        '"""Other."""\nX: int = 1\n"""Reworded."""\n\ndef f(x):\n    """New doc."""\n    return x\n'
    )
    changed = zoo._code_fingerprint('"""Module."""\nX: int = 1\n\ndef f(x):\n    """Doc."""\n    return x + 1\n')
    assert base == reworded
    assert base != changed


def test_trained_model_is_cached_and_reused(tmp_path, monkeypatch):
    monkeypatch.setenv(zoo.CACHE_ENV_VAR, str(tmp_path))
    first, history = trained_model("plain", TINY, progress=False, channels=4, num_layers=1)
    assert len(list(tmp_path.glob("plain-*.pt"))) == 1
    assert len(history["train_loss"]) == TINY.epochs

    def no_training(*args, **kwargs):
        raise AssertionError("a cached model was trained again")

    monkeypatch.setattr(zoo, "fit", no_training)
    second, second_history = trained_model("plain", TINY, progress=False, channels=4, num_layers=1)
    assert second_history == history
    for (name, a), (_, b) in zip(first.state_dict().items(), second.state_dict().items()):
        torch.testing.assert_close(a, b, msg=f"cached weights differ in {name}")
    assert not second.training


def test_other_arguments_or_code_train_a_new_model(tmp_path, monkeypatch):
    monkeypatch.setenv(zoo.CACHE_ENV_VAR, str(tmp_path))
    trained_model("plain", TINY, progress=False, channels=4, num_layers=1)
    trained_model("plain", TINY, progress=False, channels=4, num_layers=2)
    assert len(list(tmp_path.glob("plain-*.pt"))) == 2
    monkeypatch.setattr(zoo, "_source_digest", lambda: "changed code")
    trained_model("plain", TINY, progress=False, channels=4, num_layers=1)
    assert len(list(tmp_path.glob("plain-*.pt"))) == 3


def test_random_upsampling_init_replaces_only_the_bilinear_kernels(tmp_path, monkeypatch):
    from torch import nn

    from segutils.models import bilinear_kernel

    monkeypatch.setenv(zoo.CACHE_ENV_VAR, str(tmp_path))
    monkeypatch.setattr(zoo, "fit", lambda *args, **kwargs: {"train_loss": []})  # the initial weights are kept
    bilinear, _ = trained_model("fcn", TINY, progress=False, skips=2)
    random, _ = trained_model("fcn", TINY, progress=False, skips=2, random_upsampling_init=True)
    assert len(list(tmp_path.glob("fcn-*.pt"))) == 2  # two cache entries
    ups = [(a, b) for a, b in zip(bilinear.modules(), random.modules()) if isinstance(a, nn.ConvTranspose2d)]
    assert len(ups) == 3
    for a, b in ups:
        torch.testing.assert_close(a.weight, bilinear_kernel(a.in_channels, a.stride[0]))
        bound = 1 / (a.out_channels * a.kernel_size[0] * a.kernel_size[1]) ** 0.5  # PyTorch's default (Kaiming)
        assert b.weight.abs().max() <= bound < a.weight.abs().max() and b.weight.std() > bound / 4
    others = [(n, p) for n, p in random.named_parameters() if not n.startswith("ups.")]
    for name, value in others:  # every other layer as the bilinear model has it
        torch.testing.assert_close(value, dict(bilinear.named_parameters())[name], msg=name)
    with torch.no_grad():
        assert not torch.equal(bilinear(torch.rand(1, 3, 16, 16)), random(torch.rand(1, 3, 16, 16)))
    with pytest.raises(ValueError, match="no ConvTranspose2d"):
        trained_model("plain", TINY, progress=False, random_upsampling_init=True)


def test_loaders_hold_exactly_the_shapes_dataset_samples():
    config = TrainingConfig(image_size=16, train_size=6, val_size=3, batch_size=6, outline_detail=1.0)
    train, val = zoo.loaders(config)
    expected = zoo.ShapesDataset("train", size=6, image_size=16, seed=0, outline_detail=1.0)
    images, masks = next(iter(zoo.DataLoader(train.dataset, batch_size=6)))
    want_images, want_masks = expected.batch(range(6))
    assert torch.equal(images, want_images) and torch.equal(masks, want_masks)
    assert len(val.dataset) == 3
    assert zoo.rendered("train", 6, 16, 0, 1.0) is zoo.rendered("train", 6, 16, 0, 1.0)  # rendered once


def test_warm_models_finds_literal_calls_configs_and_seed_loops():
    import importlib.util
    from pathlib import Path

    path = Path(__file__).resolve().parents[1] / "book" / "_ext" / "warm_models.py"
    spec = importlib.util.spec_from_file_location("warm_models", path)
    warm = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(warm)
    source = (
        "a = trained_model('plain', progress=False)\n"
        "for seed in (0, 1):\n"
        "    runs = [trained_model('fcn', TrainingConfig(seed=seed, epochs=6), skips=k) for k in [0, 2]]\n"
        "u = trained_model('unet', config=TrainingConfig(seed=3))\n"
        "skipped = [trained_model('fcn', config), trained_model('fcn', TrainingConfig(seed=s)),\n"
        "           trained_model('fcn', **kw)]\n"
    )
    calls = warm.literal_calls(source)
    expected = (
        [("plain", {})]
        + [("fcn", {"skips": k, "__config__": {"seed": seed, "epochs": 6}}) for seed in (0, 1) for k in (0, 2)]
        + [("unet", {"__config__": {"seed": 3}})]
    )
    assert sorted(map(repr, calls)) == sorted(map(repr, expected))
    assert warm.literal_calls("%timeit x\n") == []
