"""Data-parallel training with Ray Train (V2), driver side: the sessions that give the per-worker loop
(loop.py) its Ray runtime, the TorchTrainer, the progress relay, and scoring a checkpoint on the test split."""

from __future__ import annotations

import json
import shutil
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Optional

import ray
import ray.train
import ray.train.torch
import torch
from ray.train import Checkpoint, CheckpointConfig, DataConfig, FailureConfig, RunConfig, ScalingConfig
from ray.train.torch import TorchTrainer
from ray.train.v2.api.callback import UserCallback
from ray.util.queue import Empty, Queue
from torch import nn

from orchestrator.data.ingest import PreparedData, prepare_data
from orchestrator.errors import DivergedError, OrchestratorError, last_line
from orchestrator.spec import LOSS, TEST_PREFIX, JobSpec
from orchestrator.train.checkpoint import load_model
from orchestrator.train.loop import batch_dtypes, evaluate, make_loss, run_loop
from orchestrator.train.metrics import TEST_DETAILS_FILE, split_details
from orchestrator.train.plan import WorkerPlan, build_loop_config

CONTROLLER_FAILURE_LIMIT = 2
# Ray Train wants train_loop_config to be a dict (its state export turns each value into JSON or a
# string); the LoopConfig travels in it under this key and reaches the worker as it was built.
LOOP_CONFIG_KEY = "loop"

# ----------------------------------------------------------------------------------- worker side


def _checkpoint(directory: Optional[str]) -> Optional[Checkpoint]:
    return Checkpoint.from_directory(directory) if directory else None


class TrainSession:
    """What the loop needs from its runtime, on a Ray Train worker."""

    def __init__(self):
        ctx = ray.train.get_context()
        self.rank, self.world_size = ctx.get_world_rank(), ctx.get_world_size()

    def device(self) -> torch.device:
        return ray.train.torch.get_device()

    def prepare_model(self, model: nn.Module) -> nn.Module:
        return ray.train.torch.prepare_model(model)  # DDP over gloo (CPU) or NCCL (GPU)

    def dataset(self, name: str):
        return ray.train.get_dataset_shard(name)

    def get_checkpoint(self) -> Optional[Checkpoint]:
        return ray.train.get_checkpoint()

    def report(self, metrics: dict, checkpoint_dir: Optional[str]) -> None:
        ray.train.report(metrics, checkpoint=_checkpoint(checkpoint_dir))


class TuneTrialSession:
    """The same, for a search trial with one CPU worker that trains in its own Tune trial process.

    With a single worker there is nothing for Ray Train to coordinate (no collectives, one shard),
    and its controller, worker process, placement group and dataset actors cost a trial more CPU
    than a short epoch. So the loop runs in the trial, reads the datasets whole and reports
    metrics and checkpoints to Tune, which keeps the checkpoints (Ray Train's own local mode is
    refused inside a Tune function in Ray 2.60).
    """

    rank, world_size = 0, 1

    def __init__(self, datasets: dict):
        self.datasets = datasets

    def device(self) -> torch.device:
        return torch.device("cpu")

    def prepare_model(self, model: nn.Module) -> nn.Module:
        return model

    def dataset(self, name: str):
        return self.datasets[name]

    def get_checkpoint(self) -> Optional[Checkpoint]:
        from ray import tune

        return tune.get_checkpoint()

    def report(self, metrics: dict, checkpoint_dir: Optional[str]) -> None:
        from ray import tune

        tune.report(metrics, checkpoint=_checkpoint(checkpoint_dir))


def train_loop_per_worker(config: dict) -> Optional[dict]:
    """Runs on every Ray Train worker: the loop on the LoopConfig the driver built (build_trainer)."""
    return run_loop(config[LOOP_CONFIG_KEY], TrainSession())


# ------------------------------------------------------------------------------------- driver side


class ProgressCallback(UserCallback):
    """Runs on the Train controller: forwards each epoch's metrics and worker failures to the driver."""

    def __init__(self, queue: Queue, max_failures: int = 0):
        self.queue, self.max_failures, self.failures = queue, max_failures, 0

    def after_report(self, run_context, metrics, checkpoint):
        self.queue.put({"kind": "epoch", "metrics": metrics[0], "checkpoint": checkpoint.path if checkpoint else None})

    def after_exception(self, run_context, worker_exceptions):
        # Train's failure policy counts worker-group failures the same way: restart while <= max_failures
        self.failures += 1
        self.queue.put(
            {
                "kind": "failure",
                "errors": {int(k): f"{type(v).__name__}: {v}"[:500] for k, v in worker_exceptions.items()},
                "failure": self.failures,
                "max_failures": self.max_failures,
                "restarting": self.failures <= self.max_failures,
            }
        )


def loop_datasets(prepared: PreparedData) -> dict:
    """The datasets the training loop reads (the test split stays with the driver)."""
    return {"train": prepared.transformed["train"], "validation": prepared.transformed["validation"]}


def build_trainer(
    spec: JobSpec,
    prepared: PreparedData,
    plan: WorkerPlan,
    *,
    storage_path: str,
    name: str,
    callbacks: list,
    train_loop=None,
    extra_config: Optional[dict] = None,
) -> TorchTrainer:
    """The TorchTrainer for one training run. `train_loop` and `extra_config`: a stand-in loop and
    what it reads beside the LoopConfig (tests)."""
    loop_config = build_loop_config(spec, prepared, plan)
    return TorchTrainer(
        train_loop or train_loop_per_worker,
        train_loop_config={LOOP_CONFIG_KEY: loop_config, **(extra_config or {})},
        scaling_config=ScalingConfig(
            num_workers=plan.workers, use_gpu=plan.gpus_per_worker > 0, resources_per_worker=plan.resources_per_worker()
        ),
        run_config=RunConfig(
            name=name,
            storage_path=storage_path,
            # controller_failure_limit: a worker group that cannot start (no room in the cluster)
            # ends the run with Train's error after a few 60 s tries instead of retrying forever.
            failure_config=FailureConfig(max_failures=spec.train.max_failures, controller_failure_limit=CONTROLLER_FAILURE_LIMIT),
            checkpoint_config=CheckpointConfig(
                num_to_keep=spec.checkpoint.keep,
                checkpoint_score_attribute=spec.checkpoint.metric,
                checkpoint_score_order=spec.checkpoint.mode,
            ),
            callbacks=callbacks,
        ),
        datasets=loop_datasets(prepared),
        # A streamed train split: each worker streams its own disjoint shard (Ray Data's streaming
        # split). A materialised one held in memory goes whole to every worker, which keeps its share
        # (loop.read_whole). Validation goes whole to every worker (only rank 0 reads it, so metrics
        # are exact rather than computed on equalised shards).
        dataset_config=DataConfig(datasets_to_split=[] if loop_config.in_memory else ["train"]),
    )


@dataclass
class TrainOutcome:
    epochs: list[dict]
    best_checkpoint: str
    best_metrics: dict
    test_metrics: dict
    failures: list[dict] = field(default_factory=list)
    wall_time_s: float = 0.0
    test_details: Optional[dict] = None  # metrics.split_details of the test split, for the report


def fit_with_progress(trainer: TorchTrainer, queue: Queue, on_event: Callable[[dict], None]):
    """trainer.fit() in a thread while this thread relays the controller's events."""
    box: dict[str, Any] = {}

    def target():
        try:
            box["result"] = trainer.fit()
        except BaseException as e:  # re-raised on the calling thread
            box["error"] = e

    th = threading.Thread(target=target, name="orchestrator-fit", daemon=True)
    th.start()

    def drain(timeout: float) -> None:
        try:
            on_event(queue.get(timeout=timeout))
        except Empty:
            pass

    while th.is_alive():
        drain(0.5)
    while not queue.empty():
        drain(0.01)
    if "error" in box:
        raise box["error"]
    return box["result"]


def evaluate_checkpoint(
    checkpoint_dir: str, dataset: ray.data.Dataset, details_path: Optional[Path] = None, *, loaded=None
) -> tuple[dict[str, float], Optional[dict]]:
    """Score a saved checkpoint on a transformed dataset (the held-out test split) on the driver:
    (metrics, details). With `details_path`, details is what the report draws of the split
    (metrics.split_details), also written there; else None. `loaded`: the checkpoint's load_model,
    where the caller has it already."""
    loaded = loaded or load_model(checkpoint_dir)
    task = loaded.meta["task"]
    device = torch.device("cpu")
    dtypes = batch_dtypes(loaded.meta.get("input_kind") or loaded.preprocessor.kind, task)
    pre = loaded.preprocessor
    outputs: Optional[dict] = {} if details_path is not None else None
    m = evaluate(
        loaded.model,
        dataset.iter_torch_batches(batch_size=512, dtypes=dtypes, device="cpu"),
        task,
        loaded.meta["model"],
        device,
        make_loss(task, 0.0),
        pre.target_std if task == "regression" else 1.0,
        TEST_PREFIX,
        outputs=outputs,
    )
    m["test_rows"] = int(dataset.count())
    details: Optional[dict] = None
    if details_path is not None and outputs is not None:
        details = split_details(
            task, outputs["y"], outputs["outputs"], classes=pre.classes or [], target_mean=pre.target_mean, target_std=pre.target_std
        )
        details_path.write_text(json.dumps(details))
    return m, details


def run_training(
    spec: JobSpec,
    run_dir: Path,
    plan: WorkerPlan,
    *,
    prepared: Optional[PreparedData] = None,
    on_event: Callable[[dict], None] = lambda e: None,
) -> TrainOutcome:
    """One training run of `spec` on the connected Ray cluster; writes checkpoints under run_dir."""
    t0 = time.perf_counter()
    prepared = prepared or prepare_data(spec)
    queue = Queue(actor_options={"num_cpus": 0})
    epochs: dict[int, dict] = {}
    failures: list[dict] = []

    def relay(event: dict) -> None:
        if event["kind"] == "epoch":
            epochs[event["metrics"]["epoch"]] = event["metrics"]
        else:
            failures.append(event)
        on_event(event)

    max_failures = spec.train.max_failures
    trainer = build_trainer(
        spec, prepared, plan, storage_path=str(run_dir.resolve()), name="train", callbacks=[ProgressCallback(queue, max_failures)]
    )
    try:
        result = fit_with_progress(trainer, queue, relay)
    except ray.train.TrainingFailedError as e:
        if len(failures) > max_failures:  # every attempt ended in a worker failure
            allowed = f"{max_failures} restart" + ("" if max_failures == 1 else "s")
            raise OrchestratorError(
                f"training failed after {len(failures)} attempts, each ended by a worker failure "
                f"(train.max_failures allows {allowed}); the last: {_root_cause(e)}"
            ) from None
        raise OrchestratorError(f"training failed: {_root_cause(e)}") from None
    finally:
        ray.kill(queue.actor)
    check_diverged(result)
    best = result.get_best_checkpoint(spec.checkpoint.metric, spec.checkpoint.mode) or result.checkpoint
    if best is None:
        raise OrchestratorError("training finished without a checkpoint")
    best_dir = run_dir / "best_checkpoint"
    if best_dir.exists():
        shutil.rmtree(best_dir)
    best.to_directory(str(best_dir))
    best_metrics = json.loads((best_dir / "metrics.json").read_text())
    test_metrics, test_details = evaluate_checkpoint(str(best_dir), prepared.transformed["test"], run_dir / TEST_DETAILS_FILE)
    return TrainOutcome(
        epochs=[epochs[k] for k in sorted(epochs)],
        best_checkpoint=str(best_dir),
        best_metrics=best_metrics,
        test_metrics=test_metrics,
        failures=failures,
        wall_time_s=time.perf_counter() - t0,
        test_details=test_details,
    )


def check_diverged(result) -> None:
    """`result`: a Train Result, or what the loop returned (an in-process trial)."""
    rv = result if isinstance(result, dict) else getattr(result, "return_value", None)
    if isinstance(rv, dict) and rv.get("diverged_epoch"):
        raise DivergedError(
            f"training diverged: the loss became {rv[LOSS]} at epoch {rv['diverged_epoch']} (lower train.lr, or set train.grad_clip)"
        )


def _root_cause(e: BaseException) -> str:
    seen = e
    while seen.__cause__ is not None:
        seen = seen.__cause__
    return last_line(seen) or type(seen).__name__
