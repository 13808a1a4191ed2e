"""ASHA vs the same search without early stopping, in one process on the same Ray instance.

    .venv/bin/python bench/bench_asha.py [SPEC] [--epochs N] [--out FILE]
        [--max-concurrent K]
        default SPEC: bench/specs/asha-tabular.yaml (its data is generated on first use)

Runs the spec's search twice — once with its ASHA scheduler, once with scheduler `none` (every
trial runs all epochs) — on the same prepared data, and reports for each: wall time, best
validation metric, the winner's held-out test metric, epochs run, and how long trials took from
their start to their first reported epoch (the fixed cost ASHA cannot save). Results go to
bench/results/asha-<spec name>[-<N>epochs].json.
"""

from __future__ import annotations

import json
import os
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path

from rich.console import Console

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from orchestrator.data.ingest import prepare_data  # noqa: E402
from orchestrator.runtime import cluster_resources, init_ray  # noqa: E402
from orchestrator.spec import load_spec  # noqa: E402
from orchestrator.train.driver import evaluate_checkpoint  # noqa: E402
from orchestrator.tune.plan import STARTS_FILE, TRIALS_DIR, plan_search  # noqa: E402
from orchestrator.tune.search import run_search  # noqa: E402

DEFAULT_SPEC = ROOT / "bench" / "specs" / "asha-tabular.yaml"


def make_tabular(dest: Path) -> None:
    """120k rows, 40 features, 5 classes; seeded, so every machine benchmarks the same data."""
    import numpy as np
    import pandas as pd
    from sklearn.datasets import make_classification

    X, y = make_classification(
        n_samples=120_000,
        n_features=40,
        n_informative=24,
        n_redundant=8,
        n_classes=5,
        n_clusters_per_class=3,
        class_sep=1.0,
        flip_y=0.03,
        random_state=0,
    )
    df = pd.DataFrame(X.astype(np.float32), columns=[f"f{i:02d}" for i in range(X.shape[1])])
    df["label"] = y.astype(np.int64)
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = dest.with_suffix(".tmp")
    df.to_parquet(tmp, index=False)
    os.replace(tmp, dest)


def startup_times(run_dir: Path, records) -> list[float]:
    """Seconds from each trial's start to its first reported epoch."""
    starts = {}
    for line in (run_dir / TRIALS_DIR / STARTS_FILE).read_text().splitlines():
        s = json.loads(line)
        starts.setdefault(s["trial_id"], s["time"])
    out = []
    for r in records:
        stamps = [e["timestamp"] for e in r.epochs if e.get("timestamp")]
        if r.trial_id in starts and stamps:
            out.append(round(min(stamps) - starts[r.trial_id], 1))
    return out


def main() -> None:
    import argparse

    ap = argparse.ArgumentParser()
    ap.add_argument("spec", nargs="?", default=str(DEFAULT_SPEC))
    ap.add_argument("--epochs", type=int, help="override train.epochs (ASHA's max_t follows it)")
    ap.add_argument("--max-concurrent", type=int, help="override tune.max_concurrent (trials at once)")
    ap.add_argument("--out", help="result file (default bench/results/asha-<spec name>.json)")
    args = ap.parse_args()
    spec_path = Path(args.spec).resolve()
    spec = load_spec(spec_path)
    if args.epochs:
        spec.train.epochs = args.epochs
    if spec.tune is None:
        sys.exit(f"{spec_path} has no tune section")
    if args.max_concurrent:
        spec.tune.max_concurrent = args.max_concurrent
    if spec_path == DEFAULT_SPEC and not Path(spec.data.source).exists():
        make_tabular(Path(spec.data.source))
    console = Console()
    load_before = os.getloadavg()[0]
    init_ray(code_dirs=[str(spec.base_dir)])
    resources = cluster_resources()
    prepared = prepare_data(spec)  # once: both searches see the same splits and preprocessing
    concurrent, plan = plan_search(spec, resources)
    out_root = ROOT / "bench" / "results" / "asha-runs" / time.strftime("%Y%m%d-%H%M%S")
    metric = f"best_{spec.tune_metric}"
    rows = {}
    for scheduler in ("asha", "none"):
        run_dir = out_root / scheduler
        run_dir.mkdir(parents=True)
        console.print(f"[bold]search with scheduler={scheduler}[/] ({spec.tune.num_samples} trials, {concurrent} at a time)")
        t0 = time.perf_counter()
        outcome = run_search(spec, run_dir, prepared, concurrent, plan, scheduler_override=scheduler)
        wall = time.perf_counter() - t0
        test, _ = evaluate_checkpoint(outcome.winner_checkpoint, prepared.transformed["test"])
        epoch_times = [e["epoch_time_s"] for r in outcome.records for e in r.epochs if e.get("epoch_time_s")]
        startups = startup_times(run_dir, outcome.records)
        rows[scheduler] = {
            "wall_time_s": round(wall, 1),
            metric: outcome.winner.best(spec.tune_metric),
            "winner_config": outcome.winner.config,
            "winner_test": test,
            "epochs_run": sum(len(r.epochs) for r in outcome.records),
            "trials": len(outcome.records),
            "statuses": {s: sum(r.status == s for r in outcome.records) for s in sorted({r.status for r in outcome.records})},
            "trials_run_to_the_end": sum(len(r.epochs) >= spec.train.epochs for r in outcome.records),
            "median_epoch_time_s": round(statistics.median(epoch_times), 2) if epoch_times else None,
            "median_trial_startup_s": round(statistics.median(startups), 1) if startups else None,
        }
        console.print(rows[scheduler])
    a, n = rows["asha"], rows["none"]
    summary = {
        "command": "bench/bench_asha.py " + " ".join(sys.argv[1:]),
        "commit": subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True).stdout.strip(),
        "spec": str(spec_path.relative_to(ROOT) if spec_path.is_relative_to(ROOT) else spec_path),
        "machine": {
            "cpus": resources.cpus,
            "gpus": resources.gpus,
            "python": platform.python_version(),
            "load_average_1m_before_after": [round(load_before, 2), round(os.getloadavg()[0], 2)],
        },
        "trials": spec.tune.num_samples,
        "epochs_per_trial": spec.train.epochs,
        "concurrent_trials": concurrent,
        "asha": a,
        "no_early_stopping": n,
        "time_ratio_asha_over_none": round(a["wall_time_s"] / n["wall_time_s"], 3),
        "metric_gap_points": round(100 * abs(a[metric] - n[metric]), 2),
    }
    suffix = (f"-{args.epochs}epochs" if args.epochs else "") + (f"-concurrent{args.max_concurrent}" if args.max_concurrent else "")
    name = args.out or ROOT / "bench" / "results" / f"asha-{spec.name.removeprefix('asha-')}{suffix}.json"
    Path(name).write_text(json.dumps(summary, indent=2))
    console.print_json(json.dumps(summary))


if __name__ == "__main__":
    main()
