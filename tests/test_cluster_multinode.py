"""Training spread over the nodes of a cluster: a 2-node `ray.cluster_utils.Cluster` on this
machine, run in its own process (tests/multinode_train.py) so that its driver does not clash
with the session's embedded Ray."""

from __future__ import annotations

import json
import subprocess
import sys
import time

import pytest

from tests.conftest import ROOT

pytestmark = pytest.mark.ray


def test_ddp_workers_run_on_both_nodes_and_the_run_succeeds(tmp_path):
    t0 = time.monotonic()
    r = subprocess.run(
        [sys.executable, "-m", "tests.multinode_train", str(tmp_path)], cwd=ROOT, capture_output=True, text=True, timeout=420
    )
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    result = json.loads((tmp_path / "result.json").read_text())
    assert len(result["nodes"]) == 2
    # one RayTrainWorker per node: PACK could not fit both 1.5-CPU workers on one 2-CPU node
    assert sorted(result["worker_nodes"]) == sorted(result["nodes"])
    metrics = json.loads((tmp_path / "runs" / result["run_dir"].rsplit("/", 1)[1] / "metrics.json").read_text())
    assert [m["epoch"] for m in metrics] == [1, 2] and all(m["world_size"] == 2 for m in metrics)
    assert result["test_metrics"]["test_accuracy"] > 0.8
    print(f"2-node training run in {time.monotonic() - t0:.1f} s")
