"""Glued words against glued numbers: a chapter's verdict words must follow its measurements.

The chapters glue a word ("raise", "far above", ...) chosen by a rule from measured values,
and glue the values too. :func:`contradictions` reads both from an executed notebook and
re-applies each rule, written here independently of the chapters' code, so a sentence can
never claim an improvement that the numbers next to it contradict.
"""

from __future__ import annotations

import ast
from collections.abc import Callable
from pathlib import Path

import nbformat

GLUE_PREFIX = "application/papermill.record/"


def glued_values(path: Path) -> dict[str, object]:
    """``{name: value}`` of every ``glue(...)`` in an executed notebook (text/plain, parsed as a literal)."""
    values: dict[str, object] = {}
    for cell in nbformat.read(path, as_version=4).cells:
        for output in cell.get("outputs", []):
            scrap = output.get("metadata", {}).get("scrapbook")
            if not scrap:
                continue
            data = output.get("data", {})
            text = data.get(scrap.get("mime_prefix", "") + "text/plain", data.get(GLUE_PREFIX + "text/plain"))
            try:
                values[scrap["name"]] = ast.literal_eval(text)
            except (ValueError, SyntaxError, TypeError):
                values[scrap["name"]] = text
    return values


def _beyond(diff: float, spread: float, words: dict[str, str]) -> str:
    return words["up"] if diff > spread else words["down"] if diff < -spread else words["same"]


def _larger(gap: float, spread: float) -> str:
    """Whether a gap between means (either sign) is larger than the spread between seeds."""
    return "larger than" if abs(gap) > spread else "not larger than"


def _versus_background(gain: float) -> str:
    return (
        "no better than" if gain < 0.005 else "barely above" if gain < 0.05 else "above" if gain < 0.2 else "far above"
    )


CH7_RAISE = {"up": "raise", "down": "lower", "same": "do not change"}
CH7_THAN = {"up": "higher than", "down": "lower than", "same": "no different"}

#: chapter -> list of (words key, the value keys, rule giving the words the values allow).
RULES: dict[str, list[tuple[str, tuple[str, ...], Callable[..., str]]]] = {
    "04_fully_convolutional": [
        ("patch_verdict", ("patch_gain",), _versus_background),
        ("plain_verdict", ("plain_gain",), _versus_background),
        ("patch_seed_words", ("patch_seed_gain", "patch_seed_spread"), _larger),
        ("plain_seed_words", ("plain_seed_gain", "plain_seed_spread"), _larger),
    ],
    "08_encoder_decoder": [
        (
            f"ch8_skip_{what}_words",
            (f"ch8_skip_diff_{column}", f"ch8_skip_spread_{column}"),
            lambda d, s: _beyond(d, s, CH7_RAISE),
        )
        for what, column in [
            ("miou", "mIoU"),
            ("edge", "edge_mIoU"),
            ("bf", "object_boundary_F"),
            ("shape", "shape_accuracy"),
        ]
    ]
    + [
        (
            f"ch8_{pair}_{what}_words",
            (f"ch8_{pair}_diff_{column}", f"ch8_{pair}_spread_{column}"),
            lambda d, s: _beyond(d, s, CH7_THAN),
        )
        for pair in ("skip1", "skip2", "unet")
        for what, column in [("bf", "object_boundary_F"), ("edge", "edge_mIoU"), ("miou", "mIoU")]
    ],
    "09_putting_it_together": [
        (
            "ch9_rho_words",
            ("ch9_rho",),
            lambda rho: (
                "the larger the receptive field"
                if rho > 0.7
                else "a larger receptive field tends"
                if rho > 0.3
                else "the receptive field alone does not"
            ),
        ),
    ],
}


def _number_or_name(value: object) -> float | str:
    """A glued number as a float; a glued name (a model's, say) as it is."""
    return value if isinstance(value, str) else float(value)  # type: ignore[arg-type]


def contradictions(chapter: str, path: Path) -> list[str]:
    """Every glued verdict of ``chapter`` that does not start with what its numbers allow."""
    values = glued_values(path)
    problems = []
    for words_key, value_keys, rule in RULES[chapter]:
        missing = [k for k in (words_key, *value_keys) if k not in values]
        if missing:
            problems.append(f"{chapter}: glue keys missing: {missing}")
            continue
        expected = rule(*(_number_or_name(values[k]) for k in value_keys))
        if not str(values[words_key]).startswith(expected):
            problems.append(
                f"{chapter}: {words_key} = {values[words_key]!r}, but "
                f"{dict((k, values[k]) for k in value_keys)} allow only {expected!r}"
            )
    return problems


RULES["08_encoder_decoder"] += [
    (
        "ch8_find_vs_name",
        ("ch8_object_iou", "ch8_class_miou"),
        lambda o, c: "better than" if o > c else "no better than",
    ),
    (
        "ch8_dominance_words",
        ("ch8_object_iou", "ch8_class_miou"),
        lambda o, c: (
            "that decision, not the placement of edges, dominates" if o - c > 0.1 else "finding the objects and"
        ),
    ),
]

RULES["08_encoder_decoder"] += [
    (
        "ch8_chance_words",
        ("ch8_skip_spread_object_boundary_F", "ch8_skip_diff_object_boundary_F"),
        lambda spread, diff: "as large as" if spread >= abs(diff) else "smaller than",
    ),
    (
        "ch8_skip_class_effect",
        ("ch8_skip_diff_shape_accuracy", "ch8_skip_spread_shape_accuracy"),
        lambda d, s: _beyond(
            d, s, {"up": "here they even help", "down": "adding their local evidence", "same": "here they leave"}
        ),
    ),
]

RULES["08_encoder_decoder"] += [
    (
        "ch8_plateau_words",
        ("ch8_at_cap",),
        lambda n: "every run stopped at a plateau" if n == 0 else f"{int(n)} of the",
    ),
]

#: Chapter 8's upsampling study: each alternative against the bilinear-initialised transposed convolutions.
UPSAMPLING_VARIANTS = ("random", "bilinear", "nearest")
UPSAMPLING_FINAL_SCORES = ("miou", "edge", "bf")


def _upsampling_summary(*diffs_and_spreads: float) -> str:
    pairs = zip(diffs_and_spreads[::2], diffs_and_spreads[1::2])
    differing = sum(abs(diff) > spread for diff, spread in pairs)
    return "None of the three" if differing == 0 else f"{differing} of the nine"


RULES["08_encoder_decoder"] += [
    (
        f"ch8_up_{variant}_{what}_words",
        (f"ch8_up_{variant}_diff_{what}", f"ch8_up_{variant}_spread_{what}"),
        lambda d, s: _beyond(d, s, CH7_THAN),
    )
    for variant in UPSAMPLING_VARIANTS
    for what in (*UPSAMPLING_FINAL_SCORES, "first", "epochs")
] + [
    (
        "ch8_up_summary",
        tuple(
            f"ch8_up_{variant}_{kind}_{what}"
            for variant in UPSAMPLING_VARIANTS
            for what in UPSAMPLING_FINAL_SCORES
            for kind in ("diff", "spread")
        ),
        _upsampling_summary,
    )
]

RULES["05_dilated_convolution"] = [
    (
        "ch5_verdict",
        ("ch5_gain",),
        lambda g: (
            "a large improvement on"
            if g >= 0.1
            else "an improvement on"
            if g >= 0.02
            else "about the same as"
            if g > -0.02
            else "worse than"
        ),
    ),
    (
        "ch5_seed_verdict",
        ("ch5_seed_gain", "ch5_seed_spread"),
        _larger,
    ),
    (
        "ch5_noise_note",
        ("ch5_seed_gain", "ch5_seed_spread"),
        lambda g, s: "Since nothing but" if abs(g) > s else "So these runs",
    ),
]

RULES["08_encoder_decoder"] += [
    (
        "ch8_wave_vs_cell",
        ("ch8_wave_max", "ch8_cell_side"),
        lambda period, side: "shorter than" if period < side else "no longer than" if period == side else "longer than",
    ),
    (
        "ch8_pa_vs_miou_words",
        ("ch8_pa_span", "ch8_miou_span"),
        lambda pa, miou: "varies less than mIoU" if pa < miou else "varies no less than mIoU",
    ),
]

RULES["09_putting_it_together"] += [
    (
        "ch9_rf_cover_words",
        ("ch9_plain_rf", "ch9_object_extent"),
        lambda rf, extent: "covers" if rf >= extent else "is smaller than",
    ),
    (
        "ch9_best_is_fastest",
        ("ch9_best", "ch9_fastest"),
        lambda best, fastest: "is also" if best == fastest else "is not",
    ),
    (
        "ch9_cheapest_is_fastest",
        ("ch9_cheapest", "ch9_fastest"),
        lambda cheapest, fastest: "is also" if cheapest == fastest else "is not",
    ),
    (
        "ch9_cheapest_vs_best",
        ("ch9_cheapest", "ch9_best"),
        lambda cheapest, best: "is also the most accurate" if cheapest == best else "spends",
    ),
]


def _than(diff: float, spread: float) -> str:
    return _beyond(diff, spread, CH7_THAN)


#: Chapter 8's test of its explanation: the skips with tinted objects, and the conclusion drawn from both studies.
RULES["08_encoder_decoder"] += [
    ("ch8_tint_bf_words", ("ch8_tint_diff_bf", "ch8_tint_spread_bf"), _than),
    *[
        (f"ch8_tint_{key}_bf_words", (f"ch8_tint_{key}_diff_bf", f"ch8_tint_{key}_spread_bf"), _than)
        for key in ("skip1", "skip2", "unet")
    ],
    (
        "ch8_tint_conclusion",
        (
            "ch8_tint_diff_bf",
            "ch8_tint_spread_bf",
            "ch8_skip_diff_object_boundary_F",
            "ch8_skip_spread_object_boundary_F",
        ),
        lambda d, s, untinted_d, untinted_s: (
            "So the explanation holds" if d > s and not untinted_d > untinted_s else "The cue does not"
        ),
    ),
]
