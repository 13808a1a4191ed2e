"""A custom model (`model.factory`) in a module beside the spec, run from another folder: the
driver's evaluation and a Serve replica rebuild it as the Train workers do (issue: the driver
could not import it and the run failed after training)."""

from __future__ import annotations

import json

import httpx
import pytest

from tests.conftest import run_cli
from tests.jobs_support import custom_spec
from tests.serve_support import free_port

pytestmark = pytest.mark.ray


def test_custom_model_beside_the_spec_trains_evaluates_and_serves_from_another_folder(ray_session, data_dir, tmp_path):
    spec = custom_spec(tmp_path / "project", data_dir, "mymodels_local")
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    r = run_cli("train", str(spec), "-o", str(tmp_path / "runs"), cwd=elsewhere, timeout=300)
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-2000:]
    (run,) = (tmp_path / "runs").iterdir()
    summary = json.loads((run / "summary.json").read_text())
    assert summary["status"] == "succeeded" and summary["test"]["test_accuracy"] > 0.5, summary
    meta = json.loads((run / "best_checkpoint" / "model.json").read_text())
    assert meta["code_dirs"] == [str(spec.parent)]

    # a Serve replica of the test session's Ray (whose workers have neither folder on their path)
    from ray import serve

    from orchestrator.serve.deployment import deploy
    from orchestrator.spec import ServeSpec

    port = free_port()
    url = deploy(run / "best_checkpoint", ServeSpec(port=port, cpus_per_replica=0.25), name="custom-factory")
    try:
        fields = httpx.get(f"{url}/metadata", timeout=30).json()["input_schema"]["properties"]
        record = {name: 0.0 for name in fields}
        answer = httpx.post(f"{url}/predict", json={"records": [record]}, timeout=60)
        assert answer.status_code == 200, answer.text
        assert answer.json()["predictions"][0] in ("benign", "malignant")
    finally:
        serve.delete("custom-factory")
        serve.shutdown()
