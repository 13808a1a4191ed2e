"""Search with Ray Tune on a real local Ray: failing trials, promotion gate, interrupt and resume."""

from __future__ import annotations

import json
import re
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from orchestrator.pipeline import run_job
from orchestrator.promote import decide
from orchestrator.spec import parse_spec
from tests.conftest import ROOT, noise_in, run_cli, spec_dict
from tests.waiting import wait_for

pytestmark = pytest.mark.ray


def _search_spec(data_dir, workers=2, **tune):
    d = spec_dict("breast-cancer-mlp.yaml")
    d["data"]["source"] = str(data_dir / "breast_cancer.parquet")
    d["data"].pop("prepare")
    d["train"].update(epochs=2, max_failures=0)
    # an explicit cpus_per_worker keeps two-worker trials on Ray Train (with `auto` on 2 CPUs their
    # 0.24-CPU workers would be merged into one process: tune/plan.py one_process_plan)
    d["scaling"] = {"workers": workers, **({"cpus_per_worker": 0.2} if workers > 1 else {})}
    d["tune"] = {"num_samples": 1, "search": "random", "scheduler": {"type": "none"}, "max_concurrent": 2, **tune}
    return d


def _actor_count(class_name: str) -> int:
    import ray
    from ray.util.state import list_actors

    # this session's cluster by address: without one the State API looks for a Ray instance on the
    # machine and refuses when it finds several (another test process's, a CLI run's)
    return len(
        list_actors(
            address=ray.get_runtime_context().gcs_address,
            filters=[("class_name", "=", class_name)],
            limit=10_000,
            raise_on_missing_output=False,
        )
    )


# workers=2: every trial runs a TorchTrainer with a DDP worker group; workers=1: every trial
# trains in its own Tune trial process (Ray Train local mode) and Tune keeps its checkpoints.
@pytest.mark.parametrize("workers", [2, 1])
def test_failing_trials_do_not_abort_the_search_and_the_gate_refuses(ray_session, data_dir, tmp_path, workers):
    d = _search_spec(data_dir, workers, space={"model.kwargs.mode": {"grid": ["ok", "raise", "nan"]}})
    d["model"] = {"arch": "custom", "factory": "tests.models_for_tests:flaky"}
    d["checkpoint"] = {"metric": "val_accuracy"}
    d["promote"] = "accuracy >= 0.9999"
    spec_path = tmp_path / "flaky.yaml"
    spec_path.write_text(yaml.safe_dump(d))
    spec = parse_spec(d, base_dir=tmp_path)

    result = run_job(spec, spec_path, output=tmp_path / "runs")

    trials = {t["config"]["model.kwargs.mode"]: t for t in json.loads((result.run_dir / "trials.json").read_text())}
    assert trials["ok"]["status"] == "TERMINATED" and len(trials["ok"]["epochs"]) == 2
    assert trials["raise"]["status"] == "ERROR" and "boom: this model cannot be built" in trials["raise"]["error"]
    assert trials["nan"]["status"] == "ERROR" and "diverged" in trials["nan"]["error"]
    winner = json.loads((result.run_dir / "winner.json").read_text())
    assert winner["config"] == {"model.kwargs.mode": "ok"}
    # the gate: a real test accuracy below 0.9999 is refused, and the run says why
    assert 0.5 < result.test_metrics["test_accuracy"] < 0.9999
    promotion = json.loads((result.run_dir / "promotion.json").read_text())
    assert promotion["promoted"] is False and "does not meet" in promotion["reason"]
    summary = json.loads((result.run_dir / "summary.json").read_text())
    assert summary["failed_trials"] == 2 and summary["promoted"] is False
    report = (result.run_dir / "report.html").read_text()
    assert "boom: this model cannot be built" in report and "data:image/png;base64," in report
    for png in ("learning_curves.png", "best_so_far.png", "params.png", "confusion_matrix.png"):
        assert (result.run_dir / png).stat().st_size > 1000


def _run_counting_train_actors(d: dict, tmp_path):
    """Runs the search spec `d`; returns its result and how many Train controllers and workers it started."""
    spec_path = tmp_path / "search.yaml"
    spec_path.write_text(yaml.safe_dump(d))
    before = (_actor_count("TrainController"), _actor_count("RayTrainWorker"))
    result = run_job(parse_spec(d, base_dir=tmp_path), spec_path, output=tmp_path / "runs")
    return result, (_actor_count("TrainController") - before[0], _actor_count("RayTrainWorker") - before[1])


def test_one_worker_trials_train_in_process_and_asha_prunes(ray_session, data_dir, tmp_path):
    d = _search_spec(
        data_dir,
        1,
        num_samples=6,
        space={"train.lr": {"loguniform": [1e-5, 1e-1]}},
        scheduler={"type": "asha", "grace_period": 1, "reduction_factor": 3},
    )
    d["train"]["epochs"] = 4
    d["checkpoint"] = {"metric": "val_loss", "keep": 1}

    result, started = _run_counting_train_actors(d, tmp_path)

    assert started == (0, 0)  # no Train controller or worker group was started for any trial
    recs = json.loads((result.run_dir / "trials.json").read_text())
    assert len(recs) == 6 and {r["status"] for r in recs} <= {"TERMINATED", "PRUNED"}
    assert any(r["status"] == "PRUNED" for r in recs), recs
    # the winner's best checkpoint is the one Tune kept for that trial, at its lowest val_loss
    winner = json.loads((result.run_dir / "winner.json").read_text())
    best_epoch = min(next(r for r in recs if r["trial_id"] == winner["trial_id"])["epochs"], key=lambda e: e["val_loss"])
    saved = json.loads((result.run_dir / "best_checkpoint" / "metrics.json").read_text())
    assert saved["epoch"] == best_epoch["epoch"] and saved["val_loss"] == pytest.approx(best_epoch["val_loss"])
    assert 0.5 < result.test_metrics["test_accuracy"] <= 1.0


def test_two_worker_trials_that_would_share_a_cpu_train_in_one_process(ray_session, data_dir, tmp_path):
    d = _search_spec(data_dir, 2, num_samples=3, space={"train.lr": {"loguniform": [1e-3, 1e-2]}})
    d["scaling"] = {"workers": 2}  # cpus_per_worker auto: 2 trials x 2 workers would get 0.24 CPU each

    result, started = _run_counting_train_actors(d, tmp_path)

    assert started == (0, 0)
    recs = json.loads((result.run_dir / "trials.json").read_text())
    assert len(recs) == 3 and {r["status"] for r in recs} == {"TERMINATED"} and all(len(r["epochs"]) == 2 for r in recs)
    reported = [json.loads(line) for f in (result.run_dir / "tune").glob("*/result.json") for line in f.read_text().splitlines()]
    assert len(reported) == 6 and {r["world_size"] for r in reported} == {1}
    assert 0.5 < result.test_metrics["test_accuracy"] <= 1.0


def test_promotion_gate_decisions():
    assert decide("accuracy >= 0.95", {"test_accuracy": 0.96}).promoted
    assert not decide("accuracy >= 0.95", {"test_accuracy": 0.9499}).promoted
    assert decide("rmse < 40", {"test_rmse": 39.0}).promoted
    assert not decide("rmse < 40", {"test_rmse": 40.0}).promoted
    assert not decide("accuracy >= 0.5", {"test_rmse": 1.0}).promoted  # metric not measured: refuse
    assert decide(None, {"test_accuracy": 0.1}).promoted


def test_resume_after_interrupt_skips_finished_trials(data_dir, tmp_path):
    # Two-worker trials, each with its own Train worker group (about 30 s here): two are enough.
    # In-process (one-worker) trials resume the same way after SIGKILL, in tests/test_rundir_ray.py.
    workers = 2
    lrs = [0.001, 0.002]
    d = _search_spec(data_dir, workers, space={"train.lr": {"grid": lrs}}, max_concurrent=1)
    d["train"]["epochs"] = 3
    spec_path = tmp_path / "search.yaml"
    spec_path.write_text(yaml.safe_dump(d))
    out = tmp_path / "runs"
    exe = Path(sys.executable).parent / "orchestrator"
    proc = subprocess.Popen(
        [str(exe), "run", str(spec_path), "-o", str(out)], cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )
    try:

        def finished_trial():
            runs = list(out.glob("*/trials.json")) if out.exists() else []
            if not runs:
                return None
            try:
                recs = json.loads(runs[0].read_text())
            except json.JSONDecodeError:
                return None
            done = [r["trial_id"] for r in recs if r["status"] == "TERMINATED"]
            return (runs[0].parent, done) if done else None

        run_dir, done_before = wait_for(finished_trial, 300, "a finished trial")
        proc.send_signal(signal.SIGINT)
        output, _ = proc.communicate(timeout=180)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 130, output
    assert "orchestrator resume" in output
    assert not (run_dir / "summary.json").exists()
    # stdout to a pipe: a plain line per finished trial as it finished; none of Ray's, Tune's or
    # Optuna's own lines (Tune's Tuner.restore hint on Ctrl-C among them), which are in the run's log
    assert not noise_in(output), noise_in(output)
    for trial_id in done_before:
        assert re.search(rf"^trial {trial_id} terminated \(\d/2 done\): 3 epochs, best \w+=\d+\.\d{{4}}, lr=0\.00\d", output, re.M), output
    assert (run_dir / "logs" / "ray.log").stat().st_size > 0

    r = run_cli("resume", str(run_dir), timeout=600)
    assert r.returncode == 0, r.stdout + r.stderr
    starts = [json.loads(s)["trial_id"] for s in (run_dir / "trials" / "trial_starts.jsonl").read_text().splitlines()]
    for trial_id in done_before:
        assert starts.count(trial_id) == 1, f"finished trial {trial_id} ran again: {starts}"
    recs = json.loads((run_dir / "trials.json").read_text())
    assert len(recs) == len(lrs) and all(r["status"] == "TERMINATED" for r in recs)
    assert sorted(r["config"]["train.lr"] for r in recs) == lrs
    assert json.loads((run_dir / "summary.json").read_text())["trials"] == len(lrs)
    again = run_cli("resume", str(run_dir), timeout=60)
    assert again.returncode == 2 or again.returncode == 1
    assert "already finished" in again.stderr
