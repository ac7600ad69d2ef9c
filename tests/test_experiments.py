"""The experiments the chapters draw their conclusions from, at the book's own settings.

The models come from :func:`segutils.zoo.trained_model` with the chapters' arguments, so these
tests read the code-keyed cache that the book build fills (and train, for minutes, when it is
cold). They assert what the text states, with its margin.
"""
from __future__ import annotations

import json

import nbformat
import pytest
import torch

from glue_claims import contradictions
from segutils.data import ShapesDataset
from segutils.metrics import BoundaryFScore, ConfusionMatrix
from segutils.models import sliding_window_logits, window_classifier
from segutils.zoo import TrainingConfig, trained_model

#: Chapter 4 calls the window CNN "above" the all-background predictor: at least this much mIoU more.
WINDOW_MARGIN = 0.05


def _test_split(n: int = 256) -> tuple[torch.Tensor, torch.Tensor]:
    config = TrainingConfig()
    return ShapesDataset("test", size=n, image_size=config.image_size, seed=config.seed).batch(range(n))


@pytest.mark.slow
def test_window_cnn_segments_and_its_sliding_window_gives_the_same_logits():
    torch.set_num_threads(2)
    model, _ = trained_model("patch_cnn", progress=False)          # chapter 4's call
    images, masks = _test_split()
    trained, background = ConfusionMatrix(5), ConfusionMatrix(5)
    with torch.no_grad():
        for i in range(0, len(images), 64):
            trained.update(model(images[i:i + 64]), masks[i:i + 64])
            background.update(torch.zeros_like(masks[i:i + 64]), masks[i:i + 64])
    gain = trained.compute()["mean_iou"].item() - background.compute()["mean_iou"].item()
    assert gain > WINDOW_MARGIN, f"window CNN beats all-background by only {gain:.3f} mIoU"
    assert window_classifier(model).patch_size == 31
    with torch.no_grad():
        sliding = sliding_window_logits(window_classifier(model), images[:1], chunk_size=256)
        torch.testing.assert_close(sliding, model(images[:1]), atol=1e-4, rtol=1e-4)


@pytest.mark.slow
def test_chapter_7_skips_place_edges_better_and_name_shapes_worse_beyond_the_seed_spread():
    """Chapter 7's finding, recomputed from its six FCN runs (cached by the book build).

    The text states, from three seeds per model: skips raise the object-against-background
    boundary F-score (tolerance 1 pixel) and lower the shape accuracy, each by more than the
    larger range over seeds of the two models; and the zero-initialised skip layers opened.
    """
    torch.set_num_threads(2)
    config = TrainingConfig()
    images, masks = _test_split()
    full = ShapesDataset("test", size=256, image_size=config.image_size, seed=config.seed,
                         ignore_boundary=False).batch(range(256))[1]
    boundary, shape, ratios = {}, {}, []
    for seed in (0, 1, 2):
        for name, kwargs in [("noskip", {"skips": False}), ("skip", {})]:
            model, _ = trained_model("fcn", TrainingConfig(seed=seed), progress=False, **kwargs)
            with torch.no_grad():
                pred = torch.cat([model(images[i:i + 64]).argmax(1) for i in range(0, len(images), 64)])
            metric = BoundaryFScore(2, tolerance=1)
            metric.update((pred != 0).long(), (full != 0).long())
            boundary[name, seed] = metric.compute()["f_per_class"][1].item()
            found = (masks != 0) & (masks != 255) & (pred != 0)
            shape[name, seed] = (pred[found] == masks[found]).float().mean().item()
            if name == "skip":
                ratios.append(sum(l.weight.norm().item() for l in model.skip_scores) / len(model.skip_scores)
                              / model.score.weight.norm().item())

    def gain_and_spread(values):
        runs = {n: [values[n, s] for s in (0, 1, 2)] for n in ("noskip", "skip")}
        gain = sum(runs["skip"]) / 3 - sum(runs["noskip"]) / 3
        return gain, max(max(v) - min(v) for v in runs.values())

    gain, spread = gain_and_spread(boundary)
    assert gain > spread, f"skips change the object boundary F by {gain:+.3f}, seed spread {spread:.3f}"
    gain, spread = gain_and_spread(shape)
    assert gain < -spread, f"skips change the shape accuracy by {gain:+.3f}, seed spread {spread:.3f}"
    assert min(ratios) > 0.05, f"skip layers stayed near zero: weight norm ratios {ratios}"


def _notebook_with(glued: dict[str, object]) -> nbformat.NotebookNode:
    cell = nbformat.v4.new_code_cell("")
    cell.outputs = [nbformat.v4.new_output("display_data", data={"application/papermill.record/text/plain": repr(v)},
                                           metadata={"scrapbook": {"name": k, "mime_prefix": "application/papermill.record/"}})
                    for k, v in glued.items()]
    notebook = nbformat.v4.new_notebook()
    notebook.cells = [cell]
    return notebook


def test_glue_claims_catches_a_sentence_its_numbers_contradict(tmp_path):
    """Positive and negative controls for the built-book check of tests/test_book.py."""
    path = tmp_path / "ch4.ipynb"
    nbformat.write(_notebook_with({"patch_verdict": "far above", "patch_gain": 0.35,
                                   "plain_verdict": "barely above", "plain_gain": 0.02}), path)
    assert contradictions("04_fully_convolutional", path) == []
    nbformat.write(_notebook_with({"patch_verdict": "far above", "patch_gain": 0.0,
                                   "plain_verdict": "barely above", "plain_gain": 0.02}), path)
    assert len(contradictions("04_fully_convolutional", path)) == 1
    values = {}
    for what, column in [("miou", "mIoU"), ("edge", "edge_mIoU"), ("bf", "object_boundary_F"), ("shape", "shape_accuracy")]:
        values |= {f"ch7_skip_{what}_words": "raise it", f"ch7_skip_diff_{column}": 0.03, f"ch7_skip_spread_{column}": 0.01}
    values |= {"ch7_unet_miou_words": "is worse than", "ch7_unet_diff_mIoU": -0.05, "ch7_unet_spread_mIoU": 0.02,
               "ch7_unet_bf_words": "no differently, beyond", "ch7_unet_diff_object_boundary_F": 0.01,
               "ch7_unet_spread_object_boundary_F": 0.02, "ch7_object_iou": 0.8, "ch7_class_miou": 0.6,
               "ch7_find_vs_name": "better than", "ch7_chance_words": "smaller than the difference",
               "ch7_skip_class_effect": "here they even help to name the shape",
               "ch7_dominance_words": "that decision, not the placement of edges, dominates the errors"}
    path = tmp_path / "ch7.ipynb"
    nbformat.write(_notebook_with(values), path)
    assert contradictions("07_encoder_decoder", path) == []
    # A gain smaller than the seed spread must not be called a rise.
    nbformat.write(_notebook_with(values | {"ch7_skip_diff_mIoU": 0.005}), path)
    assert [p for p in contradictions("07_encoder_decoder", path) if "ch7_skip_miou_words" in p]
    nbformat.write(_notebook_with(values | {"ch7_class_miou": 0.85}), path)  # "better than" would now be false
    assert len(contradictions("07_encoder_decoder", path)) == 2
    nbformat.write(_notebook_with({"ch8_rho_words": "a larger receptive field tends to go with", "ch8_rho": 0.9}), path)
    assert contradictions("08_putting_it_together", path)
    assert json.dumps(contradictions("08_putting_it_together", tmp_path / "ch4.ipynb")).count("missing") == 1
