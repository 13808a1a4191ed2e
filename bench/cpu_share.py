"""Which processes use the CPU while an `orchestrator train` run trains.

    .venv/bin/python -m bench.cpu_share jobs/digits-cnn.yaml --epochs 100

Runs the spec once with one worker, its search dropped and early stopping off, and samples every
Ray process's CPU time (psutil) twice a second. Prints, for a window from a third of the way
into the worker's life to a second before its end (its epochs, checkpoint writes and reports),
the CPU each process used, in CPU-seconds and as a share of one core: the training worker, the
orchestrator's driver and progress queue, and Ray's own processes (controller, helper actors,
dashboard, raylet, GCS).
"""

from __future__ import annotations

import argparse
import collections
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import psutil
import yaml

from bench.loop_inprocess import one_worker_spec

ROOT = Path(__file__).resolve().parent.parent
KNOWN = (
    "RayTrainWorker",
    "TrainController",
    "_QueueActor",
    "SynchronizationActor",
    "PlacementGroupCleaner",
    "AutoscalingCoordinator",
    "SplitCoordinator",
    "DatasetManager",
    "_StatsActor",
    "DashboardAgent",
    "dashboard",
    "raylet",
    "gcs_server",
)


def _label(proc: psutil.Process, driver_pid: int):
    try:
        if proc.pid == driver_pid:
            return "driver (orchestrator train)"
        line = " ".join(proc.cmdline()) + " " + proc.name()
    except psutil.Error:
        return None
    return next((k for k in KNOWN if k in line), "other ray process" if "ray" in line else None)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("spec", type=Path)
    ap.add_argument("--epochs", type=int, default=100)
    a = ap.parse_args()
    d = one_worker_spec(a.spec, a.epochs)
    d["train"]["early_stopping"] = None
    with tempfile.TemporaryDirectory() as tmp:
        spec = Path(tmp) / "spec.yaml"
        spec.write_text(yaml.safe_dump(d))
        run = subprocess.Popen(
            [str(Path(sys.executable).with_name("orchestrator")), "train", str(spec), "-o", str(Path(tmp) / "runs")],
            cwd=ROOT,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        samples = []
        while run.poll() is None:
            used = collections.Counter()
            for proc in psutil.process_iter():
                label = _label(proc, run.pid)
                if label:
                    try:
                        t = proc.cpu_times()
                        used[label] += t.user + t.system
                    except psutil.Error:
                        pass
            samples.append((time.time(), used))
            time.sleep(0.5)
    training = [s for s in samples if "RayTrainWorker" in s[1]]
    if len(training) < 6:
        sys.exit(f"the run trained for {len(training) / 2:.1f} s: too short to measure; raise --epochs (exit code {run.returncode})")
    (t0, first), (t1, last) = training[len(training) // 3], training[-3]
    print(f"{t1 - t0:.1f} s while the worker trained (exit code {run.returncode})")
    for label in sorted(last, key=lambda k: -(last[k] - first[k])):
        cpu = last[label] - first[label]
        if cpu > 0.005:
            print(f"{label:30s} {cpu:6.2f} CPU-s  {cpu / (t1 - t0) * 100:5.1f}% of a core")


if __name__ == "__main__":
    main()
