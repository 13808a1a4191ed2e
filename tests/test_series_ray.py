"""Time series and numeric sequences on a real local Ray: a chronological split with no leakage, a
forecasting job, a variable-length sequence job and an rnn search with ASHA (the jobs run in this
process, on the session's Ray)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml

from orchestrator.data.ingest import prepare_data
from orchestrator.data.kinds.series import SERIES_TARGET
from orchestrator.errors import DataError
from orchestrator.spec import parse_spec
from orchestrator.train.checkpoint import load_model
from tests.conftest import run_here

pytestmark = pytest.mark.ray

WINDOW, HORIZON, POINTS = 12, 2, 400


def _series(tmp_path: Path) -> Path:
    """A daily series (trend + season + noise), its rows shuffled in the file: order_by must order it."""
    rng = np.random.default_rng(0)
    t = np.arange(POINTS)
    df = pd.DataFrame(
        {
            "date": pd.date_range("2020-01-01", periods=POINTS, freq="D"),
            "value": 0.05 * t + np.sin(2 * np.pi * t / 30) + 0.1 * rng.normal(size=POINTS),
        }
    )
    path = tmp_path / "series.parquet"
    df.sample(frac=1.0, random_state=1).to_parquet(path)
    return path


def _series_spec(path: Path, **sections) -> dict:
    return {
        "name": "series-job",
        "data": {
            "source": str(path),
            "series": {"column": "value", "order_by": "date", "window": WINDOW, "horizon": HORIZON},
            "split": {"train": 0.6, "validation": 0.2, "test": 0.2},
        },
        "model": {"arch": "rnn", "hidden": 16},
        "train": {"epochs": 2, "batch_size": 32, "lr": 0.01, "max_failures": 0},
        "scaling": {"workers": 1},
        "checkpoint": {"metric": "val_rmse"},
        **sections,
    }


def _write(tmp_path: Path, d: dict, name: str) -> Path:
    p = tmp_path / name
    p.write_text(yaml.safe_dump(d))
    return p


def test_series_split_is_chronological_with_no_leakage(ray_session, tmp_path):
    path = _series(tmp_path)
    prepared = prepare_data(parse_spec(_series_spec(path)))
    raw = {name: ds.to_pandas() for name, ds in prepared.raw.items()}
    train, val, test = raw["train"], raw["validation"], raw["test"]
    assert min(len(train), len(val), len(test)) > 0
    # no window of a later split sees a point (input or target) of an earlier one
    assert train["target_end"].max() < val["input_start"].min()
    assert val["target_end"].max() < test["input_start"].min()
    assert train["target_end"].max() < test["input_start"].min()
    # windows read WINDOW points in time order and forecast the next HORIZON
    ordered = pd.read_parquet(path).sort_values("date").reset_index(drop=True)
    first = train.sort_values("input_start").iloc[0]
    assert first["input_start"] == ordered["date"][0] and first["target_end"] == ordered["date"][WINDOW + HORIZON - 1]
    np.testing.assert_allclose(first["value"], ordered["value"][:WINDOW])
    np.testing.assert_allclose(first[SERIES_TARGET], ordered["value"][WINDOW : WINDOW + HORIZON])
    # standardised with the training period's points only
    pre = prepared.preprocessor
    touched = ordered[ordered["date"] <= train["target_end"].max()]["value"]
    assert pre.input.mean == pytest.approx(touched.mean()) and pre.input.std == pytest.approx(touched.std(ddof=0))
    assert pre.train_rows == len(train) and pre.num_outputs == HORIZON and pre.input_shape == [WINDOW, 1]
    batch = prepared.transformed["test"].take_batch(4)
    assert batch["x"].shape == (4, WINDOW, 1) and batch["len"].tolist() == [WINDOW] * 4 and batch["y"].shape == (4, HORIZON)


def test_series_refuses_repeated_times_and_gaps_naming_the_column(ray_session, tmp_path):
    df = pd.DataFrame({"date": np.arange(80) // 2, "value": np.arange(80.0)})  # every time twice
    df.to_parquet(tmp_path / "dup.parquet")
    with pytest.raises(DataError, match="'date' \\(data.series.order_by\\) has 40 repeated values"):
        prepare_data(parse_spec(_series_spec(tmp_path / "dup.parquet")))
    # the gap's row in the file (here in reverse time order) and its time, not its place in time order
    df = pd.DataFrame({"date": np.arange(80), "value": np.where(np.arange(80) == 40, np.nan, np.arange(80.0))}).iloc[::-1]
    df.to_parquet(tmp_path / "gap.parquet")
    with pytest.raises(DataError, match="gap.parquet: row 39 \\(date = 40\\), column 'value' \\(data.series.column\\): missing value"):
        prepare_data(parse_spec(_series_spec(tmp_path / "gap.parquet")))


def test_series_forecasting_job_trains(ray_session, tmp_path):
    spec = _write(tmp_path, _series_spec(_series(tmp_path)), "series.yaml")
    run_here("train", spec, tmp_path / "runs")
    (run,) = (tmp_path / "runs").iterdir()
    test = json.loads((run / "test_metrics.json").read_text())
    assert test["test_rmse"] > 0 and test["test_rows"] > 0
    loaded = load_model(run / "best_checkpoint")
    assert loaded.meta["input_kind"] == "series" and loaded.meta["num_outputs"] == HORIZON
    window = {"value": [list(np.linspace(10.0, 11.0, WINDOW))]}
    import torch

    from orchestrator.models.build import forward

    inputs = {k: torch.from_numpy(v) for k, v in loaded.preprocessor.transform_inputs(pd.DataFrame(window)).items()}
    with torch.no_grad():
        (forecast,) = loaded.preprocessor.decode(forward(loaded.model, inputs, loaded.meta["model"]).numpy())
    assert len(forecast) == HORIZON and all(np.isfinite(forecast))


def _sequences(tmp_path: Path, n: int = 240) -> Path:
    """Variable-length rows of 2-value steps; the label says whether the first value rose."""
    rng = np.random.default_rng(0)
    rows, labels = [], []
    for _ in range(n):
        steps = int(rng.integers(3, 16))
        slope = rng.choice([-1.0, 1.0])
        first = slope * np.linspace(0, 1, steps) + 0.1 * rng.normal(size=steps)
        rows.append(np.stack([first, rng.normal(size=steps)], axis=1).tolist())
        labels.append("up" if slope > 0 else "down")
    path = tmp_path / "sequences.parquet"
    pd.DataFrame({"readings": rows, "label": labels}).to_parquet(path)
    return path


def _sequence_spec(path: Path, **sections) -> dict:
    return {
        "name": "sequence-job",
        "data": {"source": str(path), "label": "label", "sequence": {"column": "readings"}},
        "model": {"arch": "rnn", "cell": "gru", "hidden": 16, "pooling": "mean"},
        "train": {"epochs": 2, "batch_size": 32, "lr": 0.01, "max_failures": 0},
        "scaling": {"workers": 1},
        "checkpoint": {"metric": "val_accuracy"},
        **sections,
    }


def test_variable_length_sequence_job_trains(ray_session, tmp_path):
    path = _sequences(tmp_path)
    run_here("train", _write(tmp_path, _sequence_spec(path), "seq.yaml"), tmp_path / "runs")
    (run,) = (tmp_path / "runs").iterdir()
    assert 0.0 <= json.loads((run / "test_metrics.json").read_text())["test_accuracy"] <= 1.0
    loaded = load_model(run / "best_checkpoint")
    pre = loaded.preprocessor
    assert pre.kind == "sequence" and pre.input.features == 2 and 3 <= pre.input.max_length <= 15
    assert len(pre.input.means) == 2 and loaded.meta["max_length"] == pre.input.max_length
    rows = pd.read_parquet(path).head(4)
    out = pre.transform_inputs(rows)
    assert out["x"].shape == (4, pre.input.max_length, 2)
    assert out["len"].tolist() == [len(r) for r in rows["readings"]]
    assert not out["x"][0, out["len"][0] :].any()  # padding stays zero after standardising


def test_an_rnn_search_over_hidden_runs_to_the_end_with_asha(ray_session, tmp_path):
    d = _sequence_spec(
        _sequences(tmp_path, 160),
        tune={
            "num_samples": 3,
            "search": "random",
            "space": {"model.hidden": {"choice": [8, 16, 32]}},
            "scheduler": {"type": "asha", "grace_period": 1, "reduction_factor": 2},
        },
    )
    run_here("run", _write(tmp_path, d, "search.yaml"), tmp_path / "runs")
    (run,) = (tmp_path / "runs").iterdir()
    trials = json.loads((run / "trials.json").read_text())
    assert len(trials) == 3 and {t["status"] for t in trials} <= {"TERMINATED", "PRUNED"}, trials
    winner = json.loads((run / "winner.json").read_text())
    assert load_model(run / "best_checkpoint").model.rnn.hidden_size == winner["config"]["model.hidden"]
