"""`orchestrator serve` end to end in its own process: serve a run directory, answer, stop on Ctrl-C."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time

import httpx
import pytest

from tests.conftest import ROOT
from tests.serve_support import feature_records, free_port, make_checkpoint, make_run_dir, offline_predictions

pytestmark = [pytest.mark.ray, pytest.mark.slow]

# cli.py wires the commands in with serve_cli.register(app); a fresh app keeps this test independent of it
CLI = "import sys, typer; from orchestrator import serve_cli; app = typer.Typer(); serve_cli.register(app); app()"


def test_serve_run_dir_until_ctrl_c(tmp_path):
    ckpt, test = make_checkpoint(tmp_path / "ckpt")
    port = free_port()
    run = make_run_dir(tmp_path, ckpt, serve={"port": port, "max_batch_size": 8})
    proc = subprocess.Popen([sys.executable, "-c", CLI, "serve", str(run)], cwd=ROOT, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, env={**os.environ, "COLUMNS": "300"})
    lines: list[str] = []
    reader = threading.Thread(target=lambda: lines.extend(iter(proc.stdout.readline, "")), daemon=True)
    reader.start()
    try:
        deadline = time.monotonic() + 240
        while not any("Ctrl-C stops the server" in x for x in lines):
            assert proc.poll() is None, "".join(lines)
            assert time.monotonic() < deadline, "".join(lines)
            time.sleep(0.2)
        out = "".join(lines)
        assert f"http://127.0.0.1:{port}" in out and "curl -s" in out
        curl = next(x for x in lines if x.startswith("curl -s"))
        assert f"http://127.0.0.1:{port}/predict" in curl
        meta = httpx.get(f"http://127.0.0.1:{port}/metadata").json()
        rows = feature_records(test, list(meta["input_schema"]["properties"]))
        got = httpx.post(f"http://127.0.0.1:{port}/predict", json={"records": rows}, timeout=60).json()["predictions"]
        assert got == offline_predictions(ckpt, test)
        proc.send_signal(signal.SIGINT)
        assert proc.wait(120) == 0, "".join(lines)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    reader.join(10)
    assert "server stopped" in "".join(lines)
    with pytest.raises(httpx.ConnectError):
        httpx.get(f"http://127.0.0.1:{port}/healthz")
