"""Real orchestrator checkpoints for serving tests and the serving benchmark, made without Ray Train.

Breast-cancer features (30 numbers) plus a synthetic categorical column `site`, split with the
same seeded row hash as training, preprocessing fitted on the train slice, an MLP fitted for a
few epochs in plain torch, saved with `write_checkpoint` exactly as a training run saves it.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import threading
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Optional

import httpx
import numpy as np
import pandas as pd
import pytest
import torch

from orchestrator.data.bundled import bundled_frame
from orchestrator.data.kinds.table import TableInput
from orchestrator.data.preprocess import Preprocessor, assign_splits
from orchestrator.models.build import build_model, forward
from orchestrator.ports import free_port  # noqa: F401  (the one free-port helper, for the tests too)
from orchestrator.train.checkpoint import load_model, write_checkpoint
from tests.conftest import ROOT

SITES = ["north", "south", "west"]


def breast_cancer_frame() -> pd.DataFrame:
    df = bundled_frame("sklearn:breast_cancer")
    df.insert(len(df.columns) - 1, "site", [SITES[i % 3] for i in range(len(df))])
    return df


def split(df: pd.DataFrame, seed: int = 0) -> dict[str, pd.DataFrame]:
    codes = assign_splits(df, seed, (0.7, 0.15, 0.15))
    return {name: df[codes == i].reset_index(drop=True) for i, name in enumerate(("train", "validation", "test"))}


def fit_preprocessor(train: pd.DataFrame, label: str = "label", categorical: tuple[str, ...] = ("site",)) -> Preprocessor:
    numeric = [c for c in train.columns if c != label and c not in categorical]
    return Preprocessor(
        task="classification",
        label=label,
        input=TableInput(
            numeric=numeric,
            means=[float(train[c].mean()) for c in numeric],
            stds=[float(train[c].std(ddof=0)) or 1.0 for c in numeric],
            categorical={c: sorted(train[c].unique().tolist()) for c in categorical},
        ),
        classes=sorted(train[label].unique().tolist()),
        train_rows=len(train),
    )


def make_checkpoint(
    dest: str | Path, *, hidden: list[int] = (16,), epochs: int = 30, seed: int = 0, job: str = "test"
) -> tuple[Path, pd.DataFrame]:
    """Train a small MLP and write a checkpoint to `dest`; returns (dest, the held-out test rows)."""
    parts = split(breast_cancer_frame())
    pre = fit_preprocessor(parts["train"])
    torch.manual_seed(seed)
    model_spec = {"arch": "mlp", "hidden": list(hidden), "activation": "relu", "batch_norm": False}
    model = build_model(model_spec, pre.input_shape, pre.num_outputs, 0.0)
    data = pre.transform(parts["train"])
    x, y = torch.from_numpy(data["x"]), torch.from_numpy(data["y"])
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    for _ in range(epochs):
        opt.zero_grad()
        loss = torch.nn.functional.cross_entropy(forward(model, x, model_spec), y)
        loss.backward()
        opt.step()
    model.eval()
    write_checkpoint(
        dest,
        state={"model": model.state_dict(), "optimizer": {}, "epoch": 0},
        model_meta={
            "model": model_spec,
            "input_shape": pre.input_shape,
            "num_outputs": pre.num_outputs,
            "dropout": 0.0,
            "task": "classification",
            "job": job,
        },
        preprocessing=pre.to_dict(),
        metrics={"epoch": 0, "train_loss": loss.item()},
    )
    return Path(dest), parts["test"]


def make_run_dir(root: Path, checkpoint_from: Path, *, promoted: bool = True, serve: dict | None = None) -> Path:
    """A minimal run directory around a copy of a checkpoint, as `orchestrator run` leaves it."""
    import shutil

    run = root / "run-1"
    shutil.copytree(checkpoint_from, run / "best_checkpoint")
    (run / "promotion.json").write_text(
        json.dumps(
            {
                "promoted": promoted,
                "rule": "accuracy >= 0.9",
                "metric": "test_accuracy",
                "value": 0.95 if promoted else 0.5,
                "reason": "test_accuracy = 0.5 does not meet 'accuracy >= 0.9'",
            }
        )
    )
    (run / "test_metrics.json").write_text(json.dumps({"test_accuracy": 0.95, "test_loss": 0.1}))
    spec = {"name": "bc", "data": {"source": "data.parquet", "label": "label"}, **({"serve": serve} if serve is not None else {})}
    (run / "spec.resolved.json").write_text(json.dumps(spec))
    (run / "summary.json").write_text(json.dumps({"name": "bc", "promoted": promoted}))
    return run


def offline_predictions(checkpoint: Path, rows: pd.DataFrame) -> list:
    """What the model itself says about `rows`: decode(model(transform(rows)))."""
    loaded = load_model(checkpoint)
    x = torch.from_numpy(loaded.preprocessor.transform_features(rows))
    with torch.no_grad():
        out = forward(loaded.model, x, loaded.meta["model"]).numpy()
    return loaded.preprocessor.decode(out)


def feature_records(rows: pd.DataFrame, pre_columns: list[str]) -> list[dict]:
    return [{c: (v.item() if isinstance(v, np.generic) else v) for c, v in r.items()} for r in rows[pre_columns].to_dict("records")]


@contextmanager
def serving_until_ctrl_c(cmd: list[str], port: int, timeout: float, *, env: Optional[dict] = None, cwd: Optional[Path] = None):
    """Run a serving command until it prints its ready banner; yield (process, output lines), then press
    Ctrl-C and check that it stops cleanly and the port is closed."""
    # SIGINT ignored, as in a child of a background job of a non-interactive shell (CI runners,
    # `nohup`): Ctrl-C must still stop the server.
    proc = subprocess.Popen(
        cmd,
        cwd=cwd or ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env={**(os.environ if env is None else env), "COLUMNS": "300"},
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_IGN),
    )
    lines: list[str] = []
    reader = threading.Thread(target=lambda: lines.extend(iter(proc.stdout.readline, "")), daemon=True)
    reader.start()
    try:
        deadline = time.monotonic() + timeout
        while not any("Ctrl-C stops the server" in x for x in lines):
            assert proc.poll() is None, "".join(lines)
            assert time.monotonic() < deadline, "".join(lines)
            time.sleep(0.2)
        out = "".join(lines)
        assert f"http://127.0.0.1:{port}" in out and "curl -s" in out
        yield proc, lines
        proc.send_signal(signal.SIGINT)
        try:
            code = proc.wait(120)
        except subprocess.TimeoutExpired:
            raise AssertionError("still running 120 s after Ctrl-C:\n" + "".join(lines)) from None
        assert code == 0, "".join(lines)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    reader.join(10)
    assert "server stopped" in "".join(lines)
    with pytest.raises(httpx.ConnectError):
        httpx.get(f"http://127.0.0.1:{port}/healthz")
