"""bench/quality_baselines.py's comparison with the example jobs: the bars of issue 13 (no Ray)."""

from __future__ import annotations

import pytest

from bench.quality_baselines import JOBS, judge
from tests.conftest import JOBS as JOB_DIR

BASELINES = {
    "text": {"rows": {"test": 100}, "tfidf_logreg": {"test_accuracy": 0.95}},
    "series_elnino": {"windows": {"test": 82}, "naive_last_value": {"test_rmse": 1.0}, "ridge_on_window": {"test_rmse": 0.5}},
    "images": {"rows": {"test": 273}, "logreg_pixels": {"test_accuracy": 0.96}},
}


def _outcome(**test) -> dict:
    return {"test": test, "summary": {"epochs_run": 3, "promoted": True}, "seconds": 1.0}


def test_every_compared_job_is_an_example_job():
    assert {f"{job}.yaml" for job in JOBS} <= {p.name for p in JOB_DIR.glob("*.yaml")}


@pytest.mark.parametrize(
    "job, test, passed",
    [
        ("text-transformer", {"test_accuracy": 0.921, "test_rows": 100}, True),  # within 3 points
        ("text-lstm", {"test_accuracy": 0.919, "test_rows": 100}, False),
        ("series-lstm", {"test_rmse": 0.8, "test_rows": 82}, True),  # 20% below naive
        ("series-lstm", {"test_rmse": 0.81, "test_rows": 82}, False),
        ("digits-png-cnn", {"test_accuracy": 0.97, "test_rows": 273}, True),  # an absolute bar
        ("digits-png-cnn", {"test_accuracy": 0.969, "test_rows": 273}, False),
    ],
)
def test_bars(job, test, passed):
    row = judge(job, BASELINES, _outcome(**test))
    assert row["passed"] is passed
    assert row["job"] == job and row["test_rows"] == row["baseline_test_rows"]
