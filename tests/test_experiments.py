"""The experiments the chapters draw their conclusions from, at the book's own settings.

The models come from :func:`segutils.zoo.trained_model` with the chapters' arguments, so these
tests read the code-keyed cache that the book build fills (and train, for minutes, when it is
cold). They assert what the text states, with its margin.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

import nbformat
import pytest
import torch
from glue_claims import RULES, UPSAMPLING_FINAL_SCORES, UPSAMPLING_VARIANTS, contradictions

from segutils.data import ShapesDataset
from segutils.metrics import BoundaryFScore, ConfusionMatrix
from segutils.models import sliding_window_logits, window_classifier
from segutils.zoo import TrainingConfig, tint_objects, trained_model

BOOK = Path(__file__).resolve().parents[1] / "book"

#: Chapter 4's window CNN beats the all-background predictor by at least this much mIoU (mean of its three seeds).
WINDOW_MARGIN = 0.05


def _test_split(n: int = 256) -> tuple[torch.Tensor, torch.Tensor]:
    config = TrainingConfig()
    return ShapesDataset("test", size=n, image_size=config.image_size, seed=config.seed).batch(range(n))


@pytest.mark.slow
def test_window_cnn_segments_and_its_sliding_window_gives_the_same_logits():
    """Chapter 4's window CNN beats the all-background predictor, averaged over its three seeds, by more than
    WINDOW_MARGIN and by more than the spread between the seeds."""
    torch.set_num_threads(2)
    images, masks = _test_split()
    background = ConfusionMatrix(5)
    for i in range(0, len(images), 64):
        background.update(torch.zeros_like(masks[i : i + 64]), masks[i : i + 64])
    mious = []
    for seed in (0, 1, 2):  # chapter 4's calls
        model, _ = trained_model("patch_cnn", TrainingConfig(seed=seed), progress=False)
        trained = ConfusionMatrix(5)
        with torch.no_grad():
            for i in range(0, len(images), 64):
                trained.update(model(images[i : i + 64]), masks[i : i + 64])
        mious.append(trained.compute()["mean_iou"].item())
    gain, spread = sum(mious) / 3 - background.compute()["mean_iou"].item(), max(mious) - min(mious)
    assert gain > max(WINDOW_MARGIN, spread), f"window CNN: {gain:+.3f} mIoU over all-background, seeds {mious}"
    assert window_classifier(model).patch_size == 31
    with torch.no_grad():
        sliding = sliding_window_logits(window_classifier(model), images[:1], chunk_size=256)
        torch.testing.assert_close(sliding, model(images[:1]), atol=1e-4, rtol=1e-4)


def _book_calls(chapter: str) -> list[tuple[str, dict]]:
    """The ``trained_model`` calls of a chapter as ``book/_ext/warm_models.py`` finds them (the book's own training)."""
    spec = importlib.util.spec_from_file_location("warm_models", BOOK / "_ext" / "warm_models.py")
    warm = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(warm)
    return warm.book_models([BOOK / f"{chapter}.ipynb"])


def _chapter_8_runs(tinted: bool = False) -> dict[tuple[str, int], tuple[torch.nn.Module, TrainingConfig]]:
    """(name, seed) -> (model, config) for chapter 8's FCN-8s/4s/2s and U-Net runs of its main study (or of its
    study with tinted objects), from the cache; the upsampling variants are left out."""
    labels = {("fcn", 0): "FCN-8s", ("fcn", 1): "FCN-4s", ("fcn", 2): "FCN-2s", ("unet", None): "U-Net"}
    runs = {}
    for name, kwargs in _book_calls("08_encoder_decoder"):
        kwargs = dict(kwargs)
        config = TrainingConfig(**kwargs.pop("__config__", {}))
        if {"upsample", "random_upsampling_init"} & set(kwargs) or bool(config.object_tint) != tinted:
            continue
        label = labels[name, kwargs.get("skips")]
        assert (label, config.seed) not in runs, f"two runs of chapter 8 are {label}, seed {config.seed}"
        runs[label, config.seed] = (trained_model(name, config, progress=False, **kwargs)[0], config)
    return runs


def _boundary_f(model: torch.nn.Module, images: torch.Tensor, objects: torch.Tensor) -> float:
    """Chapter 8's object boundary F-score (tolerance 1 px) of ``model`` on ``images`` against ``objects``."""
    with torch.no_grad():
        found = torch.cat([model(images[i : i + 64]).argmax(1) != 0 for i in range(0, len(images), 64)])
    metric = BoundaryFScore(2, tolerance=1)
    metric.update(found.long(), objects.long())
    return metric.compute()["f_per_class"][1].item()


def _skip_gain_and_spread(runs, images, objects) -> tuple[float, float, dict]:
    """FCN-2s's mean boundary F minus FCN-8s's over seeds 0-2, the larger range over seeds, and every score."""
    boundary = {(label, seed): _boundary_f(model, images, objects) for (label, seed), (model, _) in runs.items()}
    per_model = {label: [boundary[label, s] for s in (0, 1, 2)] for label in ("FCN-8s", "FCN-2s")}
    gain = sum(per_model["FCN-2s"]) / 3 - sum(per_model["FCN-8s"]) / 3
    return gain, max(max(v) - min(v) for v in per_model.values()), boundary


def _chapter_8_test_split(config: TrainingConfig) -> tuple[torch.Tensor, torch.Tensor]:
    """The chapter's test images and object masks (majority label, no ignore band)."""
    test = dict(size=256, image_size=config.image_size, seed=0, outline_detail=config.outline_detail)
    images = ShapesDataset("test", **test).batch(range(256))[0]
    return images, ShapesDataset("test", ignore_boundary=False, **test).batch(range(256))[1] != 0


@pytest.mark.slow
def test_chapter_8_skips_sharpen_edges_once_a_few_pixels_show_the_objects():
    """Chapter 8's test of its explanation: with objects tinted (a cue shallow features see), FCN-2s raises
    FCN-8s's object boundary F-score by more than the larger range over the three seeds."""
    torch.set_num_threads(2)
    runs = _chapter_8_runs(tinted=True)
    assert sorted(runs) == sorted((n, s) for n in ("FCN-8s", "FCN-4s", "FCN-2s", "U-Net") for s in (0, 1, 2))
    config = runs["FCN-8s", 0][1]
    assert config.object_tint > 0 and config.outline_detail > 0 and config.patience is not None
    images, objects = _chapter_8_test_split(config)
    gain, spread, boundary = _skip_gain_and_spread(runs, tint_objects(images, objects, config.object_tint), objects)
    assert gain > spread, f"FCN-2s changes the object boundary F by {gain:+.3f}, seed spread {spread:.3f}: {boundary}"


@pytest.mark.slow
def test_chapter_8_main_study_skips_stay_within_the_seed_spread_as_the_text_explains():
    """Chapter 8's main study, recomputed from the models its own calls train (cached by the build).

    The issue's design (outlines with detail finer than the coarsest stride, training to a plateau, three
    seeds per model) on the untinted scenes: FCN-2s does not beat FCN-8s in object boundary F beyond the
    seed spread. The chapter's fixed prose rests on this ("What decides whether the skips show" explains
    it; "If the skips gain nothing here ..." opens the tinted test), so it is asserted, not expected to
    fail. Its positive control is the tinted test above: the same measurement and margin, which finds the
    gain once a few pixels show the objects.
    """
    torch.set_num_threads(2)
    runs = _chapter_8_runs()
    assert sorted(runs) == sorted((n, s) for n in ("FCN-8s", "FCN-4s", "FCN-2s", "U-Net") for s in (0, 1, 2))
    config = runs["FCN-8s", 0][1]
    assert config.outline_detail > 0 and config.patience is not None, "the book's settings are not the issue's design"
    assert not config.object_tint
    gain, spread, boundary = _skip_gain_and_spread(runs, *_chapter_8_test_split(config))
    assert gain <= spread, (
        f"FCN-2s changes the object boundary F by {gain:+.3f}, beyond the seed spread {spread:.3f}: chapter 8's "
        f"explanation of why the skips do not show on untinted scenes no longer holds, rewrite it: {boundary}"
    )


def _notebook_with(glued: dict[str, object]) -> nbformat.NotebookNode:
    cell = nbformat.v4.new_code_cell("")
    cell.outputs = [
        nbformat.v4.new_output(
            "display_data",
            data={"application/papermill.record/text/plain": repr(v)},
            metadata={"scrapbook": {"name": k, "mime_prefix": "application/papermill.record/"}},
        )
        for k, v in glued.items()
    ]
    notebook = nbformat.v4.new_notebook()
    notebook.cells = [cell]
    return notebook


def test_glue_claims_catches_a_sentence_its_numbers_contradict(tmp_path):
    """Positive and negative controls for the built-book check of tests/test_book.py."""
    path = tmp_path / "ch4.ipynb"
    ch4 = {
        **{"patch_verdict": "far above", "patch_gain": 0.35, "plain_verdict": "barely above", "plain_gain": 0.02},
        **{"patch_seed_words": "larger than", "patch_seed_gain": 0.3, "patch_seed_spread": 0.05},
        **{"plain_seed_words": "not larger than", "plain_seed_gain": 0.01, "plain_seed_spread": 0.02},
    }
    nbformat.write(_notebook_with(ch4), path)
    assert contradictions("04_fully_convolutional", path) == []
    nbformat.write(_notebook_with({**ch4, "patch_gain": 0.0}), path)
    assert len(contradictions("04_fully_convolutional", path)) == 1
    # A gain over the background within the seed spread is "not larger than" it, whatever seed 0 says.
    nbformat.write(_notebook_with({**ch4, "patch_seed_gain": 0.04}), path)
    assert [p for p in contradictions("04_fully_convolutional", path) if "patch_seed_words" in p]
    nbformat.write(_notebook_with({**ch4, "plain_seed_gain": 0.03}), path)
    assert [p for p in contradictions("04_fully_convolutional", path) if "plain_seed_words" in p]
    values = {"ch8_at_cap": 0, "ch8_plateau_words": "every run stopped at a plateau before the cap"}
    for what, column in [
        ("miou", "mIoU"),
        ("edge", "edge_mIoU"),
        ("bf", "object_boundary_F"),
        ("shape", "shape_accuracy"),
    ]:
        values |= {
            f"ch8_skip_{what}_words": "raise it",
            f"ch8_skip_diff_{column}": 0.03,
            f"ch8_skip_spread_{column}": 0.01,
        }
    for pair, words, diff in [
        ("skip1", "higher than", 0.05),
        ("skip2", "no different, beyond", 0.0),
        ("unet", "lower than", -0.05),
    ]:
        for what, column in [("bf", "object_boundary_F"), ("edge", "edge_mIoU"), ("miou", "mIoU")]:
            values |= {
                f"ch8_{pair}_{what}_words": words,
                f"ch8_{pair}_diff_{column}": diff,
                f"ch8_{pair}_spread_{column}": 0.02,
            }
    values |= {
        "ch8_object_iou": 0.8,
        "ch8_class_miou": 0.6,
        "ch8_find_vs_name": "better than",
        "ch8_chance_words": "smaller than the difference",
        "ch8_skip_class_effect": "here they even help to name the shape",
        "ch8_dominance_words": "that decision, not the placement of edges, dominates the errors",
        "ch8_wave_max": 12,
        "ch8_cell_side": 8,
        "ch8_wave_vs_cell": "longer than",
        "ch8_pa_span": 0.02,
        "ch8_miou_span": 0.1,
        "ch8_pa_vs_miou_words": "varies less than mIoU: the background",
        "ch8_up_summary": "None of the three alternatives differs",
        "ch8_tint_bf_words": "higher than",
        "ch8_tint_diff_bf": 0.1,
        "ch8_tint_spread_bf": 0.03,
        "ch8_tint_conclusion": "The cue does not separate the two cases",  # the untinted skips rise too, above
    }
    for key, words, diff in [
        ("skip1", "higher than", 0.1),
        ("skip2", "no different, beyond", 0.0),
        ("unet", "lower than", -1.0),
    ]:
        values |= {
            f"ch8_tint_{key}_bf_words": words,
            f"ch8_tint_{key}_diff_bf": diff,
            f"ch8_tint_{key}_spread_bf": 0.05,
        }
    for variant in UPSAMPLING_VARIANTS:
        for what in (*UPSAMPLING_FINAL_SCORES, "first", "epochs"):
            values |= {
                f"ch8_up_{variant}_{what}_words": "no different, beyond the seed spread, from",
                f"ch8_up_{variant}_diff_{what}": 0.01,
                f"ch8_up_{variant}_spread_{what}": 0.02,
            }
    path = tmp_path / "ch7.ipynb"
    nbformat.write(_notebook_with(values), path)
    assert contradictions("08_encoder_decoder", path) == []
    # A gain smaller than the seed spread must not be called a rise.
    nbformat.write(_notebook_with(values | {"ch8_skip_diff_mIoU": 0.005}), path)
    assert [p for p in contradictions("08_encoder_decoder", path) if "ch8_skip_miou_words" in p]
    nbformat.write(_notebook_with(values | {"ch8_class_miou": 0.85}), path)  # "better than" would now be false
    assert len(contradictions("08_encoder_decoder", path)) == 2
    nbformat.write(_notebook_with(values | {"ch8_skip2_diff_object_boundary_F": 0.03}), path)  # beyond the spread
    assert [p for p in contradictions("08_encoder_decoder", path) if "ch8_skip2_bf_words" in p]
    nbformat.write(_notebook_with(values | {"ch8_cell_side": 16}), path)  # a wave shorter than the cell now
    assert [p for p in contradictions("08_encoder_decoder", path) if "ch8_wave_vs_cell" in p]
    nbformat.write(_notebook_with(values | {"ch8_pa_span": 0.2}), path)
    assert [p for p in contradictions("08_encoder_decoder", path) if "ch8_pa_vs_miou_words" in p]
    nbformat.write(_notebook_with(values | {"ch8_at_cap": 2}), path)
    assert [p for p in contradictions("08_encoder_decoder", path) if "ch8_plateau_words" in p]
    # An alternative upsampling that scores beyond the seed spread must not be called no different, nor the
    # summary say that none differs.
    nbformat.write(_notebook_with(values | {"ch8_up_nearest_diff_bf": -0.05}), path)
    problems = contradictions("08_encoder_decoder", path)
    assert sorted(p.split(" = ")[0] for p in problems) == [
        "08_encoder_decoder: ch8_up_nearest_bf_words",
        "08_encoder_decoder: ch8_up_summary",
    ]
    # The tinted study: a gain within the spread is no rise, and the conclusion follows both studies.
    nbformat.write(_notebook_with(values | {"ch8_tint_diff_bf": 0.02}), path)
    problems = contradictions("08_encoder_decoder", path)
    assert sorted(p.split(" = ")[0] for p in problems) == ["08_encoder_decoder: ch8_tint_bf_words"]
    nbformat.write(_notebook_with(values | {"ch8_tint_unet_diff_bf": 0.0}), path)
    assert [p.split(" = ")[0] for p in contradictions("08_encoder_decoder", path)] == [
        "08_encoder_decoder: ch8_tint_unet_bf_words"
    ]
    nbformat.write(_notebook_with(values | {"ch8_skip_diff_object_boundary_F": 0.0}), path)  # untinted: no gain
    problems = contradictions("08_encoder_decoder", path)
    assert "08_encoder_decoder: ch8_tint_conclusion" in [p.split(" = ")[0] for p in problems]
    nbformat.write(_notebook_with({"ch9_rho_words": "a larger receptive field tends to go with", "ch9_rho": 0.9}), path)
    assert contradictions("09_putting_it_together", path)
    missing = contradictions("09_putting_it_together", tmp_path / "ch4.ipynb")
    assert len(missing) == len(RULES["09_putting_it_together"]) and all("missing" in p for p in missing)
    # Words chosen by comparing glued names or two glued numbers: one control of each kind.
    ch8 = {
        "ch9_rho": 0.9,
        "ch9_rho_words": "the larger the receptive field, the better",
        "ch9_plain_rf": 21,
        "ch9_object_extent": 14.0,
        "ch9_rf_cover_words": "covers",
        "ch9_best": "U-Net",
        "ch9_fastest": "plain FCN",
        "ch9_cheapest": "plain FCN",
        "ch9_best_is_fastest": "is not",
        "ch9_cheapest_is_fastest": "is also",
        "ch9_cheapest_vs_best": "spends 3.10 times fewer FLOPs than U-Net",
    }
    nbformat.write(_notebook_with(ch8), path)
    assert contradictions("09_putting_it_together", path) == []
    for change, words_key in [
        ({"ch9_fastest": "U-Net"}, "ch9_best_is_fastest"),
        ({"ch9_object_extent": 30.0}, "ch9_rf_cover_words"),
        ({"ch9_cheapest": "U-Net"}, "ch9_cheapest_vs_best"),
    ]:
        nbformat.write(_notebook_with(ch8 | change), path)
        assert [p for p in contradictions("09_putting_it_together", path) if words_key in p], change


def test_warm_models_finds_the_calls_of_a_config_assigned_in_an_earlier_cell():
    """Chapters 8 and 9 name their TrainingConfig once (``study = TrainingConfig(...)``); warm_models must
    still train exactly those runs, with the loop's seed, and skip names it cannot evaluate."""
    spec = importlib.util.spec_from_file_location("warm_models", BOOK / "_ext" / "warm_models.py")
    warm = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(warm)
    source = (
        "for seed in (0, 1):\n"
        "    study = TrainingConfig(epochs=3, seed=seed)\n"
        "    trained_model('fcn', study, skips=2)\n"
        "trained_model('unet', earlier)\n"
        "trained_model('unet', unknown)\n"
    )
    calls = warm.literal_calls(source, warm.config_assignments("earlier = TrainingConfig(image_size=32)"))
    assert sorted(map(repr, calls)) == sorted(
        map(
            repr,
            [
                ("fcn", {"skips": 2, "__config__": {"epochs": 3, "seed": 0}}),
                ("fcn", {"skips": 2, "__config__": {"epochs": 3, "seed": 1}}),
                ("unet", {"__config__": {"image_size": 32}}),
            ],
        )
    )
    assert warm.literal_calls("trained_model('unet', earlier)") == []  # not assigned: left to its cell
    twice = "c = TrainingConfig(seed=1)\nc = TrainingConfig(seed=2)\ntrained_model('unet', c)\n"
    assert warm.literal_calls(twice) == []  # ambiguous: left to its cell
    found = warm.book_models([BOOK / "08_encoder_decoder.ipynb", BOOK / "09_putting_it_together.ipynb"])
    assert len({(name, repr(sorted(kw.items()))) for name, kw in found}) >= 12
