"""Bad data through the CLI, where users meet it: one clear line naming the file, no Ray tracebacks."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
import yaml

from tests.conftest import error_here, run_cli, run_here

pytestmark = pytest.mark.ray


def _frame(n=200, seed=0):
    rng = np.random.default_rng(seed)
    return pd.DataFrame(
        {
            "a": rng.normal(size=n),
            "b": rng.normal(size=n),
            "city": rng.choice(["oslo", "rome", "lima"], n),
            "label": rng.choice(["p", "q"], n),
        }
    )


def _write_spec(tmp_path, source: str, **data):
    spec = {
        "name": "bad-data",
        "data": {"source": source, "label": "label", **data},
        "model": {"arch": "mlp", "hidden": [8]},
        "train": {"epochs": 1, "batch_size": 32},
        "scaling": {"workers": 1},
        "checkpoint": {"metric": "val_loss"},
    }
    path = tmp_path / "job.yaml"
    path.write_text(yaml.safe_dump(spec))
    return path


def _train(tmp_path, source: str, **data):
    return run_cli("train", str(_write_spec(tmp_path, source, **data)), "-o", str(tmp_path / "runs"), timeout=240)


def _assert_clear_error(r, *words):
    err = r.stderr
    assert r.returncode == 2, err
    assert "Traceback" not in err and "retry" not in err.lower(), err
    assert len(err.strip().splitlines()) < 15, err
    error_lines = [line for line in err.splitlines() if line.startswith("error:")]
    assert len(error_lines) == 1, err
    for w in words:
        assert w in error_lines[0], err


def test_infinite_values_are_named_and_counted(ray_session, tmp_path):
    """Found while fitting the preprocessing, after Ray has started: run in this process."""
    df = _frame()
    df.loc[df.index % 4 == 0, "a"] = np.inf
    df.loc[df.index % 4 == 1, "a"] = -np.inf
    path = tmp_path / "inf.parquet"
    df.to_parquet(path)
    message = error_here("train", _write_spec(tmp_path, str(path), features=["a", "b"]), tmp_path / "runs")
    for w in (str(path), "'a'", "infinite values (+inf/-inf)", "training split", "(50%)"):
        assert w in message, message


def test_mixed_folder_is_refused_with_counts(tmp_path):
    folder = tmp_path / "mixed"
    folder.mkdir()
    df = _frame()
    for i in range(3):
        df.iloc[i * 40 : (i + 1) * 40].to_parquet(folder / f"part{i}.parquet")
    for i in range(2):
        df.iloc[120 + i * 40 : 160 + i * 40].to_csv(folder / f"extra{i}.csv", index=False)
    r = _train(tmp_path, str(folder), format="parquet")
    _assert_clear_error(r, str(folder), "3 .parquet files and 2 .csv files", "data.format parquet reads only")


def test_empty_parquet_file_is_named(tmp_path):
    path = tmp_path / "empty.parquet"
    path.write_bytes(b"")
    r = _train(tmp_path, str(path))
    _assert_clear_error(r, f"{path}: empty file (0 bytes), not a parquet file")


def test_empty_csv_file_is_named(tmp_path):
    folder = tmp_path / "csvs"
    folder.mkdir()
    _frame().to_csv(folder / "a.csv", index=False)
    (folder / "b.csv").write_bytes(b"")
    r = _train(tmp_path, str(folder), format="csv")
    _assert_clear_error(r, f"{folder / 'b.csv'}: empty file (0 bytes), not a csv file")


def test_ragged_csv_names_the_row(tmp_path):
    path = tmp_path / "ragged.csv"
    lines = _frame(20).to_csv(index=False).splitlines()
    lines.insert(8, "1.0,2.0,oslo,p,surplus")
    path.write_text("\n".join(lines) + "\n")
    r = _train(tmp_path, str(path))
    _assert_clear_error(r, f"{path}: cannot read as CSV: Row #9: Expected 4 columns, got 5: 1.0,2.0,oslo,p,surplus")


def test_string_feature_is_one_hot_encoded(ray_session, tmp_path):
    """As data.categorical documents: a string column not listed there is still one-hot encoded
    (trained in this process: the CLI's own Ray start is the other tests' subject)."""
    path = tmp_path / "cities.csv"
    _frame().to_csv(path, index=False)
    spec = _write_spec(tmp_path, str(path), features=["a", "city"])
    result = run_here("train", spec, tmp_path / "runs")
    assert "inputs=[4]" in result.console_text  # a + three cities
    (run,) = (tmp_path / "runs").iterdir()
    pre = json.loads((run / "best_checkpoint" / "preprocessing.json").read_text())
    assert pre["input"]["categorical"] == {"city": ["lima", "oslo", "rome"]}
