"""The grading benchmark (quick mode: 4 a1 submissions) runs both graders and they agree on every score.

Its speed is reported, not asserted (test machines are shared); agreement with nbgrader is asserted.
"""

from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]

pytestmark = [
    pytest.mark.slow,
    pytest.mark.xdist_group("grading"),
    pytest.mark.skipif(
        not (REPO / "solutions" / "a1_sliding_window" / "a1_sliding_window.ipynb").is_file(),
        reason="solutions/a1_sliding_window is not in this checkout",
    ),
]


def test_grading_benchmark_agrees_with_nbgrader_and_reports_speed():
    from benchmarks import bench_grading

    rows = bench_grading.run(quick=True)
    nbgrader_row, two_process, in_process = rows
    assert "--two-process" in two_process["case"] and "--in-process" in in_process["case"]
    for row in (two_process, in_process):
        assert nbgrader_row["submissions"] == row["submissions"] == 4
        assert row["identical_scores"], f"{row['case']}: {row['differences']}"
        assert row["ratio"] > 0 and row["overhead_s_per_submission"] > 0 and row["load_1min"]
        assert row["job_s_per_submission"] > row["overhead_s_per_submission"]
    assert two_process["vs_in_process"] > 0
    assert two_process["two_process_adds_s"] == pytest.approx(
        two_process["job_s_per_submission"] - in_process["job_s_per_submission"]
    )
    print(
        f"\nsegutils grade --workers 2 vs nbgrader autograde: two-process {two_process['ratio']:.2f}x, "
        f"in-process {in_process['ratio']:.2f}x; overhead {two_process['overhead_s_per_submission']:.1f} vs "
        f"{in_process['overhead_s_per_submission']:.1f} s/submission (load {two_process['load_1min']})"
    )
