"""segutils.zoo: trained models are cached, reused, and retrained only when their code changes."""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
import time
from dataclasses import replace
from pathlib import Path

import pytest
import torch

from segutils import zoo
from segutils.zoo import TrainingConfig, trained_model

TINY = TrainingConfig(image_size=16, train_size=8, val_size=4, batch_size=4, epochs=1)
BOOK = Path(__file__).resolve().parents[1] / "book"


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


def test_source_digest_follows_code_edits_within_one_process(tmp_path, monkeypatch):
    """The digest is computed once per state of the files (it is asked for at every model), yet a code edit
    made while the process runs still changes it, and a comment edit still does not."""
    for name in ("data/shapes.py", "models/net.py", "train.py", "metrics.py"):
        (tmp_path / name).parent.mkdir(exist_ok=True)
        (tmp_path / name).write_text("x = 1\n")
    monkeypatch.setattr(zoo, "__file__", str(tmp_path / "zoo.py"))
    before = zoo._source_digest()
    assert zoo._source_digest() == before
    (tmp_path / "train.py").write_text("x = 1  # a comment\n")
    assert zoo._source_digest() == before
    (tmp_path / "models" / "net.py").write_text("x = 2\n")
    assert zoo._source_digest() != before


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


# A process that asks trained_model for TINY's "plain" model and prints its weights' sum. zoo.fit is wrapped: it
# writes "training" to argv[1] and, when argv[2] is "hold", waits for the file argv[3] before it trains; a wait
# for zoo's lock writes "waiting" to argv[1] + ".lock" first.
_TRAIN_IN_A_PROCESS = """
import sys, time
from pathlib import Path
from segutils import zoo

real_fit = zoo.fit

def fit(*args, **kwargs):
    Path(sys.argv[1]).write_text("training")
    while sys.argv[2] == "hold" and not Path(sys.argv[3]).exists():
        time.sleep(0.05)
    return real_fit(*args, **kwargs)

class NoisyLock(zoo.FileLock):
    def acquire(self, *args, **kwargs):
        Path(sys.argv[1] + ".lock").write_text("waiting")
        return super().acquire(*args, **kwargs)

zoo.fit, zoo.FileLock = fit, NoisyLock
tiny = zoo.TrainingConfig(image_size=16, train_size=8, val_size=4, batch_size=4, epochs=1)
model, _ = zoo.trained_model("plain", tiny, progress=False, channels=4, num_layers=1)
print(sum(float(p.sum()) for p in model.state_dict().values()))
"""


def test_a_model_wanted_by_two_processes_at_once_is_trained_once(tmp_path):
    """The second process waits for the first one's checkpoint instead of training the same model beside it."""
    env = {**os.environ, zoo.CACHE_ENV_VAR: str(tmp_path / "cache")}
    first_mark, second_mark, release = tmp_path / "first", tmp_path / "second", tmp_path / "release"
    command = [sys.executable, "-c", _TRAIN_IN_A_PROCESS]
    deadline = time.monotonic() + 120

    def wait_for(mark: Path, process: subprocess.Popen, failure: str) -> None:
        while not mark.exists():
            assert process.poll() is None and time.monotonic() < deadline, failure
            time.sleep(0.05)

    first = subprocess.Popen([*command, str(first_mark), "hold", str(release)], env=env, stdout=subprocess.PIPE)
    second = None
    try:
        # The first process is in fit, holding the lock, its checkpoint not yet written.
        wait_for(first_mark, first, "the first process never started training")
        second = subprocess.Popen([*command, str(second_mark), "go", ""], env=env, stdout=subprocess.PIPE)
        wait_for(Path(f"{second_mark}.lock"), second, "the second process never asked for the lock")
        time.sleep(0.5)
        assert second.poll() is None, "the second process did not wait for the first one's checkpoint"
        release.touch()
        outputs = [process.communicate(timeout=120)[0] for process in (first, second)]
    finally:
        for process in (first, second):
            if process is not None and process.poll() is None:
                process.kill()
    assert [first.returncode, second.returncode] == [0, 0]
    assert not second_mark.exists(), "the second process trained the model the first one was training"
    assert outputs[0] == outputs[1] and outputs[0].strip()
    assert list((tmp_path / "cache").glob("*.tmp")) == []


def test_training_uses_the_same_thread_count_and_memory_format_in_every_process(tmp_path, monkeypatch):
    monkeypatch.setenv(zoo.CACHE_ENV_VAR, str(tmp_path))
    seen = []
    monkeypatch.setattr(
        zoo, "fit", lambda *args, **kwargs: seen.append((torch.get_num_threads(), kwargs["channels_last"])) or {}
    )
    caller = torch.get_num_threads()
    other = 1 if zoo.TRAINING_THREADS != 1 else 3  # the caller's count differs, so the check can fail
    torch.set_num_threads(other)
    try:
        trained_model("plain", TINY, progress=False, channels=4, num_layers=1)
        assert seen == [(zoo.TRAINING_THREADS, zoo.TRAINING_CHANNELS_LAST)]
        assert torch.get_num_threads() == other  # the caller's setting is back
    finally:
        torch.set_num_threads(caller)


def test_tint_objects_adds_to_the_red_channel_of_object_pixels_only():
    images = torch.full((1, 3, 2, 2), 0.5)
    images[0, 0, 1, 1] = 0.9
    objects = torch.tensor([[[True, False], [False, True]]])
    tinted = zoo.tint_objects(images, objects, 0.25)
    assert tinted[0, 0].tolist() == [[0.75, 0.5], [0.5, 1.0]]  # 0.9 + 0.25 clipped to 1
    assert torch.equal(tinted[:, 1:], images[:, 1:]) and images[0, 0, 0, 0] == 0.5  # green, blue, input untouched
    with pytest.raises(ValueError, match=r"objects \(N, H, W\)"):
        zoo.tint_objects(images, objects[0], 0.25)


def test_a_tinted_configuration_trains_its_own_model(tmp_path, monkeypatch):
    monkeypatch.setenv(zoo.CACHE_ENV_VAR, str(tmp_path))
    monkeypatch.setattr(zoo, "fit", lambda *args, **kwargs: {})
    trained_model("plain", TINY, progress=False, channels=4, num_layers=1)
    trained_model("plain", replace(TINY, object_tint=0.3), progress=False, channels=4, num_layers=1)
    assert len(list(tmp_path.glob("plain-*.pt"))) == 2
    assert not torch.equal(zoo.rendered("train", 8, 16, 0, 0.0, 0.3)[0], zoo.rendered("train", 8, 16, 0, 0.0, 0.0)[0])


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


def _warm_models():
    """book/_ext/warm_models.py as a module (it is a script, not part of the package)."""
    spec = importlib.util.spec_from_file_location("warm_models", BOOK / "_ext" / "warm_models.py")
    warm = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(warm)
    return warm


def test_warm_models_finds_literal_calls_configs_and_seed_loops():
    warm = _warm_models()
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
    # A configuration named once and varied with dataclasses.replace, in the cell or an earlier one.
    earlier = "study = TrainingConfig(image_size=32, epochs=30)\n"
    later = (
        "for seed in (0, 1):\n"
        "    trained_model('fcn', replace(study, seed=seed), skips=0)\n"
        "tinted = replace(study, object_tint=0.25)\n"
        "trained_model('fcn', replace(tinted, seed=2), skips=2)\n"
        "study = replace(study, seed=9)\n"  # a second assignment: study is no longer one configuration here
    )
    base = {"image_size": 32, "epochs": 30}
    found = warm.literal_calls(later, warm.config_assignments(earlier))
    assert sorted(map(repr, found)) == sorted(
        map(
            repr,
            [
                ("fcn", {"skips": 0, "__config__": {**base, "seed": 0}}),
                ("fcn", {"skips": 0, "__config__": {**base, "seed": 1}}),
                ("fcn", {"skips": 2, "__config__": {**base, "object_tint": 0.25, "seed": 2}}),
            ],
        )
    )
    assert warm.literal_calls("trained_model('fcn', replace(unknown, seed=1))\n") == []


def test_checkpoint_path_is_where_trained_model_saves_and_depends_on_threads_and_memory_format(tmp_path, monkeypatch):
    monkeypatch.setenv(zoo.CACHE_ENV_VAR, str(tmp_path))
    path = zoo.checkpoint_path("plain", TINY, channels=4, num_layers=1)
    assert not path.exists()
    trained_model("plain", TINY, progress=False, channels=4, num_layers=1)
    assert path.is_file() and list(tmp_path.glob("*.pt")) == [path]
    assert zoo.checkpoint_path("plain", TINY, channels=4, num_layers=2) != path
    # Weights differ with the thread count, so a checkpoint trained with another count is not reused.
    monkeypatch.setattr(zoo, "TRAINING_THREADS", zoo.TRAINING_THREADS + 1)
    assert zoo.checkpoint_path("plain", TINY, channels=4, num_layers=1) != path
    monkeypatch.undo()
    monkeypatch.setenv(zoo.CACHE_ENV_VAR, str(tmp_path))
    assert zoo.checkpoint_path("plain", TINY, channels=4, num_layers=1) == path
    # so do they with the memory format
    monkeypatch.setattr(zoo, "TRAINING_CHANNELS_LAST", not zoo.TRAINING_CHANNELS_LAST)
    assert zoo.checkpoint_path("plain", TINY, channels=4, num_layers=1) != path


def test_warm_models_trains_the_missing_models_side_by_side_and_skips_cached_ones(tmp_path, monkeypatch, capsys):
    """main() trains every model a chapter names, each once (two calls name the same model), in worker processes,
    and then has nothing left to train."""
    import nbformat

    warm = _warm_models()
    monkeypatch.setenv(zoo.CACHE_ENV_VAR, str(tmp_path / "cache"))
    monkeypatch.setattr(warm, "training_processes", lambda: 2)
    tiny = "TrainingConfig(image_size=16, train_size=8, val_size=4, batch_size=4, epochs=1)"
    chapter = nbformat.v4.new_notebook()
    chapter.cells = [
        nbformat.v4.new_code_cell(f"trained_model('plain', {tiny}, channels=4, num_layers={n})") for n in (1, 2)
    ] + [nbformat.v4.new_code_cell(f"trained_model('plain', replace({tiny}, seed=0), channels=4, num_layers=1)")]
    nbformat.write(chapter, tmp_path / "chapter.ipynb")
    assert warm.main([str(tmp_path / "chapter.ipynb")]) == 0
    first = capsys.readouterr().out
    assert "2 to train" in first and "training 2 at once" in first and first.count("trained in") == 2
    for layers in (1, 2):
        assert zoo.checkpoint_path("plain", TINY, channels=4, num_layers=layers).is_file()
    assert warm.main([str(tmp_path / "chapter.ipynb")]) == 0
    again = capsys.readouterr().out
    assert "0 to train" in again and "trained in" not in again


def test_warm_models_trains_the_models_of_one_data_configuration_in_a_row():
    warm = _warm_models()
    seed = {s: {"__config__": {"image_size": 32, "seed": s}} for s in (0, 1)}
    calls = [("fcn", {"skips": 0, **seed[0]}), ("fcn", {"skips": 0, **seed[1]}), ("unet", seed[0]), ("unet", seed[1])]
    assert warm.grouped_by_data(calls) == [calls[0], calls[2], calls[1], calls[3]]
    tinted = {"__config__": {"image_size": 32, "seed": 0, "object_tint": 0.4}}
    assert warm.grouped_by_data([("fcn", seed[0]), ("fcn", tinted), ("unet", seed[0])]) == [
        ("fcn", seed[0]),
        ("unet", seed[0]),
        ("fcn", tinted),
    ]
    book = warm.book_models(sorted(BOOK.glob("*.ipynb")))
    grouped = warm.grouped_by_data(book)
    assert sorted(map(repr, grouped)) == sorted(map(repr, book))  # the same calls
    data = [warm._arguments(kwargs)[0] for _, kwargs in grouped]
    keys = [(c.image_size, c.train_size, c.val_size, c.seed, c.outline_detail, c.object_tint) for c in data]
    runs = [k for i, k in enumerate(keys) if i == 0 or k != keys[i - 1]]
    assert len(runs) == len(set(keys)) > 1  # every configuration in one run of calls
