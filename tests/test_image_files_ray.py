"""Images read from PNG files (paths relative to the table) and from encoded bytes, on a real local
Ray; a missing or unreadable file is one clear error naming the file."""

from __future__ import annotations

import io
import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import typer
import yaml
from PIL import Image
from typer.testing import CliRunner

from orchestrator.cli import serve as serve_cli
from orchestrator.data.ingest import prepare_data
from orchestrator.data.preprocess import assign_splits
from orchestrator.spec import load_spec, parse_spec
from orchestrator.train.checkpoint import load_model
from tests.conftest import error_here, run_cli, run_here

pytestmark = pytest.mark.ray


def _png(label: int, rng) -> bytes:
    """12x12 grey: the bright half is the top for label 0, the bottom for label 1."""
    a = rng.integers(0, 60, size=(12, 12))
    a[(slice(0, 6) if label == 0 else slice(6, 12))] += 180
    buf = io.BytesIO()
    Image.fromarray(a.astype(np.uint8), mode="L").save(buf, format="PNG")
    return buf.getvalue()


def _png16(label: int, rng) -> bytes:
    """_png's image at 16 bits: each value x as x * 257, which 8-bit decoding must read back as x."""
    a = rng.integers(0, 60, size=(12, 12))
    a[(slice(0, 6) if label == 0 else slice(6, 12))] += 180
    buf = io.BytesIO()
    Image.fromarray((a * 257).astype(np.uint16)).save(buf, format="PNG")
    return buf.getvalue()


def _table(tmp_path: Path, n: int = 80, sixteen_bit: bool = False) -> pd.DataFrame:
    rng = np.random.default_rng(0)
    (tmp_path / "imgs").mkdir(exist_ok=True)
    rows = []
    for i in range(n):
        label = i % 2
        make = _png16 if sixteen_bit and i % 3 == 0 else _png
        (tmp_path / "imgs" / f"{i:03d}.png").write_bytes(make(label, rng))
        rows.append((f"imgs/{i:03d}.png", label))  # relative to the table's folder
    return pd.DataFrame(rows, columns=["path", "label"])


def _spec(source: Path, **sections) -> dict:
    return {
        "name": "image-files",
        "data": {"source": str(source), "label": "label", "image": {"column": "path", "shape": [1, 8, 8]}},
        "model": {"arch": "cnn", "channels": [8], "hidden": 16},
        "train": {"epochs": 2, "batch_size": 16, "lr": 0.01, "max_failures": 0},
        "scaling": {"workers": 1},
        "checkpoint": {"metric": "val_accuracy"},
        **sections,
    }


def _train(tmp_path: Path, d: dict):
    p = tmp_path / "job.yaml"
    p.write_text(yaml.safe_dump(d))
    return run_cli("train", str(p), "-o", str(tmp_path / "runs"), timeout=400)


def test_image_file_job_reads_png_paths(ray_session, tmp_path):
    """A third of the PNGs are 16-bit, and four rows have no label (the job runs in this process).
    The job also weighs its classes (balanced), ranks checkpoints by macro F1 and gates on it."""
    df = _table(tmp_path, sixteen_bit=True)
    df["label"] = df["label"].astype(float)
    df.loc[[5, 17, 40, 66], "label"] = None
    df.to_parquet(tmp_path / "images.parquet")
    d = _spec(tmp_path / "images.parquet")
    d["data"]["task"] = "classification"  # a label with gaps is read as float
    d["train"]["class_weights"] = "balanced"
    d["checkpoint"] = {"metric": "val_f1"}
    d["promote"] = "f1 >= 0"
    (tmp_path / "job.yaml").write_text(yaml.safe_dump(d))
    result = run_here("train", tmp_path / "job.yaml", tmp_path / "runs")
    out = result.console_text
    assert "note: 4 of 80 rows have no 'label' (data.label) and are left out of every split" in out, out
    assert result.decision["metric"] == "test_f1" and result.decision["value"] == result.test_metrics["test_f1"]
    assert {"test_f1", "test_precision", "test_recall", "test_roc_auc"} <= set(result.test_metrics)
    (run,) = (tmp_path / "runs").iterdir()
    assert json.loads((run / "test_metrics.json").read_text())["test_rows"] > 0
    # the test split's details reach the report: its confusion matrix and per-class table
    assert (run / "confusion_matrix.png").stat().st_size > 0 and "per class, test split" in (run / "report.html").read_text()
    pre = load_model(run / "best_checkpoint").preprocessor
    assert sum(pre.class_counts) == pre.train_rows and len(pre.class_counts) == 2
    assert pre.input.source == "path" and pre.input.root == str(tmp_path) and pre.input.shape == [1, 8, 8]
    # every image, 8 or 16 bits, holds values of mean 30 on one half and 210 on the other: 120 on
    # the 8-bit scale. 16-bit images clipped to 8 bits (as before) pulled it towards 255.
    assert 110 < pre.input.mean < 130, pre.input.mean

    # `orchestrator evaluate RUN FILE` on the test split written as a CSV beside the images: its
    # metrics are the run's test metrics
    spec = load_spec(tmp_path / "job.yaml")
    labelled = df[df["label"].notna()][["path", "label"]]
    split = spec.data.split
    codes = assign_splits(labelled, spec.data.seed, (split.train, split.validation, split.test))
    labelled[codes == 2].to_csv(tmp_path / "test-split.csv", index=False)
    app = typer.Typer()
    serve_cli.register(app)
    r = CliRunner().invoke(app, ["evaluate", str(run), str(tmp_path / "test-split.csv")])
    assert r.exit_code == 0, r.output
    evaluation = run / "evaluations" / "test-split"
    metrics = json.loads((evaluation / "metrics.json").read_text())
    expected = json.loads((run / "test_metrics.json").read_text())
    for k in ("accuracy", "f1", "precision", "recall", "roc_auc", "loss"):
        assert metrics[k] == pytest.approx(expected["test_" + k], abs=1e-6), k
    assert metrics["rows"] == expected["test_rows"] and (evaluation / "confusion_matrix.png").stat().st_size > 0
    assert "per class" in r.output


def test_image_bytes_and_rgb_are_decoded_and_resized(ray_session, tmp_path):
    df = _table(tmp_path, 40)
    df["png"] = [(tmp_path / p).read_bytes() for p in df["path"]]
    df[["png", "label"]].to_parquet(tmp_path / "bytes.parquet")
    spec = parse_spec(
        _spec(
            tmp_path / "bytes.parquet",
            data={"source": str(tmp_path / "bytes.parquet"), "label": "label", "image": {"column": "png", "shape": [3, 6, 6]}},
        )
    )
    prepared = prepare_data(spec)
    assert prepared.preprocessor.input.source == "bytes"
    batch = prepared.transformed["train"].take_batch(4)
    assert batch["x"].shape == (4, 3, 6, 6) and batch["x"].dtype == np.float32
    np.testing.assert_allclose(batch["x"][:, 0], batch["x"][:, 2])  # grey to RGB: equal channels


def test_a_missing_image_file_is_named_before_ray_starts(tmp_path):
    df = _table(tmp_path, 40)
    bad = tmp_path / "imgs" / "017.png"
    bad.unlink()
    df.to_parquet(tmp_path / "images.parquet")
    r = _train(tmp_path, _spec(tmp_path / "images.parquet"))
    err = r.stderr
    assert r.returncode == 2, r.stdout + err
    assert "Traceback" not in err and len(err.strip().splitlines()) < 15, err
    (line,) = [s for s in err.splitlines() if s.startswith("error:")]
    assert str(bad) in line and "'path'" in line and "image file not found" in line, err
    assert not (tmp_path / "runs").exists(), list((tmp_path / "runs").rglob("*"))  # no run directory


def test_an_unreadable_image_file_is_named(ray_session, tmp_path):
    """Found while reading the images, after Ray has started: run in this process."""
    df = _table(tmp_path, 40)
    bad = tmp_path / "imgs" / "017.png"
    bad.write_bytes(b"this is not a png")
    df.to_parquet(tmp_path / "images.parquet")
    p = tmp_path / "job.yaml"
    p.write_text(yaml.safe_dump(_spec(tmp_path / "images.parquet")))
    message = error_here("train", p, tmp_path / "runs")
    assert str(bad) in message and "'path'" in message and "not a readable image" in message, message
    assert not list((tmp_path / "runs").glob("*/best_checkpoint"))
