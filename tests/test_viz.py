import matplotlib

matplotlib.use("Agg")

import pytest
import torch
from matplotlib.figure import Figure

from segutils.data import PALETTE, ShapesDataset
from segutils.viz import overlay, plot_confusion_matrix, plot_history, plot_receptive_field, show_samples


@pytest.fixture(scope="module")
def batch():
    return ShapesDataset(size=3, image_size=24).batch(range(3))


def test_show_samples_draws_one_column_per_sample_and_a_row_per_kind(batch):
    images, masks = batch
    fig = show_samples(images, masks, torch.randn(3, 5, 24, 24))
    assert isinstance(fig, Figure)
    assert len(fig.axes) == 3 * 3
    assert len(fig.legends[0].get_texts()) == 6  # five classes + ignore
    with pytest.raises(ValueError, match=r"\(N, C, H, W\)"):
        show_samples(images[0], masks)


def test_overlay_blends_class_colours_over_objects_only():
    image = torch.full((3, 2, 2), 0.5)
    mask = torch.tensor([[0, 1], [2, 255]])
    out = overlay(image, mask, alpha=0.5)
    assert out.dtype == torch.uint8 and out.shape == (3, 2, 2)
    grey = round(0.5 * 255)
    assert out[:, 0, 0].tolist() == [grey] * 3
    assert out[:, 1, 1].tolist() == [grey] * 3
    expected = ((PALETTE[1].float() + grey) / 2).tolist()
    assert out[:, 0, 1].float().tolist() == pytest.approx(expected, abs=1)


def test_history_and_confusion_and_receptive_field_plots():
    history = {
        "epoch": [1, 2],
        "train_loss": [1.0, 0.5],
        "val_loss": [1.1, 0.7],
        "train_mean_iou": [0.1, 0.3],
        "val_mean_iou": [0.1, 0.2],
    }
    fig = plot_history(history)
    assert len(fig.axes) == 2 and len(fig.axes[0].lines) == 2
    assert fig.axes[1].get_ylabel() == "mean iou"
    conf = torch.randint(0, 100, (5, 5))
    fig = plot_confusion_matrix(conf)
    assert fig.axes[0].get_xlabel() == "prediction" and len(fig.axes[0].texts) == 25
    with pytest.raises(ValueError, match=r"\(5, 5\)"):
        plot_confusion_matrix(torch.zeros(3, 3))
    assert isinstance(plot_receptive_field(torch.rand(9, 9), "plain"), Figure)
    with pytest.raises(ValueError, match=r"\(H, W\)"):
        plot_receptive_field(torch.rand(1, 9, 9))
