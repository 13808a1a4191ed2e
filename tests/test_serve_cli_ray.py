"""`orchestrator serve` and `orchestrator run` with a serve section, end to end in their own process: serve, answer, stop on Ctrl-C."""

from __future__ import annotations

import json
import os
import shlex
import sys

import httpx
import pytest
import yaml

from tests.conftest import spec_dict
from tests.serve_support import feature_records, free_port, make_checkpoint, make_run_dir, offline_predictions, serving_until_ctrl_c

pytestmark = [pytest.mark.ray, pytest.mark.slow]

# cli/main.py wires the commands in with serve.register(app); a fresh app keeps this test independent of it
CLI = "import sys, typer; from orchestrator.cli import serve; app = typer.Typer(); serve.register(app); app()"


def test_serve_run_dir_until_ctrl_c(tmp_path):
    ckpt, test = make_checkpoint(tmp_path / "ckpt")
    port = free_port()
    run = make_run_dir(tmp_path, ckpt, serve={"port": port, "max_batch_size": 8})
    with serving_until_ctrl_c([sys.executable, "-c", CLI, "serve", str(run)], port, 240) as (_, lines):
        curl = next(x for x in lines if x.startswith("curl -s"))
        assert f"http://127.0.0.1:{port}/predict" in curl
        meta = httpx.get(f"http://127.0.0.1:{port}/metadata").json()
        rows = feature_records(test, list(meta["input_schema"]["properties"]))
        got = httpx.post(f"http://127.0.0.1:{port}/predict", json={"records": rows}, timeout=60).json()["predictions"]
        assert got == offline_predictions(ckpt, test)


def test_run_with_serve_section_trains_then_serves_the_winner(tmp_path, data_dir):
    """`orchestrator run SPEC` with a `serve:` section: train, evaluate, promote, then serve the winner
    at the spec's port with a working curl line, until Ctrl-C."""
    port = free_port()
    d = spec_dict("breast-cancer-mlp.yaml", model={"hidden": [16]}, train={"epochs": 2}, scaling={"workers": 1},
                  promote="accuracy >= 0.5", serve={"port": port, "max_batch_size": 8})
    d["data"]["source"] = str(data_dir / "breast_cancer.parquet")
    d["data"].pop("prepare", None)
    spec_path = tmp_path / "spec.yaml"
    spec_path.write_text(yaml.safe_dump(d))
    exe = os.path.join(os.path.dirname(sys.executable), "orchestrator")
    with serving_until_ctrl_c([exe, "run", str(spec_path), "-o", str(tmp_path / "runs")], port, 420) as (_, lines):
        out = "".join(lines)
        (run_dir,) = (tmp_path / "runs").iterdir()
        assert "serving breast-cancer-mlp" in out and str(run_dir / "best_checkpoint") in out
        curl = next(x for x in lines if x.startswith("curl -s"))
        body = json.loads(shlex.split(curl)[-1])  # the curl line's record, as a user would paste it
        answer = httpx.post(f"http://127.0.0.1:{port}/predict", json=body, timeout=60).json()
        assert answer["predictions"][0] in ("benign", "malignant") and set(answer["probabilities"][0]) == {"benign", "malignant"}
