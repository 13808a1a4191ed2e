"""The training-speed suite (`python -m bench`, docs/benchmarks.md) runs end to end at its small
size and writes the results it documents. Its figures are checked for shape, not speed: timing
thresholds on a shared machine would test the machine."""

from __future__ import annotations

import json
import math
import re
import subprocess
import sys

import pytest

from tests.conftest import ROOT


def _positive(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) and v > 0


@pytest.mark.ray
@pytest.mark.slow
def test_quick_suite_writes_the_epoch_and_ingest_figures(tmp_path):
    out = tmp_path / "speed.json"
    # the MLP on one worker alone: the CNN's runs and two workers' go through the same code (and
    # took more than half of this test's 210 s)
    p = subprocess.run(
        [sys.executable, "-m", "bench", "--quick", "--only", "epoch,ingest", "--models", "mlp", "--workers", "1", "--out", str(out)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=1500,
    )
    assert p.returncode == 0, p.stdout[-3000:] + p.stderr[-3000:]
    res = json.loads(out.read_text())

    assert res["commit"] and res["machine"]["cpus"] >= 1
    assert len(res["load_average_before"]) == 3 and len(res["load_average_after"]) == 3
    assert res["sections"] == ["epoch", "ingest"] and "startup" not in res and "quickstart" not in res

    runs = res["epoch"]["runs"]
    assert set(runs) == {"mlp_1w"} and res["models"] == ["mlp"] and res["worker_counts"] == [1]
    for key, r in runs.items():
        for side in ("orchestrator", "plain"):
            times = r[side]["epoch_times_s"]
            assert len(times) == r["epochs"] and all(_positive(t) for t in times), (key, side, times)
            assert _positive(r[side]["steady_epoch_s"])
        assert r["orchestrator"]["world_size"] == r["workers"] == r["plain"]["workers"]
        assert _positive(r["ratio_orchestrator_over_plain"])
        # start-up phases come from the run directory's timings.json
        phases = r["orchestrator"]["timings"]["phases_s"]
        assert {"ray_start", "data_preparation", "worker_group_start", "training_epochs", "after_last_epoch", "report"} <= set(phases)
        assert _positive(r["orchestrator"]["timings"]["start_to_first_step_s"])
    assert "scaling_mlp" not in res["epoch"] and "scaling_cnn" not in res["epoch"]  # needs both worker counts

    ing = res["ingest"]
    for k in ("ray_data_shard", "ray_data_shard_no_shuffle", "dataloader_in_memory", "dataloader_in_memory_batched"):
        assert ing[k]["rows"] == ing["train_rows"] > 0 and _positive(ing[k]["rows_per_s"])
    assert _positive(ing["ratio_ray_data_over_dataloader"])

    figures = res["figures"]
    for key in ("epoch_ratio_mlp_1w", "ingest_ratio"):
        assert _positive(figures[key]), key
    assert "epoch_ratio_cnn_1w" not in figures and "scaling_mlp_2w_over_1w" not in figures
    goals = {g["key"]: g for g in res["goals"]}
    assert goals["epoch_ratio_mlp_1w"]["value"] == figures["epoch_ratio_mlp_1w"]
    assert goals["quickstart_wall_s"]["value"] is None  # not selected: recorded as not run


def test_the_in_process_loop_comparison_prints_both_epochs_and_their_ratio():
    p = subprocess.run(
        [sys.executable, "-m", "bench.loop_inprocess", "jobs/digits-cnn.yaml", "--epochs", "2", "--repeats", "1"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert p.returncode == 0, p.stdout[-3000:] + p.stderr[-3000:]
    line = next(x for x in p.stdout.splitlines() if x.startswith("plain PyTorch"))
    plain, loop, ratio = (float(w) for w in re.findall(r"(\d+\.\d+)", line))
    assert plain > 0 and loop > 0 and ratio == pytest.approx(loop / plain, abs=0.002)
