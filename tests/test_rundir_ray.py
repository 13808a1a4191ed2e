"""Run directories: a killed search resumes from a copy of its folder, and damaged state is refused clearly."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from tests.conftest import ROOT, noise_in, plain, run_cli, run_in_pty, spec_dict
from tests.processes import (
    alive,
    describe,
    listeners,
    listening_on,
    node_of,
    run_watching,
)
from tests.waiting import wait_for


def _spec(data_dir) -> dict:
    d = spec_dict("breast-cancer-mlp.yaml")
    d["data"]["source"] = str(data_dir / "breast_cancer.parquet")
    d["data"].pop("prepare")
    d["train"].update(epochs=3, max_failures=0)
    d["train"].pop("early_stopping", None)
    d["scaling"] = {"workers": 1}  # in-process trials: the fastest kind
    d["checkpoint"] = {"metric": "val_loss", "keep": 2}
    d["tune"] = {
        "num_samples": 1,
        "search": "random",
        "scheduler": {"type": "none"},
        "max_concurrent": 1,
        "space": {"train.lr": {"grid": [0.001, 0.002, 0.003, 0.004]}},
    }
    return d


def _tree_hash(root: Path) -> str:
    h = hashlib.sha256()
    for p in sorted(root.rglob("*")):
        if p.is_file():
            h.update(str(p.relative_to(root)).encode() + b"\0" + p.read_bytes())
    return h.hexdigest()


def _finished(out: Path, n: int):
    """(run dir, finished trial ids) once trials.json shows at least n finished trials."""
    runs = list(out.glob("*/trials.json")) if out.exists() else []
    if not runs:
        return None
    try:
        done = [r["trial_id"] for r in json.loads(runs[0].read_text()) if r["status"] == "TERMINATED"]
    except json.JSONDecodeError:  # caught mid-write
        return None
    return (runs[0].parent, done) if len(done) >= n else None


@pytest.mark.ray
@pytest.mark.slow
def test_sigkilled_search_resumes_from_a_copy_of_its_run_dir(data_dir, tmp_path):
    """SIGKILL of `orchestrator run` mid-search: its Ray node ends with it (orchestrator/watchdog.py)
    and stops listening; the next command, `resume` of a copy of the run directory, starts its own
    node, finishes the search like an uninterrupted one and leaves no process behind."""
    spec_path = tmp_path / "search.yaml"
    spec_path.write_text(yaml.safe_dump(_spec(data_dir)))

    # the reference run in a pseudo-terminal, as a user's shell runs it: the live trial table and
    # the orchestrator's own lines; Ray's, Tune's and Ray Data's output in the run's log file
    exe = Path(sys.executable).parent / "orchestrator"
    rc, shown = run_in_pty([str(exe), "run", str(spec_path), "-o", str(tmp_path / "reference")], timeout=300)
    shown = plain(shown)
    assert rc == 0, shown
    assert not noise_in(shown), noise_in(shown)
    assert "PROMOTED" in shown and "trials (" in shown and "winner: trial" in shown, shown
    (ref_run,) = (tmp_path / "reference").iterdir()
    assert (ref_run / "logs" / "ray.log").is_file()
    ref_winner = json.loads((ref_run / "winner.json").read_text())

    out = tmp_path / "runs"
    proc = subprocess.Popen(
        [str(exe), "run", str(spec_path), "-o", str(out)], cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )
    try:
        run_dir, done_before = wait_for(lambda: _finished(out, 2), 300, "two finished trials")
        tree = wait_for(lambda: node_of(proc.pid), 60, "the node's processes and listeners")
        ports = {(ip, port) for _, ip, port in listeners({p.pid for p in tree})}
        t0 = time.monotonic()
        proc.send_signal(signal.SIGKILL)
        proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
    try:
        wait_for(lambda: not alive(tree), 30, "the node's processes to end")
    except AssertionError:
        raise AssertionError("alive after SIGKILL of the command:\n" + "\n".join(describe(p) for p in alive(tree))) from None
    print(f"{len(tree)} processes of the node gone {time.monotonic() - t0:.1f} s after SIGKILL of the command")
    assert not listening_on(ports), f"still listening: {sorted(listening_on(ports))}"

    # The copy is resumed, with a torn checkpoint in it; the original must not change.
    copy = tmp_path / "moved" / run_dir.name
    shutil.copytree(run_dir, copy)
    trial_dir = next((copy / "tune").glob(f"*{done_before[0]}*"))
    torn = sorted(trial_dir.glob("checkpoint_*"))[-1] / "state.pt"
    torn.write_bytes(torn.read_bytes()[:100])
    before = _tree_hash(run_dir)

    rc, output, seen = run_watching([str(exe), "resume", str(copy)], cwd=ROOT, env={**os.environ, "COLUMNS": "200"})
    assert rc == 0, output
    assert "Traceback" not in output and "interrupted" not in output, output
    assert f"skipping checkpoint {torn} cannot be loaded" in output, output
    assert _tree_hash(run_dir) == before, "resuming the copy changed the original run directory"
    wait_for(lambda: not alive(seen), 30, "the resuming command's node to end after its normal exit")

    starts = [json.loads(s)["trial_id"] for s in (copy / "trials" / "trial_starts.jsonl").read_text().splitlines()]
    for trial_id in done_before:
        assert starts.count(trial_id) == 1, f"finished trial {trial_id} ran again: {starts}"
    recs = json.loads((copy / "trials.json").read_text())
    assert len(recs) == 4 and all(t["status"] == "TERMINATED" and len(t["epochs"]) == 3 for t in recs), recs
    winner = json.loads((copy / "winner.json").read_text())
    assert winner["config"] == ref_winner["config"]
    assert winner["best_val_loss"] == pytest.approx(ref_winner["best_val_loss"])
    # paths recorded in the run directory are relative to it
    assert (copy / winner["checkpoint"]).is_dir()
    assert json.loads((copy / "summary.json").read_text())["best_checkpoint"] == "best_checkpoint"


def _damaged_run_dir(tmp_path: Path, data_dir: Path) -> Path:
    """A run directory as a killed search leaves it, as far as `resume` reads it before Ray starts."""
    run = tmp_path / "run"
    (run / "tune").mkdir(parents=True)
    (run / "spec.yaml").write_text(yaml.safe_dump(_spec(data_dir)))
    (run / "run.json").write_text(json.dumps({"spec_path": "search.yaml", "base_dir": str(tmp_path), "created": "x"}))
    (run / "trials.json").write_text("[]")
    (run / "tune" / "tuner.pkl").write_bytes(b"")
    (run / "tune" / "experiment_state-2026-01-01_00-00-00.json").write_text('{"trial_data": []}')
    return run


@pytest.mark.parametrize(
    "damage, file",
    [
        ("truncated experiment state", "tune/experiment_state-2026-01-01_00-00-00.json"),
        ("corrupt trials.json", "trials.json"),
        ("trials.json of the wrong shape", "trials.json"),
        ("garbled spec copy", "spec.yaml"),
        ("missing spec copy", "spec.yaml"),
        ("corrupt run.json", "run.json"),
    ],
)
def test_damaged_run_dir_is_refused_naming_the_file(tmp_path, data_dir, damage, file):
    run = _damaged_run_dir(tmp_path, data_dir)
    path = run / file
    if damage == "truncated experiment state":
        path.write_text('{"trial_data": [["{\\n  \\"stub\\": false,')
    elif damage == "corrupt trials.json":
        path.write_text('[{"trial_id": "a", "config"')
    elif damage == "trials.json of the wrong shape":
        path.write_text('[{"id": 1}]')
    elif damage == "garbled spec copy":
        path.write_text("name: [unclosed\n  x: : :\n")
    elif damage == "missing spec copy":
        path.unlink()
    else:
        path.write_text("{")

    r = run_cli("resume", str(run), timeout=60)
    assert r.returncode == 2, r.stdout + r.stderr
    assert "Traceback" not in r.stdout + r.stderr
    first = r.stderr.strip().splitlines()[0]
    assert first.startswith("error: ") and str(path) in first, r.stderr


def test_torn_checkpoint_of_a_train_run_is_dropped_from_its_snapshot(tmp_path):
    """A multi-worker trial's Ray Train run resumes from its snapshot's latest checkpoint: a torn one is skipped."""
    from orchestrator.train.checkpoint import write_checkpoint
    from orchestrator.tune.search import _repair_train_snapshot

    run = tmp_path / "trial-abc_00000"
    names = ["checkpoint_2026-01-01_00-00-01.000000", "checkpoint_2026-01-01_00-00-02.000000"]
    for epoch, name in enumerate(names):
        write_checkpoint(run / name, state={"epoch": epoch}, model_meta={}, preprocessing={}, metrics={"val_loss": 1.0 - epoch / 10})
    results = [{"version": 0, "checkpoint_dir_name": n, "metrics": {"val_loss": 1.0 - i / 10}} for i, n in enumerate(names)]
    snapshot = run / "checkpoint_manager_snapshot.json"
    snapshot.write_text(
        json.dumps(
            {
                "checkpoint_results": results,
                "checkpoint_report_indices": [1, 2],
                "latest_checkpoint_result": results[1],
                "current_report_index": 2,
            }
        )
    )
    torn = run / names[1] / "state.pt"
    torn.write_bytes(torn.read_bytes()[:50])

    warnings: list[str] = []
    _repair_train_snapshot(snapshot, warnings)

    assert len(warnings) == 1 and f"{torn} cannot be loaded" in warnings[0]
    state = json.loads(snapshot.read_text())
    assert [r["checkpoint_dir_name"] for r in state["checkpoint_results"]] == names[:1]
    assert state["checkpoint_report_indices"] == [1]
    assert state["latest_checkpoint_result"]["checkpoint_dir_name"] == names[0]  # resumes from the good one
    _repair_train_snapshot(snapshot, warnings)  # nothing left to drop: unchanged
    assert len(warnings) == 1 and json.loads(snapshot.read_text()) == state
