"""segutils.train: fit, evaluate, checkpoints."""

import pytest
import torch
from torch import nn
from torch.nn import functional as F
from torch.utils.data import DataLoader, TensorDataset
from torchmetrics.classification import MulticlassAccuracy, MulticlassJaccardIndex

from segutils.data import IGNORE_INDEX, ShapesDataset
from segutils.models import PlainFCN
from segutils.train import evaluate, fit, load_checkpoint, save_checkpoint, train_one_epoch


def tiny_loaders(n: int = 16, size: int = 16, batch_size: int = 8):
    train = ShapesDataset("train", size=n, image_size=size)
    val = ShapesDataset("val", size=8, image_size=size)
    return DataLoader(train, batch_size=batch_size, shuffle=True), DataLoader(val, batch_size=4)


def tiny_model() -> nn.Module:
    torch.manual_seed(0)
    return PlainFCN(3, 5, channels=8, num_layers=2)


def test_fit_returns_one_history_entry_per_epoch_and_learns():
    train, val = tiny_loaders()
    history = fit(tiny_model(), train, val, epochs=4, lr=1e-2, device="cpu", progress=False)
    assert history["epoch"] == [1, 2, 3, 4]
    for key in (
        "train_loss",
        "train_pixel_accuracy",
        "train_mean_iou",
        "val_loss",
        "val_pixel_accuracy",
        "val_mean_iou",
        "seconds",
    ):
        assert len(history[key]) == 4, key
    assert history["train_loss"][-1] < history["train_loss"][0]
    assert all(0 <= v <= 1 for v in history["val_mean_iou"])


def test_fit_on_cpu_repeats_exactly_with_the_same_seed():
    runs = []
    for _ in range(2):
        model = tiny_model()
        train, _ = tiny_loaders()
        history = fit(model, train, epochs=2, lr=1e-2, device="cpu", seed=3, progress=False)
        runs.append((history["train_loss"], [p.detach().clone() for p in model.parameters()]))
    assert runs[0][0] == runs[1][0]
    assert all(torch.equal(a, b) for a, b in zip(runs[0][1], runs[1][1]))


def test_fit_trains_channels_last_and_gives_the_model_back_contiguous():
    formats = []

    def record(epoch, model, history):
        formats.append(model.features[0].weight.is_contiguous(memory_format=torch.channels_last))

    train, val = tiny_loaders()
    runs = {}
    for channels_last in (True, False):
        model = tiny_model()
        history = fit(
            model,
            train,
            val,
            epochs=2,
            lr=1e-2,
            device="cpu",
            progress=False,
            callback=record,
            channels_last=channels_last,
        )
        runs[channels_last] = (model, history)
    assert formats == [True, True, False, False]  # during training, with and without
    weights = {k: [p for p in runs[k][0].parameters() if p.dim() == 4] for k in runs}
    assert weights[True] and all(p.is_contiguous() for p in weights[True])  # given back as it came
    # the same arithmetic in another order: the same training up to float rounding
    for key in ("train_loss", "val_loss"):
        assert runs[True][1][key] == pytest.approx(runs[False][1][key], rel=1e-3), key
    for a, b in zip(runs[True][0].parameters(), runs[False][0].parameters()):
        torch.testing.assert_close(a, b, atol=1e-3, rtol=1e-3)


def test_evaluate_gives_the_same_metrics_with_channels_last_images():
    _, val = tiny_loaders()
    model = tiny_model().eval()
    plain = evaluate(model, val, 5, device="cpu")
    nhwc = evaluate(model.to(memory_format=torch.channels_last), val, 5, device="cpu", channels_last=True)
    assert nhwc["loss"] == pytest.approx(plain["loss"], rel=1e-5)
    assert torch.equal(nhwc["confusion_matrix"], plain["confusion_matrix"])


def test_fit_with_cpu_autocast_runs():
    train, _ = tiny_loaders(n=8)
    history = fit(tiny_model(), train, epochs=1, device="cpu", amp=True, progress=False)
    assert torch.isfinite(torch.tensor(history["train_loss"])).all()


def test_evaluate_matches_torchmetrics_and_cross_entropy():
    torch.manual_seed(0)
    model = tiny_model().eval()
    images, masks = ShapesDataset("val", size=12, image_size=20).batch(range(12))
    loader = DataLoader(TensorDataset(images, masks), batch_size=5)
    result = evaluate(model, loader, num_classes=5, device="cpu")
    with torch.no_grad():
        logits = model(images)
    jaccard = MulticlassJaccardIndex(5, average="macro", ignore_index=IGNORE_INDEX)
    accuracy = MulticlassAccuracy(5, average="micro", ignore_index=IGNORE_INDEX)
    assert result["mean_iou"] == pytest.approx(jaccard(logits.argmax(1), masks).item(), abs=1e-6)
    assert result["pixel_accuracy"] == pytest.approx(accuracy(logits.argmax(1), masks).item(), abs=1e-6)
    expected_loss = F.cross_entropy(logits, masks, ignore_index=IGNORE_INDEX).item()
    assert result["loss"] == pytest.approx(expected_loss, rel=1e-5)
    assert (
        result["confusion_matrix"].shape == (5, 5) and result["confusion_matrix"].sum() == (masks != IGNORE_INDEX).sum()
    )


def test_bad_batches_and_options_are_named():
    model = tiny_model()
    images = torch.rand(2, 3, 8, 8)
    with pytest.raises(ValueError, match=r"images \(N, C, H, W\) and masks \(N, H, W\)"):
        fit(model, [(images, torch.zeros(2, 1, 8, 8, dtype=torch.long))], epochs=1, progress=False)
    with pytest.raises(TypeError, match="integer class ids"):
        fit(model, [(images, torch.zeros(2, 8, 8))], epochs=1, progress=False)
    with pytest.raises(ValueError, match="amp"):
        fit(model, [(images, torch.zeros(2, 8, 8, dtype=torch.long))], epochs=1, amp="yes", progress=False)
    with pytest.raises(ValueError, match="num_classes=4"):
        evaluate(model, [(images, torch.zeros(2, 8, 8, dtype=torch.long))], num_classes=4, device="cpu")
    with pytest.raises(ValueError, match="no batch"):
        fit(model, [], epochs=1, progress=False)


def test_checkpoint_round_trip_restores_weights_optimizer_and_extras(tmp_path):
    model = tiny_model()
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    model(torch.rand(1, 3, 8, 8)).sum().backward()
    optimizer.step()
    path = save_checkpoint(tmp_path / "sub" / "ckpt.pt", model, optimizer, model_name="plain", history={"a": [1.0]})
    other = PlainFCN(3, 5, channels=8, num_layers=2)
    other_optimizer = torch.optim.AdamW(other.parameters(), lr=1e-3)
    state = load_checkpoint(path, other, other_optimizer)
    assert state["extra"] == {"model_name": "plain", "history": {"a": [1.0]}}
    assert all(torch.equal(a, b) for a, b in zip(model.state_dict().values(), other.state_dict().values()))
    assert other_optimizer.state_dict()["state"].keys() == optimizer.state_dict()["state"].keys()


def test_missing_checkpoint_is_named(tmp_path):
    with pytest.raises(FileNotFoundError, match="no checkpoint"):
        load_checkpoint(tmp_path / "nope.pt")


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_training_with_amp_and_checkpoint_that_loads_on_cpu(tmp_path):
    train, val = tiny_loaders()
    model = tiny_model()
    history = fit(model, train, val, epochs=1, device="cuda", progress=False)
    assert next(model.parameters()).is_cuda and torch.isfinite(torch.tensor(history["train_loss"])).all()
    path = save_checkpoint(tmp_path / "gpu.pt", model)
    cpu_model = PlainFCN(3, 5, channels=8, num_layers=2)
    load_checkpoint(path, cpu_model, map_location="cpu")
    assert all(p.device.type == "cpu" for p in cpu_model.parameters())


def test_callback_sees_every_epoch_and_can_stop_training():
    seen = []

    def callback(epoch, model, history):
        seen.append((epoch, len(history["train_loss"]), model.training))
        return epoch == 2

    train, _ = tiny_loaders(n=8)
    history = fit(tiny_model(), train, epochs=5, device="cpu", progress=False, callback=callback)
    assert seen == [(1, 1, True), (2, 2, True)]
    assert history["epoch"] == [1, 2]


def test_fit_is_train_one_epoch_then_evaluate():
    """fit's history equals what the two parts give when called by hand (same seed, same schedule-free steps)."""
    train, val = tiny_loaders()
    history = fit(
        tiny_model(),
        train,
        val,
        epochs=2,
        lr=1e-2,
        device="cpu",
        seed=5,
        patience=5,
        progress=False,
        channels_last=True,
    )
    torch.manual_seed(5)
    model = tiny_model()
    model.to(memory_format=torch.channels_last)  # as fit with channels_last=True trains
    torch.manual_seed(5)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2, weight_decay=1e-4)
    for epoch in range(2):
        step = train_one_epoch(model, train, optimizer, device="cpu", channels_last=True)
        assert step["loss"] == pytest.approx(history["train_loss"][epoch], rel=1e-6)
        assert step["mean_iou"] == pytest.approx(history["train_mean_iou"][epoch], rel=1e-6)
        val_loss = evaluate(model, val, 5, device="cpu", channels_last=True)["loss"]
        assert val_loss == pytest.approx(history["val_loss"][epoch], rel=1e-6)
    assert not model.training or step["num_classes"] == 5


def test_train_one_epoch_steps_the_scheduler_per_batch_and_rejects_an_empty_loader():
    train, _ = tiny_loaders(n=16, batch_size=4)  # 4 batches
    model = tiny_model()
    optimizer = torch.optim.SGD(model.parameters(), lr=1.0)
    scheduler = torch.optim.lr_scheduler.StepLR(optimizer, step_size=1, gamma=0.5)
    train_one_epoch(model, train, optimizer, scheduler=scheduler, device="cpu")
    assert optimizer.param_groups[0]["lr"] == pytest.approx(0.5**4)
    with pytest.raises(ValueError, match="no batch"):
        train_one_epoch(model, [], optimizer, device="cpu")


def test_patience_trains_to_a_plateau_drops_the_rate_once_and_keeps_the_best_weights():
    train, val = tiny_loaders()
    model = tiny_model()
    history = fit(model, train, val, epochs=60, lr=3e-2, device="cpu", patience=2, progress=False)
    losses, lrs, best = history["val_loss"], history["lr"], history["best_epoch"][0]
    assert len(history["epoch"]) < 60, "a tiny model on 16 images should plateau well before the cap"
    assert losses[best - 1] == min(losses)
    assert sorted(set(lrs), reverse=True) == pytest.approx([3e-2, 3e-3]) and lrs == sorted(lrs, reverse=True)
    # stopped exactly when the loss had not improved for `patience` epochs after the drop
    dropped_at = lrs.index(min(lrs))
    assert min(losses[-2:]) >= min(losses[:-2]) and len(losses) - dropped_at >= 2
    # the model holds the best epoch's weights: evaluating it gives the best validation loss
    assert evaluate(model, val, 5, device="cpu")["loss"] == pytest.approx(min(losses), rel=1e-5)


def test_patience_needs_validation_data_and_a_positive_int():
    train, val = tiny_loaders(n=8)
    with pytest.raises(ValueError, match="patience needs a val_loader"):
        fit(tiny_model(), train, epochs=2, patience=2, progress=False)
    with pytest.raises(ValueError, match="patience should be None or an int >= 1"):
        fit(tiny_model(), train, val, epochs=2, patience=0, progress=False)
