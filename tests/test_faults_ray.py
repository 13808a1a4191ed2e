"""Fault tests through the CLI: `orchestrator train` in a subprocess, its Train workers SIGKILLed mid-run.

The run's own output (what a user sees) decides when to kill and is checked afterwards, so the
failure goes through the CLI's display, which once crashed on the markup-like text of gloo's errors.
"""

from __future__ import annotations

import json
import os
import queue
import re
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Callable

import psutil
import pytest
import yaml

from tests.conftest import ROOT, run_here, spec_dict

pytestmark = [pytest.mark.ray, pytest.mark.slow]

EPOCH = re.compile(r"^epoch\s+(\d+)\s")
FAILED = re.compile(r"^restarting from the latest checkpoint")
RESUMED = re.compile(r"^epoch\s+(\d+)\s.*\(resumed after epoch (\d+)\)")


def write_spec(path: Path, data_dir: Path, out: Path, **train) -> Path:
    # batch_size 1 as in the issue: ~1 s epochs, so the run is still training when a worker is killed
    d = spec_dict("breast-cancer-mlp.yaml", train={"epochs": 6, "batch_size": 1, "early_stopping": None, **train})
    d["data"]["source"] = str(data_dir / "breast_cancer.parquet")
    d["data"].pop("prepare", None)
    d["output"] = {"dir": str(out)}
    path.write_text(yaml.safe_dump(d))
    return path


def train_workers(root: psutil.Process) -> list[psutil.Process]:
    """Live Ray Train workers started by this run (descendants of its CLI process only)."""
    found = []
    for p in root.children(recursive=True):
        try:
            if p.status() != psutil.STATUS_ZOMBIE and " ".join(p.cmdline()).startswith("ray::RayTrainWorker"):
                found.append(p)
        except psutil.Error:  # exited while we looked
            pass
    return found


class CliRun:
    """`orchestrator train SPEC` with its stdout read line by line as it is printed."""

    def __init__(self, spec: Path, tmp: Path):
        env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}  # its own embedded Ray
        env.update(COLUMNS="200", PYTHONUNBUFFERED="1")
        self.stderr_path = tmp / f"{spec.stem}.stderr"
        self._stderr = open(self.stderr_path, "w")
        exe = Path(sys.executable).parent / "orchestrator"
        self.proc = subprocess.Popen(
            [str(exe), "train", str(spec)], cwd=ROOT, env=env, text=True, stdout=subprocess.PIPE, stderr=self._stderr
        )
        self.root = psutil.Process(self.proc.pid)
        self.lines: list[str] = []
        self._q: queue.Queue = queue.Queue()
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        for line in self.proc.stdout:
            self._q.put(line.rstrip("\n"))
        self._q.put(None)

    def wait_for(self, pred: Callable[[str], bool], timeout: float) -> str:
        """Next line of output that satisfies `pred`."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                line = self._q.get(timeout=1)
            except queue.Empty:
                continue
            if line is None:
                raise AssertionError(f"the run ended before the expected line:\n{self.output()}")
            self.lines.append(line)
            if pred(line):
                return line
        raise AssertionError(f"no expected line within {timeout:.0f} s:\n{self.output()}")

    def kill_a_worker(self, timeout: float = 15) -> int:
        deadline = time.monotonic() + timeout  # a replaced group's workers may still be exiting
        while len(workers := train_workers(self.root)) != 2 and time.monotonic() < deadline:
            time.sleep(0.2)
        assert len(workers) == 2, f"expected 2 live Train workers, found {len(workers)}:\n{self.output()}"
        workers[-1].send_signal(signal.SIGKILL)
        return workers[-1].pid

    def finish(self, timeout: float) -> int:
        try:
            rc = self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.stop()
            raise AssertionError(f"the run did not finish within {timeout:.0f} s:\n{self.output()}") from None
        while (line := self._q.get(timeout=10)) is not None:
            self.lines.append(line)
        return rc

    def stop(self) -> None:
        """Ctrl-C for the CLI (it shuts its Ray down), then SIGKILL for whatever it left behind."""
        if self.proc.poll() is None:
            left = self.root.children(recursive=True)
            self.proc.send_signal(signal.SIGINT)
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
            for p in left:
                try:
                    p.kill()
                except psutil.Error:
                    pass
        self._stderr.close()

    def output(self) -> str:
        return "\n".join(self.lines) + "\n--- stderr ---\n" + self.stderr_path.read_text()

    def run_dir(self) -> Path:
        m = next(m for line in self.lines if (m := re.match(r"^run (\S+)", line)))
        return Path(m.group(1))


def run_to_end(spec: Path, tmp: Path, kills: int = 0, timeout: float = 240) -> tuple[CliRun, int]:
    """Run the spec; SIGKILL a Train worker after `epoch 2` is shown, then again each time the
    restarted group shows an epoch, `kills` times in all."""
    run = CliRun(spec, tmp)
    try:
        for i in range(kills):
            if i == 0:
                run.wait_for(lambda line: bool((m := EPOCH.match(line)) and int(m.group(1)) >= 2), timeout)
            else:  # the restarted group is training again
                run.wait_for(lambda line: bool(FAILED.match(line)), timeout)
                run.wait_for(lambda line: bool(EPOCH.match(line)), timeout)
            run.kill_a_worker()
        rc = run.finish(timeout)
    finally:
        run.stop()
    return run, rc


def final_validation(run_dir: Path) -> dict:
    return {k: v for k, v in json.loads((run_dir / "metrics.json").read_text())[-1].items() if k.startswith("val_")}


def test_killed_worker_restarts_from_its_checkpoint_and_ends_like_an_unkilled_run(ray_session, data_dir, tmp_path):
    spec = write_spec(tmp_path / "fault.yaml", data_dir, tmp_path / "runs", max_failures=2)
    killed, rc = run_to_end(spec, tmp_path, kills=1)
    out = killed.output()
    assert rc == 0, out
    assert "MarkupError" not in out and "Traceback" not in out, out

    # the failure is shown, then the first epoch after it resumes right after the last one shown
    failed_at = next(i for i, line in enumerate(killed.lines) if FAILED.match(line))
    shown_before = [int(m.group(1)) for line in killed.lines[:failed_at] if (m := EPOCH.match(line))]
    resumed = [RESUMED.match(line) for line in killed.lines[failed_at:] if EPOCH.match(line)]
    assert resumed and resumed[0], f"the first epoch after the failure does not say it resumed:\n{out}"
    first, restored = int(resumed[0].group(1)), int(resumed[0].group(2))
    assert restored >= 2 and restored == shown_before[-1], out  # the last checkpoint: every epoch writes one
    assert first == restored + 1, out

    run_dir = killed.run_dir()
    rows = json.loads((run_dir / "metrics.json").read_text())
    assert [r["epoch"] for r in rows] == list(range(1, 7)), "metrics.json must hold each epoch once"
    assert rows[first - 1]["restored_from_epoch"] == restored
    summary = json.loads((run_dir / "summary.json").read_text())
    assert len(summary["worker_failures"]) == 1

    # the unkilled run in this process, on the session's Ray (the same CPUs, so the same plan)
    clean = run_here("train", spec, tmp_path / "clean")
    got, want = final_validation(run_dir), final_validation(clean.run_dir)
    print("killed:", got, "unkilled:", want)  # identical so far: every epoch's randomness is seeded by its number
    for k, v in want.items():
        assert got[k] == pytest.approx(v, rel=0.01), (k, got, want)


def test_max_failures_exhausted_fails_after_two_attempts_with_one_clear_line(data_dir, tmp_path):
    spec = write_spec(tmp_path / "fault.yaml", data_dir, tmp_path / "runs", max_failures=1, epochs=8)
    run, rc = run_to_end(spec, tmp_path, kills=2)
    out = run.output()
    assert rc == 1, out
    assert "Traceback" not in out and "MarkupError" not in out, out
    restarts = [line for line in run.lines if FAILED.match(line)]
    assert len(restarts) == 1, f"expected exactly one restart (two attempts):\n{out}"
    assert any(line.startswith("no restarts left: train.max_failures is 1") for line in run.lines), out
    errors = [line for line in run.stderr_path.read_text().splitlines() if line.startswith("error:")]
    assert len(errors) == 1, out
    print(errors[0])
    assert "after 2 attempts" in errors[0] and "train.max_failures" in errors[0], errors[0]
    # the run directory says how the run ended, with the error the console showed
    summary = json.loads((run.run_dir() / "summary.json").read_text())
    assert summary["status"] == "failed" and summary["stage"] == "train", summary
    assert summary["error"] == errors[0].removeprefix("error: "), summary
