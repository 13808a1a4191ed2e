"""The stages of a job wired together: what `orchestrator train`, `run` and `resume` execute.

The same functions run locally, inside a job submitted to a remote cluster, and in a KubeRay
RayJob: only where Ray runs differs.
"""

from __future__ import annotations

import json
import shutil
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Optional

from rich.console import Console
from rich.text import Text

from orchestrator.errors import DataError, OrchestratorError, RunDirError, counted, one_line
from orchestrator.rundir import in_run, new_run_dir, write_json, write_metrics
from orchestrator.spec import VAL_PREFIX, JobSpec, load_spec
from orchestrator.ui import fmt_config, make_console


@dataclass
class RunResult:
    run_dir: Path
    best_checkpoint: Optional[str]
    test_metrics: dict
    decision: dict
    interrupted: bool = False
    summary: dict = field(default_factory=dict)

    @property
    def promoted(self) -> bool:
        return bool(self.decision.get("promoted"))


TIMINGS_FILE = "timings.json"


class Timings:
    """Wall time of each phase of one run, written to the run directory as timings.json (the
    benchmark suite reads it; docs/benchmarks.md lists the phases). Seconds, in the order run.

    `process_start_s` is the time from this process's start (interpreter, imports, spec loading)
    to the pipeline's first line: meaningful when the process is the CLI command itself.
    """

    def __init__(self, kind: str):
        import psutil

        self.kind = kind
        self.t0 = time.perf_counter()
        self.process_start_s = max(0.0, time.time() - psutil.Process().create_time())
        self.phases: dict[str, float] = {}
        self.first_step: Optional[float] = None  # perf_counter estimate of the first training step
        self.last_epoch: Optional[float] = None  # when the last epoch's report reached the driver

    @contextmanager
    def phase(self, name: str):
        t = time.perf_counter()
        try:
            yield
        finally:
            self.phases[name] = self.phases.get(name, 0.0) + time.perf_counter() - t

    def epoch_event(self, metrics: dict) -> None:
        """An epoch's report arrived: the first one dates the first step (arrival minus the epoch's own
        epoch_time_s, so it also counts epoch 1's checkpoint write and report relay: an upper bound)."""
        now = time.perf_counter()
        if self.first_step is None:
            self.first_step = now - float(metrics.get("epoch_time_s") or 0.0)
        self.last_epoch = now

    def split_training(self, started: float, ended: float) -> None:
        """Training from `started` to `ended` as worker-group start, epochs and what follows the last epoch
        (Train's shutdown, copying the best checkpoint, scoring it on the test split)."""
        if self.first_step is None or self.last_epoch is None:
            self.phases["training"] = ended - started
            return
        self.phases["worker_group_start"] = max(0.0, self.first_step - started)
        self.phases["training_epochs"] = self.last_epoch - self.first_step
        self.phases["after_last_epoch"] = ended - self.last_epoch

    def write(self, run: Path) -> None:
        end = time.perf_counter()
        data = {
            "kind": self.kind,
            "process_start_s": round(self.process_start_s, 3),
            "phases_s": {k: round(v, 3) for k, v in self.phases.items()},
            "total_s": round(end - self.t0, 3),
        }
        if self.first_step is not None and self.last_epoch is not None:
            data["start_to_first_step_s"] = round(self.process_start_s + self.first_step - self.t0, 3)
            data["last_epoch_to_end_s"] = round(end - self.last_epoch, 3)
        write_json(run / TIMINGS_FILE, data)


def _check_data(spec: JobSpec, console: Console) -> None:
    """The data against the spec before Ray starts (data/preflight.py): every problem at once, in seconds."""
    from orchestrator.data.preflight import check_data

    with console.status("checking the data"):
        check = check_data(spec)
    if check.problems:
        raise data_problems_error(check.problems)


def data_problems_error(problems: list[str]) -> DataError:
    if len(problems) == 1:
        return DataError(problems[0])
    return DataError(
        f"the data does not fit the spec ({len(problems)} problems):\n" + "\n".join(f"  {p}" for p in problems), problems=problems
    )


def _start(spec: JobSpec, address: Optional[str], verbose: bool, console: Console):
    from orchestrator.runtime import cluster_resources, init_ray

    with console.status("starting Ray"):
        token_env = spec.serve.auth_token_env if spec.serve else None  # served later: keep it out of Ray's processes
        init_ray(address, verbose=verbose, code_dirs=[str(spec.base_dir)], secret_env=[token_env] if token_env else ())
    return cluster_resources()


def _prepare(spec: JobSpec, console: Console):
    from orchestrator.data.ingest import prepare_data

    with console.status("reading data, splitting, fitting preprocessing on the training split"):
        prepared = prepare_data(spec)
    pre = prepared.preprocessor
    console.print(
        f"data: {prepared.source}  task={pre.task}  train rows={pre.train_rows}  inputs={pre.input_shape}  outputs={pre.num_outputs}",
        highlight=False,
        soft_wrap=True,
    )
    for note in prepared.notes:
        console.print(f"note: {note}", highlight=False, soft_wrap=True)
    return prepared


def _train_once(
    spec: JobSpec, run: Path, prepared, plan, console: Console, timings: Timings
) -> tuple[str, dict, Optional[dict], list, dict]:
    with timings.phase("training_imports"):
        from orchestrator.train.driver import run_training
        from orchestrator.ui import EpochProgress

    def on_event(event: dict) -> None:
        if event["kind"] == "epoch":
            timings.epoch_event(event["metrics"])
        progress.on_event(event)

    with EpochProgress(console, spec.train.epochs, metric=spec.checkpoint.metric) as progress:
        started = time.perf_counter()
        outcome = run_training(spec, run, plan, prepared=prepared, on_event=on_event)
        timings.split_training(started, time.perf_counter())
    write_metrics(run, outcome.epochs)
    trial: dict[str, Any] = {"trial_id": "train", "config": {}, "status": "TERMINATED", "epochs": outcome.epochs, "error": None}
    extra = {
        "epochs_run": len(outcome.epochs),
        "best_epoch": outcome.best_metrics.get("epoch"),
        "best_validation": {k: v for k, v in outcome.best_metrics.items() if k.startswith(VAL_PREFIX)},
        "worker_failures": outcome.failures,
        "train_wall_time_s": round(outcome.wall_time_s, 1),
    }
    return outcome.best_checkpoint, outcome.test_metrics, outcome.test_details, [trial], extra


def _finish(
    spec: JobSpec,
    run: Path,
    best_checkpoint: str,
    test_metrics: dict,
    test_details: Optional[dict],
    trials: list[dict],
    winner: Optional[str],
    extra: dict,
    console: Console,
    timings: Timings,
) -> RunResult:
    with timings.phase("report"):
        result = _write_outcome(spec, run, best_checkpoint, test_metrics, test_details, trials, winner, extra, console)
    timings.write(run)
    return result


def _write_outcome(
    spec: JobSpec,
    run: Path,
    best_checkpoint: str,
    test_metrics: dict,
    details: Optional[dict],
    trials: list[dict],
    winner: Optional[str],
    extra: dict,
    console: Console,
) -> RunResult:
    from orchestrator.promote import decide
    from orchestrator.report import write_report
    from orchestrator.ui import metrics_table

    decision = decide(spec.promote, test_metrics)
    write_json(run / "test_metrics.json", test_metrics)
    write_json(run / "promotion.json", decision.to_dict())
    summary = {
        "name": spec.name,
        "status": "succeeded",
        "best_checkpoint": in_run(run, best_checkpoint),
        "metric": spec.tune_metric,
        "test": test_metrics,
        "promoted": decision.promoted,
        "promotion": decision.reason,
        **extra,
    }
    write_json(run / "summary.json", summary)
    write_report(
        run,
        title=f"{spec.name}: {run.name}",
        trials=trials,
        metric=spec.tune_metric,
        winner=winner,
        summary={"run": run.name, "winner": winner, **{k: v for k, v in test_metrics.items()}, "promotion": decision.reason},
        details=details,
    )
    console.print(metrics_table("winner on the held-out test split", test_metrics))
    style = "green" if decision.promoted else "red"
    console.print(Text.assemble(("PROMOTED" if decision.promoted else "NOT PROMOTED", style), f": {decision.reason}"), highlight=False)
    console.print(f"best checkpoint: {best_checkpoint}\nreport: {run / 'report.html'}", highlight=False, soft_wrap=True)
    return RunResult(run, best_checkpoint, test_metrics, decision.to_dict(), summary=summary)


@contextmanager
def _failure_recorded(spec: JobSpec, run: Path, stage: str):
    """A run that fails after its directory exists says so there: summary.json with status "failed",
    the stage and the error (what the console showed), so that no run directory is left without a status."""
    try:
        yield
    except Exception as e:
        write_json(
            run / "summary.json",
            {
                "name": spec.name,
                "status": "failed",
                "stage": stage,
                "error": one_line(str(e) or type(e).__name__, 4000),
                "error_type": type(e).__name__,
            },
        )
        raise


def train_job(
    spec: JobSpec,
    spec_path: Path,
    *,
    output: Optional[Path] = None,
    address: Optional[str] = None,
    verbose: bool = False,
    console: Optional[Console] = None,
    run_name: Optional[str] = None,
    on_run_dir: Callable[[Path], None] = lambda run: None,
) -> RunResult:
    """Train once (the spec's own settings, even if it has a tune section). `on_run_dir` is told
    the run directory as soon as it exists (the CLI moves its log there)."""
    from orchestrator.train.plan import plan_workers

    timings = Timings("train")
    console = console or make_console()
    with timings.phase("data_check"):
        _check_data(spec, console)
    with timings.phase("ray_start"):
        resources = _start(spec, address, verbose, console)
    plan = plan_workers(spec.scaling, resources)  # refuses an infeasible spec before any work
    run = new_run_dir(spec, spec_path, output, run_name, kind="train")
    on_run_dir(run)
    console.print(
        Text.assemble("run ", (str(run), "bold")),
        f"\ncluster: {resources.cpus:g} CPUs, {resources.gpus:g} GPUs -> {counted(plan.workers, 'worker')} x {plan.cpus_per_worker:g} CPU"
        + (f" + {plan.gpus_per_worker:g} GPU" if plan.gpus_per_worker else ""),
        sep="",
        highlight=False,
        soft_wrap=True,
    )
    with _failure_recorded(spec, run, "train"):
        with timings.phase("data_preparation"):
            prepared = _prepare(spec, console)
        best, test, details, trials, extra = _train_once(spec, run, prepared, plan, console, timings)
        return _finish(spec, run, best, test, details, trials, "train", extra, console, timings)


def run_job(
    spec: JobSpec,
    spec_path: Path,
    *,
    output: Optional[Path] = None,
    address: Optional[str] = None,
    verbose: bool = False,
    console: Optional[Console] = None,
    run_name: Optional[str] = None,
    on_run_dir: Callable[[Path], None] = lambda run: None,
) -> RunResult:
    """Validate, plan, search (or train once without a tune section), evaluate, apply the promotion gate."""
    if spec.tune is None:
        return train_job(
            spec, spec_path, output=output, address=address, verbose=verbose, console=console, run_name=run_name, on_run_dir=on_run_dir
        )
    from orchestrator.tune.plan import expected_trials, in_process_trials, plan_search

    timings = Timings("search")
    console = console or make_console()
    with timings.phase("data_check"):
        _check_data(spec, console)
    with timings.phase("ray_start"):
        resources = _start(spec, address, verbose, console)
    concurrent, plan = plan_search(spec, resources)
    run = new_run_dir(spec, spec_path, output, run_name)
    on_run_dir(run)
    if not in_process_trials(plan):
        each = f"each {counted(plan.workers, 'worker')} x {plan.cpus_per_worker:g} CPU"
    elif spec.scaling.workers > 1:  # one_process_plan merged the spec's workers
        each = (
            f"each in one trial process on {plan.cpus_per_worker:g} CPU with the global batch of {spec.scaling.workers} workers x "
            f"{spec.train.batch_size} rows (too few CPUs for {spec.scaling.workers} DDP workers per trial; an explicit "
            "scaling.cpus_per_worker keeps them)"
        )
    else:
        each = f"each training in its own trial process on {plan.cpus_per_worker:g} CPU (one worker: no Ray Train worker group to start)"
    console.print(
        Text.assemble("run ", (str(run), "bold")),
        f"\nsearch: {expected_trials(spec.tune)} trials ({spec.tune.search}, scheduler {spec.tune.scheduler.type}), "
        f"{concurrent} at a time, {each}",
        sep="",
        highlight=False,
        soft_wrap=True,
    )
    with _failure_recorded(spec, run, "search"):
        with timings.phase("data_preparation"):
            prepared = _prepare(spec, console)
        return _search(spec, run, prepared, (concurrent, plan), console, timings, restore=False)


def resume_job(
    run_dir: Path,
    *,
    address: Optional[str] = None,
    verbose: bool = False,
    console: Optional[Console] = None,
    on_run_dir: Callable[[Path], None] = lambda run: None,
) -> RunResult:
    """Continue an interrupted search; finished trials are kept, not run again."""
    timings = Timings("resume")
    console = console or make_console()
    run_dir = Path(run_dir).resolve()
    meta_path = run_dir / "run.json"
    if not run_dir.is_dir() or not any((run_dir / f).exists() for f in ("run.json", "spec.yaml", "tune")):
        raise RunDirError(f"{run_dir}: not a run directory (no run.json, spec.yaml or tune/)")
    for f in (meta_path, run_dir / "spec.yaml"):
        if not f.is_file():
            raise RunDirError(f"{f}: missing from the run directory; it cannot be resumed, run its spec again")
    try:
        meta = json.loads(meta_path.read_text())
        base_dir = Path(meta["base_dir"])
    except (ValueError, KeyError, TypeError) as e:
        raise RunDirError(f"{meta_path}: damaged ({type(e).__name__}: {e}); it should hold the spec's folder as base_dir") from None
    spec = load_spec(run_dir / "spec.yaml")  # a damaged copy: SpecError, naming the file and the problem
    spec._base_dir = base_dir
    if meta.get("kind") == "train" or spec.tune is None:
        raise OrchestratorError(
            f"{run_dir}: a run of `orchestrator train` (one training, no search) has nothing to resume; a failed "
            "worker already restarts from the last checkpoint within the run (train.max_failures). Train the spec again"
        )
    if not (run_dir / "tune").is_dir():
        raise OrchestratorError(f"{run_dir}: the search never started; run the spec again instead")
    if (run_dir / "summary.json").is_file() and _status(run_dir) != "failed":  # a failed search may be resumed
        raise OrchestratorError(f"{run_dir}: this search already finished (see summary.json)")
    from orchestrator.tune.search import prepare_restore

    for warning in prepare_restore(run_dir):  # before Ray starts: a damaged run dir fails fast
        console.print(Text(f"warning: {warning}", style="yellow"), highlight=False, soft_wrap=True)
    from orchestrator.tune.plan import plan_search

    on_run_dir(run_dir)
    with timings.phase("ray_start"):
        resources = _start(spec, address, verbose, console)
    search_plan = plan_search(spec, resources)
    console.print(Text.assemble("resuming ", (str(run_dir), "bold")), highlight=False)
    with _failure_recorded(spec, run_dir, "resume"):
        with timings.phase("data_preparation"):
            prepared = _prepare(spec, console)
        return _search(spec, run_dir, prepared, search_plan, console, timings, restore=True)


def _status(run_dir: Path) -> Optional[str]:
    try:
        return json.loads((run_dir / "summary.json").read_text()).get("status")
    except (OSError, ValueError, AttributeError):
        return None


def _search(spec: JobSpec, run: Path, prepared, search_plan: tuple, console: Console, timings: Timings, *, restore: bool) -> RunResult:
    """The search with the plan_search result (trials at once, each trial's workers) it was planned with."""
    from orchestrator.train.driver import evaluate_checkpoint
    from orchestrator.train.metrics import TEST_DETAILS_FILE
    from orchestrator.tune.plan import expected_trials
    from orchestrator.tune.search import run_search
    from orchestrator.ui import TrialTable

    concurrent, plan = search_plan
    assert spec.tune is not None, "a search needs the spec's tune section"
    with TrialTable(console, spec.tune_metric, expected_trials(spec.tune)) as table, timings.phase("search"):
        outcome = run_search(spec, run, prepared, concurrent, plan, restore=restore, on_change=table.update)
    trials = [r.__dict__ for r in outcome.records]
    write_metrics(
        run,
        [
            {
                "trial_id": t["trial_id"],
                "status": t["status"],
                "error": t["error"],
                **t["config"],
                f"best_{spec.tune_metric}": r.best(spec.tune_metric),
                "epochs": len(t["epochs"]),
            }
            for t, r in zip(trials, outcome.records)
        ],
        stem="trial_summary",
    )
    failed = [r for r in outcome.records if r.status == "ERROR"]
    for r in failed:
        console.print(Text(f"trial {r.trial_id} failed: {r.error}", style="yellow"), highlight=False, soft_wrap=True)
    if outcome.interrupted:
        console.print(
            Text.assemble(("search interrupted", "yellow"), f"; continue it with: orchestrator resume {run}"),
            highlight=False,
            soft_wrap=True,
        )
        return RunResult(run, None, {}, {"promoted": False, "reason": "interrupted"}, interrupted=True)
    if outcome.winner is None:
        reasons = "; ".join(f"{r.trial_id}: {r.error}" for r in failed) or "no trial reported a metric"
        raise OrchestratorError(f"every trial failed ({reasons})")
    assert outcome.winner_checkpoint is not None  # a winner of an uninterrupted search has its checkpoint
    best_dir = run / "best_checkpoint"
    if best_dir.exists():
        shutil.rmtree(best_dir)
    shutil.copytree(outcome.winner_checkpoint, best_dir)
    with console.status("evaluating the winner on the held-out test split"), timings.phase("evaluation"):
        test, details = evaluate_checkpoint(str(best_dir), prepared.transformed["test"], run / TEST_DETAILS_FILE)
    w = outcome.winner
    epochs_run = sum(len(r.epochs) for r in outcome.records)
    budget = len(outcome.records) * spec.train.epochs
    pruned = sum(r.status == "PRUNED" for r in outcome.records)
    console.print(
        f"search: {len(outcome.records)} trials in {outcome.wall_time_s:.0f} s, {pruned} pruned by the scheduler, "
        f"{epochs_run} of {budget} epochs run ({100 * epochs_run / max(budget, 1):.0f}%)",
        highlight=False,
        soft_wrap=True,
    )
    console.print(
        f"winner: trial {w.trial_id}  best {spec.tune_metric}={w.best(spec.tune_metric):.4f}  " + fmt_config(w.config, short=False),
        highlight=False,
        soft_wrap=True,
    )
    write_json(
        run / "winner.json",
        {
            "trial_id": w.trial_id,
            "config": w.config,
            f"best_{spec.tune_metric}": w.best(spec.tune_metric),
            "checkpoint": in_run(run, outcome.winner_checkpoint),
        },
    )
    extra = {
        "trials": len(outcome.records),
        "failed_trials": len(failed),
        "pruned_by_scheduler": pruned,
        "epochs_run": epochs_run,
        "epochs_without_pruning": budget,
        "early_stopped": sum(r.status == "EARLY_STOPPED" for r in outcome.records),
        "winner": w.trial_id,
        "winner_config": w.config,
        "search_wall_time_s": round(outcome.wall_time_s, 1),
    }
    return _finish(spec, run, str(best_dir), test, details, trials, w.trial_id, extra, console, timings)
