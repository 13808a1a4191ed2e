"""The stages of a job wired together: what `orchestrator train` (and, later, `run`) execute."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

from rich.console import Console

from orchestrator.rundir import new_run_dir, write_json, write_metrics
from orchestrator.spec import JobSpec


def train_job(spec: JobSpec, spec_path: Path, *, output: Optional[Path] = None, address: Optional[str] = None, verbose: bool = False, console: Optional[Console] = None) -> Path:
    """Train once on Ray; returns the run directory."""
    from orchestrator.data import prepare_data
    from orchestrator.planning import plan_workers
    from orchestrator.runtime import cluster_resources, init_ray
    from orchestrator.train import run_training
    from orchestrator.ui import EpochProgress, metrics_table

    console = console or Console()
    with console.status("starting Ray"):
        init_ray(address, verbose=verbose)
    resources = cluster_resources()
    plan = plan_workers(spec.scaling, resources)  # refuses an infeasible spec before any work
    run = new_run_dir(spec, spec_path, output)
    console.print(
        f"run [bold]{run}[/]\n"
        f"cluster: {resources.cpus:g} CPUs, {resources.gpus:g} GPUs -> {plan.workers} workers x "
        f"{plan.cpus_per_worker:g} CPU" + (f" + {plan.gpus_per_worker:g} GPU" if plan.gpus_per_worker else ""),
        highlight=False,
    )
    with console.status("reading data, splitting, fitting preprocessing on the training split"):
        prepared = prepare_data(spec)
    pre = prepared.preprocessor
    console.print(
        f"data: {prepared.source}  task={pre.task}  train rows={pre.train_rows}  "
        f"inputs={pre.input_shape}  outputs={pre.num_outputs}",
        highlight=False,
    )
    with EpochProgress(console, spec.train.epochs) as progress:
        outcome = run_training(spec, run, plan, prepared=prepared, on_event=progress.on_event)
    write_metrics(run, outcome.epochs)
    write_json(run / "test_metrics.json", outcome.test_metrics)
    write_json(run / "summary.json", {
        "name": spec.name,
        "status": "succeeded",
        "epochs_run": len(outcome.epochs),
        "best_checkpoint": outcome.best_checkpoint,
        "best_epoch": outcome.best_metrics.get("epoch"),
        "checkpoint_metric": spec.checkpoint.metric,
        "best_validation": {k: v for k, v in outcome.best_metrics.items() if k.startswith("val_")},
        "test": outcome.test_metrics,
        "worker_failures": outcome.failures,
        "wall_time_s": round(outcome.wall_time_s, 1),
    })
    console.print(metrics_table(f"best checkpoint (epoch {outcome.best_metrics.get('epoch')}) on the held-out test split", outcome.test_metrics))
    console.print(f"best checkpoint: {outcome.best_checkpoint}", highlight=False)
    return run
