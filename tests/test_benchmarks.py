"""The benchmarks run (quick mode) and report what they promise; their speed is not asserted here."""

import math

import pytest

from benchmarks import bench_metrics, bench_sliding_window, bench_training

pytestmark = pytest.mark.slow


def test_sliding_window_benchmark_reports_agreement_speedup_and_flop_ratio():
    rows = bench_sliding_window.run(quick=True)
    assert rows
    for row in rows:
        assert row["max_abs_diff"] < 1e-4
        assert row["ratio"] > 0 and "flop_ratio" in row


def test_metrics_benchmark_compares_with_torchmetrics():
    rows = bench_metrics.run(quick=True)
    cases = " ".join(row["case"] for row in rows)
    assert "torchmetrics" in cases and "segutils" in cases
    assert all(row["ratio"] > 0 for row in rows if "ratio" in row)


def test_training_benchmark_has_one_row_per_model_family():
    from segutils.models import MODEL_NAMES

    rows = bench_training.run(quick=True)
    assert sorted(row["case"].split(" to ")[0] for row in rows) == sorted(MODEL_NAMES)
    assert all(row["seconds"] > 0 and (row["reached"] or math.isinf(row["seconds"])) for row in rows)


def test_channels_last_benchmark_times_both_formats_of_every_family_and_their_logits_agree():
    from benchmarks import bench_channels_last

    rows = bench_channels_last.run(quick=True)
    assert [row["case"].split()[0] for row in rows] == [name for name, _, _ in bench_channels_last.CASES]
    for row in rows:
        assert row["contiguous_s"] > 0 and row["channels_last_s"] > 0
        assert row["ratio"] == row["contiguous_s"] / row["channels_last_s"]
        assert row["max_abs_diff"] < 1e-2  # the same arithmetic in another order (BatchNorm in train mode)
