"""`orchestrator serve` end to end in its own process: serve, answer, stop on Ctrl-C."""

from __future__ import annotations

import sys

import httpx
import pytest

from tests.serve_support import (
    feature_records,
    free_port,
    make_checkpoint,
    make_run_dir,
    offline_predictions,
    serving_until_ctrl_c,
)

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
        # the node this command started records its ingress, and the banner reads it back
        assert any(x.strip().startswith("HTTP ingress: Serve's Python proxy") for x in lines), lines
        meta = httpx.get(f"http://127.0.0.1:{port}/metadata").json()
        rows = feature_records(test, list(meta["input_schema"]["properties"]))
        got = httpx.post(f"http://127.0.0.1:{port}/predict", json={"records": rows}, timeout=60).json()["predictions"]
        assert got == offline_predictions(ckpt, test)


# `orchestrator run SPEC` with a `serve:` section (train, promote, serve the winner, its curl line):
# tests/test_secrets_ray.py::test_run_with_serve_leaks_neither_token, with auth on.
