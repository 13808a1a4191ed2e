"""ASHA vs the same search without early stopping, in one process on the same Ray instance.

    .venv/bin/python bench/bench_asha.py [SPEC] [--epochs N]   (default: jobs/digits-cnn.yaml)

Runs the spec's search twice — once with its ASHA scheduler, once with scheduler `none` (every
trial runs all epochs) — and reports the wall time and the best validation metric of each, plus
the winner's held-out test metric. Results go to bench/results/asha.json.
"""

from __future__ import annotations

import json
import platform
import sys
import time
from pathlib import Path

from rich.console import Console

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from orchestrator.data import prepare_data  # noqa: E402
from orchestrator.runtime import cluster_resources, init_ray  # noqa: E402
from orchestrator.spec import load_spec  # noqa: E402
from orchestrator.train import evaluate_checkpoint  # noqa: E402
from orchestrator.tune import plan_search, run_search  # noqa: E402


def main() -> None:
    import argparse

    ap = argparse.ArgumentParser()
    ap.add_argument("spec", nargs="?", default=str(ROOT / "jobs" / "digits-cnn.yaml"))
    ap.add_argument("--epochs", type=int, help="override train.epochs (ASHA's max_t follows it)")
    args = ap.parse_args()
    spec_path = Path(args.spec).resolve()
    spec = load_spec(spec_path)
    if args.epochs:
        spec.train.epochs = args.epochs
    if spec.tune is None:
        sys.exit(f"{spec_path} has no tune section")
    console = Console()
    init_ray(code_dirs=[str(spec.base_dir)])
    resources = cluster_resources()
    prepared = prepare_data(spec)  # once: both searches see the same splits and preprocessing
    concurrent, plan = plan_search(spec, resources)
    out_root = ROOT / "bench" / "results" / "asha-runs" / time.strftime("%Y%m%d-%H%M%S")
    rows = {}
    for scheduler in ("asha", "none"):
        run_dir = out_root / scheduler
        run_dir.mkdir(parents=True)
        console.print(f"[bold]search with scheduler={scheduler}[/] ({spec.tune.num_samples} trials, {concurrent} at a time)")
        t0 = time.perf_counter()
        outcome = run_search(spec, run_dir, prepared, resources, scheduler_override=scheduler)
        wall = time.perf_counter() - t0
        test = evaluate_checkpoint(outcome.winner_checkpoint, prepared.transformed["test"])
        rows[scheduler] = {
            "wall_time_s": round(wall, 1),
            f"best_{spec.tune_metric}": outcome.winner.best(spec.tune_metric),
            "winner_test": test,
            "epochs_run": sum(len(r.epochs) for r in outcome.records),
            "trials": len(outcome.records),
            "pruned": sum(r.status == "PRUNED" for r in outcome.records),
        }
        console.print(rows[scheduler])
    a, n = rows["asha"], rows["none"]
    metric = f"best_{spec.tune_metric}"
    summary = {
        "spec": str(spec_path.relative_to(ROOT) if spec_path.is_relative_to(ROOT) else spec_path),
        "machine": {"cpus": resources.cpus, "gpus": resources.gpus, "python": platform.python_version()},
        "concurrent_trials": concurrent,
        "asha": a,
        "no_early_stopping": n,
        "time_ratio_asha_over_none": round(a["wall_time_s"] / n["wall_time_s"], 3),
        "metric_gap_points": round(100 * abs(a[metric] - n[metric]), 2),
    }
    summary["epochs_per_trial"] = spec.train.epochs
    name = "asha.json" if not args.epochs else f"asha-{args.epochs}epochs.json"
    (ROOT / "bench" / "results" / name).write_text(json.dumps(summary, indent=2))
    console.print_json(json.dumps(summary))


if __name__ == "__main__":
    main()
