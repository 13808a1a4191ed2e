"""The run report (report.py) and the test-split details it draws (train/metrics.py), without Ray."""

from __future__ import annotations

import re

import numpy as np
import pytest

from orchestrator.report import learning_curves, loss_curves, write_report
from orchestrator.train.metrics import MAX_POINTS, split_details


def _trial(tid: str, vals: list[float], config: dict, losses=None) -> dict:
    losses = losses or [(1.0 / (i + 1), 1.2 / (i + 1)) for i in range(len(vals))]
    return {
        "trial_id": tid,
        "config": config,
        "status": "TERMINATED",
        "error": None,
        "epochs": [
            {"epoch": i + 1, "val_accuracy": v, "train_loss": tl, "val_loss": vl, "timestamp": 100 + 10 * i}
            for i, (v, (tl, vl)) in enumerate(zip(vals, losses))
        ],
    }


def test_classification_details_equal_scikit_learns_confusion_and_per_class_scores():
    from sklearn.metrics import confusion_matrix, precision_recall_fscore_support

    rng = np.random.default_rng(1)
    y = rng.integers(0, 3, 120)
    y[:5] = -1  # labels the training split never had
    logits = rng.normal(size=(120, 3)) + 2 * np.eye(3)[np.maximum(y, 0)]
    d = split_details("classification", y, logits, classes=["cat", "dog", 7])
    pred = logits.argmax(axis=1)
    known = y >= 0
    assert d["confusion"] == confusion_matrix(y[known], pred[known], labels=[0, 1, 2]).tolist()
    p, r, f, support = precision_recall_fscore_support(y, pred, labels=[0, 1, 2], zero_division=0)
    assert [c["class"] for c in d["per_class"]] == ["cat", "dog", "7"] and d["classes"] == ["cat", "dog", "7"]
    assert [c["precision"] for c in d["per_class"]] == pytest.approx(list(p))
    assert [c["recall"] for c in d["per_class"]] == pytest.approx(list(r))
    assert [c["f1"] for c in d["per_class"]] == pytest.approx(list(f))
    assert [c["support"] for c in d["per_class"]] == list(support)
    assert sum(d["unseen_label_predictions"]) == 5 and d["rows"] == 120


def test_regression_details_are_in_the_label_units_and_bounded():
    y, out = np.linspace(-1, 1, 5000).astype(np.float32), np.zeros(5000, dtype=np.float32)
    d = split_details("regression", y, out, classes=[], target_mean=10.0, target_std=2.0)
    assert d["rows"] == 5000 and len(d["true"]) == len(d["predicted"]) == MAX_POINTS and d["horizon"] == 1
    assert d["true"][0] == pytest.approx(8.0) and d["true"][-1] == pytest.approx(12.0) and set(d["predicted"]) == {10.0}
    forecast = split_details("regression", np.ones((7, 3)), np.zeros((7, 3)), classes=[], target_mean=1.0, target_std=1.0)
    assert forecast["horizon"] == 3 and forecast["true"][0] == [2.0, 2.0, 2.0] and len(forecast["predicted"]) == 7


def test_a_search_report_ranks_trials_best_first_and_draws_the_test_split(tmp_path):
    trials = [
        _trial("t1", [0.6, 0.7], {"train.lr": 0.001}),
        _trial("t2", [0.8, 0.9], {"train.lr": 0.1}),
        {"trial_id": "t3", "config": {"train.lr": 0.01}, "status": "ERROR", "error": "boom", "epochs": []},
        _trial("t4", [0.75], {"train.lr": 0.01}),
    ]
    rng = np.random.default_rng(0)
    y = rng.integers(0, 2, 50)
    details = split_details("classification", y, rng.normal(size=(50, 2)), classes=["no", "yes"])
    page = write_report(
        tmp_path, title="search", trials=trials, metric="val_accuracy", winner="t2", summary={"run": "x"}, details=details
    ).read_text()
    drawn = {p.name for p in tmp_path.glob("*.png")}
    assert drawn == {"learning_curves.png", "losses.png", "best_so_far.png", "params.png", "confusion_matrix.png"}
    order = re.findall(r"<tr(?: class=win)?><td>(\d+)</td><td>(t\d)</td>", page)
    assert [t for _, t in order] == ["t2", "t4", "t1", "t3"], order  # best first; no metric last
    assert "<tr class=win><td>1</td><td>t2</td>" in page and "per class, test split" in page and ">yes</td>" in page


def test_a_train_run_report_draws_no_empty_or_meaningless_chart(tmp_path):
    one = [_trial("train", [0.5, 0.6, 0.7], {})]
    forecast = split_details("regression", np.ones((7, 3)), np.zeros((7, 3)), classes=[])
    write_report(tmp_path, title="train", trials=one, metric="val_accuracy", winner="train", summary={}, details=forecast)
    # one trial: no "best so far" over a search, no hyperparameters; a forecast: residuals and windows
    assert {p.name for p in tmp_path.glob("*.png")} == {"learning_curves.png", "losses.png", "residuals.png", "forecasts.png"}

    empty = tmp_path / "empty"
    empty.mkdir()
    nothing = [{"trial_id": "train", "config": {}, "status": "ERROR", "error": "x", "epochs": []}]
    assert "<h1>none</h1>" in write_report(empty, title="none", trials=nothing, metric="val_accuracy", winner=None, summary={}).read_text()
    assert list(empty.glob("*.png")) == []


def test_a_loss_that_spans_orders_of_magnitude_is_drawn_on_a_log_axis():
    steep = _trial("t", [0.5] * 4, {}, losses=[(100.0, 90.0), (1.0, 2.0), (0.1, 0.3), (0.01, 0.2)])
    assert loss_curves([steep], "t").axes[0].get_yscale() == "log"
    flat = _trial("t", [0.5, 0.6], {})
    assert loss_curves([flat], "t").axes[0].get_yscale() == "linear"
    assert learning_curves([flat], "val_accuracy", "t").axes[0].get_yscale() == "linear"
