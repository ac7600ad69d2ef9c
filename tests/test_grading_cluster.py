"""``segutils grade --scheduler``: a Dask ``LocalCluster`` on loopback writing to a real PostgreSQL.

The PostgreSQL server (Debian's ``postgresql`` package) is started by the test on 127.0.0.1
(``tests/fixtures/grading/postgres.py``); the tests skip, saying why, only where it cannot start.
"""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

pytest.importorskip("distributed", reason="Dask distributed is not installed (pip install 'dask[distributed]')")

from segutils.grading import sandbox  # noqa: E402
from segutils.grading.batch import BatchOptions, GradingError, grade_assignment  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests" / "fixtures" / "grading"))
sys.path.insert(0, str(REPO / "tests"))
import cases  # noqa: E402
import postgres  # noqa: E402
from test_grading_batch import gradebook_scores, make_course  # noqa: E402

pytestmark = [pytest.mark.slow, pytest.mark.xdist_group("grading")]


@pytest.fixture(scope="module")
def postgres_url():
    reason = postgres.why_no_postgres()
    if reason:
        pytest.skip(f"PostgreSQL cannot start here: {reason}")
    try:
        with postgres.start_postgres() as url:
            yield url
    except RuntimeError as error:
        if "did not start" in str(error):
            pytest.skip(f"PostgreSQL cannot start here: {error}")
        raise


@pytest.fixture(scope="module")
def dask_cluster():
    from distributed import LocalCluster

    with LocalCluster(
        n_workers=2, threads_per_worker=1, processes=True, host="127.0.0.1", dashboard_address=None
    ) as local:
        yield local


def test_a_dask_cluster_grades_into_postgresql(tmp_path, postgres_url, dask_cluster):
    chosen = [c for c in cases.CASES if c.student in ("reference", "wrong_square", "blank")]
    course, ctx = make_course(tmp_path)
    cases.write_submissions(tmp_path / "export", ctx, chosen)
    try:
        sandbox.check_sandbox()
        use_sandbox = True
    except sandbox.SandboxUnavailable:
        use_sandbox = False
    options = BatchOptions(
        assignment=cases.ASSIGNMENT,
        course=course,
        submissions=tmp_path / "export",
        db_url=postgres_url,
        scheduler=dask_cluster.scheduler_address,
        sandbox=use_sandbox,
        timeout=5,
        progress=False,
        two_process=False,
    )  # cases.py's scores are in-process ones
    summary = grade_assignment(options)
    assert sorted(summary.graded) == sorted(c.student for c in chosen) and not summary.failed, summary
    assert gradebook_scores(course, postgres_url) == {c.student: c.expected for c in chosen}
    assert gradebook_scores(course) == {}  # the course's SQLite file (made by generate_assignment) got nothing
    for c in chosen:
        assert (course / "feedback" / c.student / cases.ASSIGNMENT / "mini.html").is_file()
    assert summary.report.is_file() and summary.csv.read_text().count("\n") == len(chosen) + 1

    again = grade_assignment(options)
    assert sorted(again.skipped) == sorted(c.student for c in chosen) and not again.graded


def test_gpus_on_a_cluster_without_gpu_workers_is_refused(tmp_path, dask_cluster):
    course, _ = make_course(tmp_path)
    (tmp_path / "export").mkdir()
    options = BatchOptions(
        assignment=cases.ASSIGNMENT,
        course=course,
        submissions=tmp_path / "export",
        scheduler=dask_cluster.scheduler_address,
        sandbox=False,
        gpus=1,
        progress=False,
    )
    with pytest.raises(GradingError, match="GPU resource"):
        grade_assignment(options)
