"""Search planning, pure (no Ray): how many trials run at once and what each reserves, the encoding
of spec search spaces for Tune (list choices by index) and back, each trial's job spec, the trial
records kept in trials.json, how a finished trial is classified and which one wins. search.py
runs the search with Ray Tune.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

from orchestrator.errors import ResourceError, RunDirError
from orchestrator.spec import METRIC_MODES, JobSpec, Param, TuneSpec, apply_overrides, parse_spec
from orchestrator.train.plan import DATA_RESERVE_CPUS, ClusterResources, WorkerPlan, plan_workers

TRIAL_DRIVER_CPUS = 0.01  # the trial function only drives its TorchTrainer
MIN_AUTO_CONCURRENT = 2
TUNE_DIR = "tune"
TRIALS_DIR = "trials"
STARTS_FILE = "trial_starts.jsonl"

# ------------------------------------------------------------------------------ search space


def _is_scalar(v: Any) -> bool:
    return v is None or isinstance(v, (bool, int, float, str))


def _by_index(p: Param) -> bool:
    """A choice or grid with a list among its values is searched by index (Tune's values are scalars)."""
    return p.kind in ("choice", "grid") and not all(map(_is_scalar, p.values))


def encode_space(space: dict[str, Param]) -> dict[str, tuple[str, tuple]]:
    """Spec distributions -> (the ray.tune function, its arguments) for each dimension; search.py
    calls them. Spec randint bounds are both inclusive, Tune's high is not."""
    out: dict[str, tuple[str, tuple]] = {}
    for key, p in space.items():
        k, v = p.kind, p.values
        if k in ("loguniform", "uniform"):
            out[key] = (k, (v[0], v[1]))
        elif k == "randint":
            out[key] = (k, (v[0], v[1] + 1))
        else:
            values = list(range(len(v))) if _by_index(p) else list(v)
            out[key] = ("choice" if k == "choice" else "grid_search", (values,))
    return out


def decode_config(config: dict[str, Any], space: dict[str, Param]) -> dict[str, Any]:
    """A Tune config -> the spec values it stands for (undoing the index encoding of list choices)."""
    out = {}
    for key, value in config.items():
        p = space.get(key)
        if p is not None and _by_index(p):
            value = p.values[int(value)]
        out[key] = value
    return out


def spec_point(spec: JobSpec) -> dict[str, Any]:
    """The spec's own values for every search dimension, encoded as Tune sees them."""
    assert spec.tune is not None, "a search needs the spec's tune section"
    base = spec.model_dump(mode="json")
    point = {}
    for key, p in spec.tune.space.items():
        node: Any = base
        for part in key.split("."):
            node = node.get(part) if isinstance(node, dict) else None
        if node is None:
            return {}  # e.g. early stopping off in the spec: no single point stands for it
        if p.kind in ("choice", "grid"):
            if node not in p.values:
                return {}
            node = p.values.index(node) if _by_index(p) else node
        elif p.kind in ("loguniform", "uniform", "randint") and not (p.values[0] <= node <= p.values[1]):
            return {}
        point[key] = node
    return point


def trial_spec(base: dict, overrides: dict[str, Any], tune_metric: str, base_dir: str, *, one_process: bool = False) -> JobSpec:
    """The job spec one trial trains. `one_process`: the trial trains in one process (an in-process
    trial): its one worker takes the spec's global batch, workers x batch_size rows per step, so a
    trial whose workers were merged (one_process_plan) trains with the steps the spec describes."""
    d = apply_overrides(base, overrides)
    if one_process:
        scaling = d.get("scaling") or {}
        d["train"] = {**d["train"], "batch_size": d["train"]["batch_size"] * scaling.get("workers", 1)}
        d["scaling"] = {**scaling, "workers": 1}
    d.pop("tune", None)
    d.pop("promote", None)
    d.pop("serve", None)
    d["checkpoint"] = {**d.get("checkpoint", {}), "metric": tune_metric}  # rank a trial's checkpoints by the search metric
    return parse_spec(d, base_dir=Path(base_dir))


# ---------------------------------------------------------------------------------- planning


def expected_trials(t: TuneSpec) -> int:
    return t.num_samples * max(1, math.prod(len(p.values) for p in t.space.values() if p.kind == "grid"))


def fixed_concurrency(t: TuneSpec) -> Optional[int]:
    """Trials at once when the spec fixes it (tune.max_concurrent, at most the trials there are);
    None for auto, which plan_search derives from the cluster."""
    if t.max_concurrent == "auto":
        return None
    return max(1, min(int(t.max_concurrent), expected_trials(t)))


def plan_search(spec: JobSpec, cluster: ClusterResources) -> tuple[int, WorkerPlan]:
    """How many trials run at once and what each of their workers reserves."""
    t = spec.tune
    assert t is not None, "a search needs the spec's tune section"
    n_trials = expected_trials(t)
    workers = spec.scaling.workers

    def plan(k: int) -> WorkerPlan:
        return plan_workers(
            spec.scaling,
            ClusterResources(
                cpus=cluster.cpus - TRIAL_DRIVER_CPUS * k,
                gpus=cluster.gpus,
                node_cpus=cluster.node_cpus,
                node_gpus=cluster.node_gpus,
            ),
            concurrent_runs=k,
        )

    fixed = fixed_concurrency(t)
    if fixed is not None:
        return fixed, one_process_plan(spec, plan(fixed))
    # One whole CPU per worker where the cluster has them. But at least two trials at once: a
    # trial spends much of its life starting its worker group, and a second trial's start-up
    # overlaps the first one's compute (measured: 8-trial digits search 287 s -> 205 s on 2 CPUs).
    k = max(MIN_AUTO_CONCURRENT, math.floor((cluster.cpus - DATA_RESERVE_CPUS) / workers))
    if spec.scaling.gpus_per_worker:
        k = min(k, max(1, math.floor(cluster.gpus / (workers * spec.scaling.gpus_per_worker))))
    k = max(1, min(k, n_trials))
    while True:
        try:
            return k, one_process_plan(spec, plan(k))
        except ResourceError:
            if k == 1:
                raise
            k -= 1


def one_process_plan(spec: JobSpec, plan: WorkerPlan) -> WorkerPlan:
    """A search trial whose DDP workers would share one CPU or less trains in one process instead.

    With `scaling.cpus_per_worker: auto` on a small cluster (e.g. 2 CPUs: two trials of two
    workers get 0.24 CPU per worker), data parallelism has no cores to run on in parallel, yet
    every trial would pay a Train controller, a worker process per rank (each importing torch),
    Train's helper actors and Ray Data's split coordinator: about 23 CPU-seconds per digits trial
    against under 5 for its epochs. Such a trial trains in its Tune trial process on the workers'
    CPUs together, with the spec's global batch (`trial_spec(one_process=True)`), so each step
    sees the same rows as a step of the spec's DDP workers. An explicit `cpus_per_worker` or any
    GPU keeps the spec's workers as they are."""
    if plan.workers > 1 and not plan.gpus_per_worker and spec.scaling.cpus_per_worker == "auto" and plan.total_cpus <= 1 + 1e-9:
        return WorkerPlan(workers=1, cpus_per_worker=round(plan.total_cpus, 2), gpus_per_worker=0.0, torch_threads=1)
    return plan


def in_process_trials(plan: WorkerPlan) -> bool:
    """One CPU worker per trial: the trial trains in its own process (see search.py's docstring),
    either because the spec has one worker or because one_process_plan merged its workers."""
    return plan.workers == 1 and not plan.gpus_per_worker


def trial_resources(plan: WorkerPlan) -> dict[str, float]:
    # An in-process trial is its own (only) worker; otherwise the trial function only drives its
    # TorchTrainer, whose workers reserve their own resources.
    return plan.resources_per_worker() if in_process_trials(plan) else {"CPU": TRIAL_DRIVER_CPUS}


# ------------------------------------------------------------------------------ trial records


@dataclass
class TrialRecord:
    trial_id: str
    config: dict
    status: str = "PENDING"
    epochs: list[dict] = field(default_factory=list)
    error: Optional[str] = None

    def best(self, metric: str) -> Optional[float]:
        vals = [e[metric] for e in self.epochs if isinstance(e.get(metric), (int, float)) and math.isfinite(e[metric])]
        if not vals:
            return None
        return min(vals) if METRIC_MODES[metric] == "min" else max(vals)


FINAL_STATUSES = ("TERMINATED", "PRUNED", "EARLY_STOPPED", "ERROR")


def finished_status(epochs: list[dict], max_epochs: int) -> str:
    """How a trial that ended without an error ended, from the epochs it reported."""
    if epochs and epochs[-1].get("early_stopped"):
        return "EARLY_STOPPED"  # the trial's own early stopping (train.early_stopping)
    if len(epochs) < max_epochs:
        return "PRUNED"  # stopped by the scheduler (ASHA)
    return "TERMINATED"


def pick_winner(records: list[TrialRecord], metric: str) -> Optional[TrialRecord]:
    """The trial with the best value of `metric` in any epoch; failed trials and trials that never
    reported it do not count. Ties go to the earlier record."""
    scored = [(value, r) for r in records if r.status != "ERROR" and (value := r.best(metric)) is not None]
    if not scored:
        return None
    sign = 1 if METRIC_MODES[metric] == "min" else -1
    return min(scored, key=lambda vr: sign * vr[0])[1]


def load_records(path: Path) -> dict[str, TrialRecord]:
    """trials.json of a run directory (none yet: no records)."""
    if not path.exists():
        return {}
    try:
        return {r["trial_id"]: TrialRecord(**r) for r in json.loads(path.read_text())}
    except (ValueError, TypeError, KeyError) as e:
        raise RunDirError(
            f"{path}: damaged trial records ({type(e).__name__}: {e}); the search cannot be resumed, run its spec again"
        ) from None
