"""Hyperparameter and regularisation search with Ray Tune (the pure planning is in plan.py).

Ray 2.60 (Train V2): `Tuner(TorchTrainer)` no longer works, so each Tune trial is a function
trainable that runs its own `TorchTrainer` and relays metrics with `TuneReportCallback`. The
data is read, split and preprocessed once on the driver and shared by every trial.

A trial with one CPU worker has nothing to distribute, so it trains in its own Tune trial process
and reports metrics and checkpoints straight to Tune (train/driver.py TuneTrialSession): that saves it a
Train controller, a worker process, a placement group and the dataset actors, which is most of
what a trial costs before its first epoch. A trial whose DDP workers would share one CPU or less
(`cpus_per_worker: auto` on a small cluster) trains in one process too, with the spec's global
batch (plan.one_process_plan).
"""

from __future__ import annotations

import json
import math
import os
import pickle
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Optional

from ray import tune
from ray.tune.integration.ray_train import TuneReportCallback

from orchestrator.data.ingest import PreparedData
from orchestrator.errors import OrchestratorError, RunDirError, last_line
from orchestrator.spec import METRIC_MODES, TRAIN_PREFIX, VAL_PREFIX, AshaSpec, JobSpec, Param
from orchestrator.train.plan import WorkerPlan
from orchestrator.tune.plan import (
    FINAL_STATUSES,
    STARTS_FILE,
    TRIALS_DIR,
    TUNE_DIR,
    TrialRecord,
    decode_config,
    encode_space,
    expected_trials,
    finished_status,
    in_process_trials,
    load_records,
    pick_winner,
    spec_point,
    trial_resources,
    trial_spec,
)

# ------------------------------------------------------------------------------ search space


def to_tune_space(space: dict[str, Param]) -> dict[str, Any]:
    """Spec distributions -> Ray Tune domains (the encoding is plan.encode_space)."""
    return {key: getattr(tune, fn)(*args) for key, (fn, args) in encode_space(space).items()}


def run_trial(
    config: dict, *, base: dict, base_dir: str, space: dict, tune_metric: str, prepared: PreparedData, plan: WorkerPlan, trials_dir: str
) -> None:
    """One Tune trial = one Ray Train run of the spec with this trial's values."""
    from orchestrator.train.driver import TuneTrialSession, build_trainer, check_diverged, loop_datasets
    from orchestrator.train.loop import run_loop
    from orchestrator.train.plan import build_loop_config

    trial_id = tune.get_context().get_trial_id()
    overrides = decode_config(config, {k: Param.model_validate(v) for k, v in space.items()})
    spec = trial_spec(base, overrides, tune_metric, base_dir, one_process=in_process_trials(plan))
    with open(os.path.join(trials_dir, STARTS_FILE), "a") as f:  # lets tests and users see (re)starts
        f.write(json.dumps({"trial_id": trial_id, "time": time.time(), "pid": os.getpid()}) + "\n")
    if in_process_trials(plan):
        check_diverged(run_loop(build_loop_config(spec, prepared, plan), TuneTrialSession(loop_datasets(prepared))))
        return
    trainer = build_trainer(spec, prepared, plan, storage_path=trials_dir, name=f"trial-{trial_id}", callbacks=[TuneReportCallback()])
    result = trainer.fit()
    check_diverged(result)  # a diverged trial is marked failed, with the reason


# ------------------------------------------------------------------------------ the search


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
        self.records = load_records(self.path)  # resuming: keep what earlier sessions recorded

    def __reduce__(self):
        # Tune pickles its callbacks into tune/tuner.pkl and unpickles them on restore. A pickled
        # tracker stands for "this session's tracker": one that kept its path would record a
        # resumed copy of a run directory into the original one.
        return (_active_tracker, ())

    def __setstate__(self, state: dict) -> None:  # pickled by an earlier version, which kept the path
        self.__dict__ = _active_tracker().__dict__

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
        row = {
            k: v
            for k, v in result.items()
            if k in ("epoch", "early_stopped") or k.startswith((TRAIN_PREFIX, VAL_PREFIX, "lr", "epoch_time"))
        }
        row["time_total_s"] = result.get("time_total_s")
        row["timestamp"] = result.get("timestamp")
        rec.epochs = [e for e in rec.epochs if e.get("epoch") != row.get("epoch")] + [row]
        self._save()

    def on_trial_complete(self, iteration, trials, trial, **info):
        rec = self._rec(trial)
        rec.status = finished_status(rec.epochs, self.max_epochs)
        self._save()

    def on_trial_error(self, iteration, trials, trial, **info):
        rec = self._rec(trial)
        rec.status = "ERROR"
        rec.error = _error_summary(trial)
        self._save()


_ACTIVE: list[TrialTracker] = []  # the tracker of the search running in this process (run_search)


def _active_tracker() -> TrialTracker:
    if not _ACTIVE:
        raise OrchestratorError("a search's trial tracker can only be restored while that search runs (orchestrator resume)")
    return _ACTIVE[-1]


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
    lines = [s.strip() for s in text.strip().splitlines() if s.strip()]
    for line in reversed(lines):
        if ("Error" in line or "Exception" in line) and not line.startswith(("File ", "raise ", "^")):
            return line[:400]
    return (last_line(text, "unknown error") or "unknown error")[:400]


def build_tuner(
    spec: JobSpec,
    prepared: PreparedData,
    plan: WorkerPlan,
    concurrent: int,
    run_dir: Path,
    tracker: TrialTracker,
    *,
    restore: bool = False,
    scheduler_override: Optional[str] = None,
) -> tune.Tuner:
    from ray.tune.schedulers import ASHAScheduler, FIFOScheduler
    from ray.tune.search import BasicVariantGenerator, ConcurrencyLimiter

    t = spec.tune
    assert t is not None, "a search needs the spec's tune section"
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
            run_trial,
            base=base,
            base_dir=str(spec.base_dir),
            space={k: v.model_dump(mode="json", exclude_none=True) for k, v in t.space.items()},
            tune_metric=metric,
            prepared=prepared,
            plan=plan,
            trials_dir=str(trials_dir),
        ),
        trial_resources(plan),
    )
    if restore:
        try:
            return tune.Tuner.restore(
                str(run_dir / TUNE_DIR), trainable=trainable, resume_unfinished=True, resume_errored=False, restart_errored=False
            )
        except (OSError, EOFError, ValueError, TypeError, AttributeError, ImportError, pickle.UnpicklingError) as e:
            raise RunDirError(
                f"{run_dir / TUNE_DIR / 'tuner.pkl'}: cannot be restored ({type(e).__name__}: {e}); run the search's spec again"
            ) from None

    has_grid = any(p.kind == "grid" for p in t.space.values())
    # A grid already enumerates its points; elsewhere the spec's own settings go first, so the
    # search can only match or beat the untuned config on validation.
    point = spec_point(spec) if t.include_spec_config and not has_grid else {}
    if t.search == "optuna":
        from optuna.samplers import TPESampler
        from ray.tune.search.optuna import OptunaSearch

        searcher = OptunaSearch(
            metric=metric,
            mode=mode,
            points_to_evaluate=[point] if point else None,
            sampler=TPESampler(seed=t.seed, n_startup_trials=min(4, t.num_samples)),
        )
        searcher = ConcurrencyLimiter(searcher, max_concurrent=concurrent)
    else:
        searcher = BasicVariantGenerator(points_to_evaluate=[point] if point else None, random_state=t.seed, max_concurrent=concurrent)

    kind = scheduler_override or t.scheduler.type
    if kind == "asha":
        sch = t.scheduler if isinstance(t.scheduler, AshaSpec) else None
        max_t = (sch.max_epochs if sch and sch.max_epochs else None) or spec.train.epochs
        scheduler = ASHAScheduler(
            time_attr="training_iteration",
            max_t=max_t,
            grace_period=min(sch.grace_period if sch else 1, max_t),
            reduction_factor=sch.reduction_factor if sch else 2,
        )
    else:
        scheduler = FIFOScheduler()
    return tune.Tuner(
        trainable,
        param_space=to_tune_space(t.space),
        tune_config=tune.TuneConfig(
            metric=metric,
            mode=mode,
            num_samples=t.num_samples,
            search_alg=searcher,
            scheduler=scheduler,
            # an in-process trial's next trial reuses its process (measured on 2 CPUs: 3.6 s from
            # trial start to first epoch in a new process, 0.2-0.3 s in a reused one); a trial that
            # drives a TorchTrainer would still start its controller and workers anew
            time_budget_s=t.time_budget_s,
            reuse_actors=in_process_trials(plan),
        ),
        run_config=tune.RunConfig(
            name=TUNE_DIR,
            storage_path=str(run_dir),
            callbacks=[tracker],
            verbose=0,
            failure_config=tune.FailureConfig(max_failures=0),
            # Used by in-process trials only (the others keep their checkpoints in their Train run).
            checkpoint_config=tune.CheckpointConfig(
                num_to_keep=spec.checkpoint.keep,
                checkpoint_score_attribute=spec.checkpoint.metric,
                checkpoint_score_order=spec.checkpoint.mode,
            ),
        ),
    )


# ---------------------------------------------------------------------------- resuming a run


def _checkpoint_problem(d: Path) -> Optional[str]:
    """Why a trial checkpoint folder cannot be resumed from (None if it can)."""
    from orchestrator.train.checkpoint import STATE_FILE, read_state

    if not d.is_dir():
        return "missing"
    try:
        read_state(d)
    except Exception as e:  # truncated by a kill, or altered: unpickling fails in many ways
        return f"{d / STATE_FILE} cannot be loaded ({type(e).__name__}: {' '.join(str(e).split())[:120]})"
    return None


def _repair_train_snapshot(snapshot: Path, warnings: list[str]) -> None:
    """Drop missing, torn or altered checkpoints from a trial's Ray Train run (which resumes from
    its latest checkpoint, and refuses to start when a listed one is missing)."""
    try:
        state = json.loads(snapshot.read_text())
        results, indices = state["checkpoint_results"], state["checkpoint_report_indices"]
    except (ValueError, KeyError, TypeError) as e:
        raise RunDirError(
            f"{snapshot}: damaged ({type(e).__name__}: {e}); delete that trial's folder "
            f"({snapshot.parent.name}) to run it again from scratch"
        ) from None
    keep = []
    for r, i in zip(results, indices):
        problem = _checkpoint_problem(snapshot.parent / r["checkpoint_dir_name"])
        if problem is None:
            keep.append((r, i))
        elif problem != "missing":
            warnings.append(f"{snapshot.parent.name}: skipping checkpoint {problem}")
    if len(keep) == len(results):
        return
    state["checkpoint_results"], state["checkpoint_report_indices"] = [r for r, _ in keep], [i for _, i in keep]
    names = {r["checkpoint_dir_name"] for r, _ in keep}
    latest = state.get("latest_checkpoint_result")
    if latest is not None and latest["checkpoint_dir_name"] not in names:
        state["latest_checkpoint_result"] = max((r for r, _ in keep), key=lambda r: r["checkpoint_dir_name"], default=None)
    tmp = snapshot.with_suffix(".tmp")
    tmp.write_text(json.dumps(state))
    tmp.replace(snapshot)


def prepare_restore(run_dir: Path) -> list[str]:
    """Make the search state under run_dir/tune fit to restore, wherever the run directory is now.

    Returns warnings for the user. Tune already moves trials and their checkpoints to the folder
    it restores from, but (Ray 2.60):
    - the search algorithm's saved state keeps the original folder, where it would create the
      trials not started yet;
    - after a SIGKILL the experiment state can be older than the trials: a trial that finished
      after Tune's last save would run again, and a checkpoint deleted after it would make Tune
      log a FileNotFoundError traceback the next time it prunes that trial's checkpoints;
    - a torn or altered checkpoint would fail the trial that resumes from it.
    """
    import ray.cloudpickle as cloudpickle

    from orchestrator import ray_internals

    records = load_records(run_dir / "trials.json")
    tune_dir = run_dir / TUNE_DIR
    if not (tune_dir / "tuner.pkl").is_file():
        raise RunDirError(f"{tune_dir / 'tuner.pkl'}: missing; the search cannot be resumed, run its spec again")
    states = sorted(tune_dir.glob("experiment_state-*.json"))  # Tune restores the greatest name
    if not states:
        raise RunDirError(f"{tune_dir}: no experiment_state-*.json; the search cannot be resumed, run its spec again")
    path = states[-1]
    try:
        state = json.loads(path.read_text())
        trial_data = state["trial_data"]
        trials = [(json.loads(t), json.loads(m)) for t, m in trial_data]
    except (ValueError, KeyError, TypeError) as e:
        hint = f"delete it to resume from {states[-2].name}" if len(states) > 1 else "the search cannot be resumed, run its spec again"
        raise RunDirError(f"{path}: damaged search state ({type(e).__name__}: {e}); {hint}") from None

    warnings, finished = [], set()
    for t, meta in trials:
        rec = records.get(t["trial_id"])
        if rec is not None and rec.status in FINAL_STATUSES and t["status"] not in ("TERMINATED", "ERROR"):
            t["status"] = "ERROR" if rec.status == "ERROR" else "TERMINATED"  # finished after Tune's last save
            finished.add(t["trial_id"])
        blob = meta.get("checkpoint_manager")
        if not (isinstance(blob, dict) and "value" in blob):
            continue
        try:
            manager = ray_internals.load_checkpoint_manager(blob["value"])
        except Exception as e:
            raise RunDirError(
                f"{path}: damaged search state (the checkpoints of trial {t['trial_id']}: {type(e).__name__}); "
                "the search cannot be resumed, run its spec again"
            ) from None
        trial_dir = tune_dir / t["relative_logdir"]
        results, latest = ray_internals.checkpoint_results(manager)  # latest: always one of the results, Tune never deletes it
        kept = []
        for r in results:
            problem = _checkpoint_problem(trial_dir / Path(r.checkpoint.path).name)
            if problem is None:
                kept.append(r)
            elif problem != "missing":  # a missing one was deleted by Tune itself after its last save
                warnings.append(f"trial {t['trial_id']}: skipping checkpoint {problem}")
        if latest is not None and not any(r is latest for r in kept):
            # resume from the newest good checkpoint, or from scratch when there is none
            latest = max(kept, key=lambda r: Path(r.checkpoint.path).name, default=None)
        ray_internals.set_checkpoint_results(manager, kept, latest)
        meta["checkpoint_manager"] = {**blob, "value": ray_internals.dump_checkpoint_manager(manager)}
    for snapshot in sorted((run_dir / TRIALS_DIR).glob("trial-*/checkpoint_manager_snapshot.json")):
        _repair_train_snapshot(snapshot, warnings)
    state["trial_data"] = [[json.dumps(t, indent=2), json.dumps(m, indent=2)] for t, m in trials]
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(state, indent=2))
    tmp.replace(path)

    # The search algorithm's state (basic-variant-state-*, search_gen_state-*): a cloudpickle.
    for f in [*tune_dir.glob("basic-variant-state-*.json"), *tune_dir.glob("search_gen_state-*.json")]:
        try:
            searcher_state = cloudpickle.loads(f.read_bytes())
        except Exception as e:
            raise RunDirError(
                f"{f}: damaged search algorithm state ({type(e).__name__}); the search cannot be resumed, run its spec again"
            ) from None
        if ray_internals.rebase_storage(searcher_state, str(run_dir)) | ray_internals.forget_live_trials(searcher_state, finished):
            tmp = f.with_suffix(".tmp")
            tmp.write_bytes(cloudpickle.dumps(searcher_state))
            tmp.replace(f)
    return warnings


@dataclass
class SearchOutcome:
    records: list[TrialRecord]
    winner: Optional[TrialRecord]
    winner_checkpoint: Optional[str]
    interrupted: bool
    wall_time_s: float


def winner_checkpoint(run_dir: Path, trial_id: str, metric: str) -> str:
    """The winner's best checkpoint: from its Train run, or from Tune for an in-process trial."""
    from ray.train import Result

    train_run = run_dir / TRIALS_DIR / f"trial-{trial_id}"
    if (train_run / "checkpoint_manager_snapshot.json").exists():
        result = Result.from_path(str(train_run))
        best = result.get_best_checkpoint(metric, METRIC_MODES[metric]) or result.checkpoint
        if best is None:
            raise OrchestratorError(f"trial {trial_id} left no checkpoint")
        return best.path
    # An in-process trial: Tune's record of its checkpoints can be older than its folder (a kill
    # between a checkpoint and Tune's next save of the experiment), so read the folder itself.
    scored = []
    for d in sorted((run_dir / TUNE_DIR).glob(f"*_{trial_id}_*/checkpoint_*")):
        try:
            value = json.loads((d / "metrics.json").read_text()).get(metric)
        except (OSError, ValueError):
            continue
        if isinstance(value, (int, float)) and math.isfinite(value) and _checkpoint_problem(d) is None:
            scored.append((value if METRIC_MODES[metric] == "min" else -value, d))
    if not scored:
        raise OrchestratorError(f"trial {trial_id} left no checkpoint")
    return str(min(scored, key=lambda x: x[0])[1])


def run_search(
    spec: JobSpec,
    run_dir: Path,
    prepared: PreparedData,
    concurrent: int,
    plan: WorkerPlan,
    *,
    restore: bool = False,
    on_change: Optional[Callable[[TrialTracker], None]] = None,
    scheduler_override: Optional[str] = None,
) -> SearchOutcome:
    """The search, `concurrent` trials at a time, each with `plan`'s workers (both from plan.plan_search)."""
    t0 = time.perf_counter()
    tune_spec = spec.tune
    assert tune_spec is not None, "a search needs the spec's tune section"
    tracker = TrialTracker(tune_spec.space, run_dir / "trials.json", spec.train.epochs)
    _ACTIVE.append(tracker)
    if on_change:
        LISTENERS.append(on_change)
    try:
        tuner = build_tuner(spec, prepared, plan, concurrent, run_dir, tracker, restore=restore, scheduler_override=scheduler_override)
        tuner.fit()
    finally:
        _ACTIVE.remove(tracker)
        if on_change:
            LISTENERS.remove(on_change)
    metric = spec.tune_metric
    records = list(tracker.records.values())
    finished = [r for r in records if r.status in FINAL_STATUSES]
    # Tune returns normally after Ctrl-C, so an interrupt shows as trials missing or unfinished
    # (the time budget is the only other reason for fewer trials than planned).
    out_of_time = tune_spec.time_budget_s is not None and time.perf_counter() - t0 >= 0.95 * tune_spec.time_budget_s
    interrupted = len(finished) < len(records) or (len(finished) < expected_trials(tune_spec) and not out_of_time)
    winner = pick_winner(records, metric)
    ckpt = winner_checkpoint(run_dir, winner.trial_id, metric) if winner and not interrupted else None
    return SearchOutcome(
        records=records, winner=winner, winner_checkpoint=ckpt, interrupted=interrupted, wall_time_s=time.perf_counter() - t0
    )
