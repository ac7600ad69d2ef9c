"""The grading benchmark (quick mode: 4 a1 submissions) runs both graders and they agree on every score.

Its speed is reported, not asserted (test machines are shared); agreement with nbgrader is asserted.
"""
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]

pytestmark = [
    pytest.mark.slow,
    pytest.mark.xdist_group("grading"),
    pytest.mark.skipif(not (REPO / "solutions" / "a1_sliding_window" / "a1_sliding_window.ipynb").is_file(),
                       reason="solutions/a1_sliding_window is not in this checkout"),
]


def test_grading_benchmark_agrees_with_nbgrader_and_reports_speed():
    from benchmarks import bench_grading

    rows = bench_grading.run(quick=True)
    nbgrader_row, segutils_row = rows
    assert nbgrader_row["submissions"] == segutils_row["submissions"] == 4
    assert segutils_row["identical_scores"], segutils_row["differences"]
    assert segutils_row["ratio"] > 0 and segutils_row["overhead_s_per_submission"] > 0
    print(f"\nsegutils grade --workers 2 vs nbgrader autograde: {segutils_row['ratio']:.2f}x, "
          f"overhead {segutils_row['overhead_s_per_submission']:.1f} s/submission")
