"""Hyperparameter and regularisation search with Ray Tune.

Ray 2.60 (Train V2): `Tuner(TorchTrainer)` no longer works, so each Tune trial is a function
trainable that runs its own `TorchTrainer` and relays metrics with `TuneReportCallback`. The
data is read, split and preprocessed once on the driver and shared by every trial.

A trial with one CPU worker has nothing to distribute, so it trains in its own Tune trial process
and reports metrics and checkpoints straight to Tune (train.TuneTrialSession): that saves it a
Train controller, a worker process, a placement group and the dataset actors, which is most of
what a trial costs before its first epoch.
"""

from __future__ import annotations

import json
import math
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Optional


from ray import tune
from ray.tune.integration.ray_train import TuneReportCallback

from orchestrator.data import PreparedData
from orchestrator.errors import OrchestratorError, ResourceError
from orchestrator.planning import DATA_RESERVE_CPUS, ClusterResources, WorkerPlan, plan_workers
from orchestrator.spec import JobSpec, METRIC_MODES, Param, TuneSpec, apply_overrides, parse_spec

TRIAL_DRIVER_CPUS = 0.01  # the trial function only drives its TorchTrainer
MIN_AUTO_CONCURRENT = 2
TUNE_DIR = "tune"
TRIALS_DIR = "trials"
STARTS_FILE = "trial_starts.jsonl"

# ------------------------------------------------------------------------------ search space


def _is_scalar(v: Any) -> bool:
    return v is None or isinstance(v, (bool, int, float, str))


def to_tune_space(space: dict[str, Param]) -> dict[str, Any]:
    """Spec distributions -> Ray Tune domains. Non-scalar choices (lists) are searched by index."""
    out = {}
    for key, p in space.items():
        k, v = p.kind, p.values
        if k == "loguniform":
            out[key] = tune.loguniform(*v)
        elif k == "uniform":
            out[key] = tune.uniform(*v)
        elif k == "randint":
            out[key] = tune.randint(v[0], v[1] + 1)  # spec bounds are inclusive, Tune's high is not
        elif k == "choice":
            out[key] = tune.choice(v if all(map(_is_scalar, v)) else list(range(len(v))))
        else:
            out[key] = tune.grid_search(v if all(map(_is_scalar, v)) else list(range(len(v))))
    return out


def decode_config(config: dict[str, Any], space: dict[str, Param]) -> dict[str, Any]:
    """A Tune config -> the spec values it stands for (undoing the index encoding of list choices)."""
    out = {}
    for key, value in config.items():
        p = space.get(key)
        if p is not None and p.kind in ("choice", "grid") and not all(map(_is_scalar, p.values)):
            value = p.values[int(value)]
        out[key] = value
    return out


def spec_point(spec: JobSpec) -> dict[str, Any]:
    """The spec's own values for every search dimension, encoded as Tune sees them."""
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
            node = node if all(map(_is_scalar, p.values)) else p.values.index(node)
        elif p.kind in ("loguniform", "uniform", "randint") and not (p.values[0] <= node <= p.values[1]):
            return {}
        point[key] = node
    return point


def trial_spec(base: dict, overrides: dict[str, Any], tune_metric: str, base_dir: str) -> JobSpec:
    d = apply_overrides(base, overrides)
    d.pop("tune", None)
    d.pop("promote", None)
    d.pop("serve", None)
    d["checkpoint"] = {**d.get("checkpoint", {}), "metric": tune_metric}  # rank a trial's checkpoints by the search metric
    return parse_spec(d, base_dir=Path(base_dir))


# ---------------------------------------------------------------------------------- planning


def expected_trials(t: TuneSpec) -> int:
    return t.num_samples * max(1, math.prod(len(p.values) for p in t.space.values() if p.kind == "grid"))


def plan_search(spec: JobSpec, cluster: ClusterResources) -> tuple[int, WorkerPlan]:
    """How many trials run at once and what each of their workers reserves."""
    t: TuneSpec = spec.tune
    n_trials = expected_trials(t)
    workers = spec.scaling.workers
    def plan(k: int) -> WorkerPlan:
        return plan_workers(spec.scaling, ClusterResources(
            cpus=cluster.cpus - TRIAL_DRIVER_CPUS * k, gpus=cluster.gpus,
            node_cpus=cluster.node_cpus, node_gpus=cluster.node_gpus,
        ), concurrent_runs=k)

    if t.max_concurrent != "auto":
        k = max(1, min(int(t.max_concurrent), n_trials))
        return k, plan(k)
    # One whole CPU per worker where the cluster has them. But at least two trials at once: a
    # trial spends much of its life starting its worker group, and a second trial's start-up
    # overlaps the first one's compute (measured: 8-trial digits search 287 s -> 205 s on 2 CPUs).
    k = max(MIN_AUTO_CONCURRENT, math.floor((cluster.cpus - DATA_RESERVE_CPUS) / workers))
    if spec.scaling.gpus_per_worker:
        k = min(k, max(1, math.floor(cluster.gpus / (workers * spec.scaling.gpus_per_worker))))
    k = max(1, min(k, n_trials))
    while True:
        try:
            return k, plan(k)
        except ResourceError:
            if k == 1:
                raise
            k -= 1


# ------------------------------------------------------------------------------- the trial


def in_process_trials(plan: WorkerPlan) -> bool:
    """One CPU worker per trial: the trial trains in its own process (see the module docstring)."""
    return plan.workers == 1 and not plan.gpus_per_worker


def trial_resources(plan: WorkerPlan) -> dict[str, float]:
    # An in-process trial is its own (only) worker; otherwise the trial function only drives its
    # TorchTrainer, whose workers reserve their own resources.
    return plan.resources_per_worker() if in_process_trials(plan) else {"CPU": TRIAL_DRIVER_CPUS}


def run_trial(config: dict, *, base: dict, base_dir: str, space: dict, tune_metric: str, prepared: PreparedData, plan: WorkerPlan, trials_dir: str) -> None:
    """One Tune trial = one Ray Train run of the spec with this trial's values."""
    from orchestrator.train import TuneTrialSession, build_loop_config, build_trainer, check_diverged, loop_datasets, train_loop_per_worker

    trial_id = tune.get_context().get_trial_id()
    overrides = decode_config(config, {k: Param.model_validate(v) for k, v in space.items()})
    spec = trial_spec(base, overrides, tune_metric, base_dir)
    with open(os.path.join(trials_dir, STARTS_FILE), "a") as f:  # lets tests and users see (re)starts
        f.write(json.dumps({"trial_id": trial_id, "time": time.time(), "pid": os.getpid()}) + "\n")
    if in_process_trials(plan):
        check_diverged(train_loop_per_worker(build_loop_config(spec, prepared, plan), TuneTrialSession(loop_datasets(prepared))))
        return
    trainer = build_trainer(spec, prepared, plan, storage_path=trials_dir, name=f"trial-{trial_id}", callbacks=[TuneReportCallback()])
    result = trainer.fit()
    check_diverged(result)  # a diverged trial is marked failed, with the reason


# ------------------------------------------------------------------------------ the search


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

# Who wants to hear about trial changes (the CLI's live table). Module-level rather than held by
# the callback, because Tune pickles its callbacks with the experiment and restores them on resume.
LISTENERS: list[Callable[["TrialTracker"], None]] = []


class TrialTracker(tune.Callback):
    """Driver-side record of every trial (config, metrics per epoch, status, error), saved as it changes."""

    def __init__(self, space: dict[str, Param], path: Path, max_epochs: int):
        self.space, self.path, self.max_epochs = space, path, max_epochs
        self.records: dict[str, TrialRecord] = {}
        self._load()

    def _load(self) -> None:
        self.records = {}
        if self.path.exists():  # resuming: keep what earlier sessions recorded
            for r in json.loads(self.path.read_text()):
                self.records[r["trial_id"]] = TrialRecord(**r)

    def __getstate__(self) -> dict:
        return {"space": self.space, "path": self.path, "max_epochs": self.max_epochs}

    def __setstate__(self, state: dict) -> None:
        self.space, self.path, self.max_epochs = state["space"], state["path"], state["max_epochs"]
        self._load()

    def _rec(self, trial) -> TrialRecord:
        rec = self.records.get(trial.trial_id)
        if rec is None:
            rec = self.records[trial.trial_id] = TrialRecord(trial.trial_id, decode_config(_flat(trial.config), self.space))
        return rec

    def _save(self) -> None:
        tmp = self.path.with_suffix(".tmp")
        tmp.write_text(json.dumps([r.__dict__ for r in self.records.values()], indent=2, default=str))
        tmp.replace(self.path)
        for listener in LISTENERS:
            listener(self)

    def on_trial_start(self, iteration, trials, trial, **info):
        self._rec(trial).status = "RUNNING"
        self._save()

    def on_trial_result(self, iteration, trials, trial, result, **info):
        rec = self._rec(trial)
        row = {k: v for k, v in result.items() if k in ("epoch", "early_stopped") or k.startswith(("train_", "val_", "lr", "epoch_time"))}
        row["time_total_s"] = result.get("time_total_s")
        row["timestamp"] = result.get("timestamp")
        rec.epochs = [e for e in rec.epochs if e.get("epoch") != row.get("epoch")] + [row]
        self._save()

    def on_trial_complete(self, iteration, trials, trial, **info):
        rec = self._rec(trial)
        last = rec.epochs[-1] if rec.epochs else {}
        if last.get("early_stopped"):
            rec.status = "EARLY_STOPPED"  # the trial's own early stopping (train.early_stopping)
        elif len(rec.epochs) < self.max_epochs:
            rec.status = "PRUNED"  # stopped by the scheduler (ASHA)
        else:
            rec.status = "TERMINATED"
        self._save()

    def on_trial_error(self, iteration, trials, trial, **info):
        rec = self._rec(trial)
        rec.status = "ERROR"
        rec.error = _error_summary(trial)
        self._save()


def _flat(config: dict) -> dict:
    return {k: v for k, v in config.items()}


def _error_summary(trial) -> str:
    """The last meaningful line of a trial's error (Ray wraps the root cause several times)."""
    text = ""
    try:
        path = trial.error_file or ""
        if path and os.path.exists(path):
            text = Path(path).read_text()
    except Exception:
        pass
    text = text or str(getattr(trial, "error_msg", "") or "")
    lines = [l.strip() for l in text.strip().splitlines() if l.strip()]
    for l in reversed(lines):
        if ("Error" in l or "Exception" in l) and not l.startswith(("File ", "raise ", "^")):
            return l[:400]
    return (lines[-1] if lines else "unknown error")[:400]


def build_tuner(spec: JobSpec, prepared: PreparedData, plan: WorkerPlan, concurrent: int, run_dir: Path, tracker: TrialTracker, *, restore: bool = False, scheduler_override: Optional[str] = None) -> tune.Tuner:
    from ray.tune.schedulers import ASHAScheduler, FIFOScheduler
    from ray.tune.search import BasicVariantGenerator, ConcurrencyLimiter

    t = spec.tune
    metric, mode = spec.tune_metric, METRIC_MODES[spec.tune_metric]
    if in_process_trials(plan):
        # Tune saves its experiment state each time a trial has made `checkpoint.keep` checkpoints
        # (so that it never points at a deleted one) and warns when that happens more than once in
        # 5 s, i.e. every epoch of a short-epoch search. The state is a few KB on local disk.
        os.environ.setdefault("TUNE_WARN_EXCESSIVE_EXPERIMENT_CHECKPOINT_SYNC_THRESHOLD_S", "0")
    trials_dir = run_dir / TRIALS_DIR
    trials_dir.mkdir(parents=True, exist_ok=True)
    base = spec.model_dump(mode="json")
    trainable = tune.with_resources(
        tune.with_parameters(
            run_trial, base=base, base_dir=str(spec.base_dir), space={k: v.model_dump(mode="json", exclude_none=True) for k, v in t.space.items()},
            tune_metric=metric, prepared=prepared, plan=plan, trials_dir=str(trials_dir),
        ),
        trial_resources(plan),
    )
    if restore:
        return tune.Tuner.restore(str(run_dir / TUNE_DIR), trainable=trainable, resume_unfinished=True, resume_errored=False, restart_errored=False)

    has_grid = any(p.kind == "grid" for p in t.space.values())
    # A grid already enumerates its points; elsewhere the spec's own settings go first, so the
    # search can only match or beat the untuned config on validation.
    point = spec_point(spec) if t.include_spec_config and not has_grid else {}
    if t.search == "optuna":
        from ray.tune.search.optuna import OptunaSearch
        from optuna.samplers import TPESampler

        searcher = OptunaSearch(metric=metric, mode=mode, points_to_evaluate=[point] if point else None,
                                sampler=TPESampler(seed=t.seed, n_startup_trials=min(4, t.num_samples)))
        searcher = ConcurrencyLimiter(searcher, max_concurrent=concurrent)
    else:
        searcher = BasicVariantGenerator(points_to_evaluate=[point] if point else None, random_state=t.seed, max_concurrent=concurrent)

    kind = scheduler_override or t.scheduler.type
    if kind == "asha":
        sch = t.scheduler if t.scheduler.type == "asha" else None
        max_t = (sch.max_epochs if sch and sch.max_epochs else None) or spec.train.epochs
        scheduler = ASHAScheduler(time_attr="training_iteration", max_t=max_t,
                                  grace_period=min(sch.grace_period if sch else 1, max_t), reduction_factor=sch.reduction_factor if sch else 2)
    else:
        scheduler = FIFOScheduler()
    return tune.Tuner(
        trainable,
        param_space=to_tune_space(t.space),
        tune_config=tune.TuneConfig(
            metric=metric, mode=mode, num_samples=t.num_samples, search_alg=searcher, scheduler=scheduler,
            time_budget_s=t.time_budget_s, reuse_actors=False,
        ),
        run_config=tune.RunConfig(
            name=TUNE_DIR, storage_path=str(run_dir), callbacks=[tracker], verbose=0,
            failure_config=tune.FailureConfig(max_failures=0),
            # Used by in-process trials only (the others keep their checkpoints in their Train run).
            checkpoint_config=tune.CheckpointConfig(
                num_to_keep=spec.checkpoint.keep, checkpoint_score_attribute=spec.checkpoint.metric,
                checkpoint_score_order=spec.checkpoint.mode,
            ),
        ),
    )


@dataclass
class SearchOutcome:
    records: list[TrialRecord]
    winner: Optional[TrialRecord]
    winner_checkpoint: Optional[str]
    interrupted: bool
    wall_time_s: float


def winner_checkpoint(run_dir: Path, trial_id: str, metric: str, results=None) -> str:
    """The winner's best checkpoint: from its Train run, or from Tune for an in-process trial."""
    from ray.train import Result

    train_run = run_dir / TRIALS_DIR / f"trial-{trial_id}"
    if (train_run / "checkpoint_manager_snapshot.json").exists():
        result = Result.from_path(str(train_run))
    else:
        found = [r for r in (results or []) if (r.metrics or {}).get("trial_id") == trial_id]
        if not found:
            raise OrchestratorError(f"trial {trial_id} left no checkpoint")
        result = found[0]
    best = result.get_best_checkpoint(metric, METRIC_MODES[metric]) or result.checkpoint
    if best is None:
        raise OrchestratorError(f"trial {trial_id} left no checkpoint")
    return best.path


def run_search(spec: JobSpec, run_dir: Path, prepared: PreparedData, cluster: ClusterResources, *, restore: bool = False, on_change: Optional[Callable[[TrialTracker], None]] = None, scheduler_override: Optional[str] = None) -> SearchOutcome:
    t0 = time.perf_counter()
    concurrent, plan = plan_search(spec, cluster)
    tracker = TrialTracker(spec.tune.space, run_dir / "trials.json", spec.train.epochs)
    tuner = build_tuner(spec, prepared, plan, concurrent, run_dir, tracker, restore=restore, scheduler_override=scheduler_override)
    if on_change:
        LISTENERS.append(on_change)
    try:
        results = tuner.fit()
    finally:
        if on_change:
            LISTENERS.remove(on_change)
    if restore:  # the restored experiment used its own (unpickled) tracker; read what it saved
        tracker._load()
    metric = spec.tune_metric
    records = list(tracker.records.values())
    finished = [r for r in records if r.status in FINAL_STATUSES]
    # Tune returns normally after Ctrl-C, so an interrupt shows as trials missing or unfinished
    # (the time budget is the only other reason for fewer trials than planned).
    out_of_time = spec.tune.time_budget_s is not None and time.perf_counter() - t0 >= 0.95 * spec.tune.time_budget_s
    interrupted = len(finished) < len(records) or (len(finished) < expected_trials(spec.tune) and not out_of_time)
    scored = [r for r in records if r.best(metric) is not None and r.status != "ERROR"]
    winner = None
    if scored:
        key = (lambda r: r.best(metric)) if METRIC_MODES[metric] == "min" else (lambda r: -r.best(metric))
        winner = sorted(scored, key=key)[0]
    ckpt = winner_checkpoint(run_dir, winner.trial_id, metric, results) if winner and not interrupted else None
    return SearchOutcome(records=records, winner=winner, winner_checkpoint=ckpt, interrupted=interrupted, wall_time_s=time.perf_counter() - t0)
