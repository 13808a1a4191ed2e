"""Data-parallel training with Ray Train (V2): the per-worker loop and the driver that runs it."""

from __future__ import annotations

import math
import shutil
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Optional

import torch
import torch.distributed as dist
from torch import nn

import ray
import ray.train
import ray.train.torch
from ray.train import Checkpoint, CheckpointConfig, DataConfig, FailureConfig, RunConfig, ScalingConfig
from ray.train.torch import TorchTrainer
from ray.train.v2.api.callback import UserCallback
from ray.util.queue import Empty, Queue

from orchestrator.checkpoint import load_model, read_state, write_checkpoint
from orchestrator.data import PreparedData, prepare_data
from orchestrator.errors import OrchestratorError
from orchestrator.models import build_model, forward
from orchestrator.planning import WorkerPlan
from orchestrator.preprocess import UNKNOWN_LABEL
from orchestrator.spec import JobSpec

CONTROLLER_FAILURE_LIMIT = 2

# ------------------------------------------------------------------------------ loop building blocks


def make_optimizer(params, t: dict) -> torch.optim.Optimizer:
    if t["optimizer"] == "sgd":
        return torch.optim.SGD(params, lr=t["lr"], momentum=t["momentum"], weight_decay=t["weight_decay"])
    if t["optimizer"] == "adam":
        return torch.optim.Adam(params, lr=t["lr"], weight_decay=t["weight_decay"])
    return torch.optim.AdamW(params, lr=t["lr"], weight_decay=t["weight_decay"])


def lr_factor(t: dict, epoch: int) -> float:
    """Learning-rate multiplier for an epoch (0-based), applied per epoch."""
    epochs, warm = t["epochs"], t["warmup_epochs"]
    if warm and epoch < warm:
        return (epoch + 1) / (warm + 1)
    if t["schedule"] == "cosine":
        span = max(1, epochs - warm)
        return 0.5 * (1 + math.cos(math.pi * (epoch - warm) / span))
    if t["schedule"] == "step":
        return t["gamma"] ** (epoch // t["step_size"])
    if t["schedule"] == "onecycle":  # triangle up to the peak at 30%, then down to 1/25
        peak = max(1, int(0.3 * epochs))
        if epoch < peak:
            return 0.1 + 0.9 * epoch / peak
        return max(0.04, 1 - 0.96 * (epoch - peak) / max(1, epochs - peak))
    return 1.0


def make_loss(task: str, label_smoothing: float) -> nn.Module:
    if task == "classification":
        return nn.CrossEntropyLoss(ignore_index=UNKNOWN_LABEL, label_smoothing=label_smoothing, reduction="sum")
    return nn.MSELoss(reduction="sum")


def autocast_dtype(mode: str, device: torch.device) -> Optional[torch.dtype]:
    """Mixed precision applies on GPU only; auto picks bf16 where the GPU supports it."""
    if device.type != "cuda" or mode == "off":
        return None
    if mode == "bf16" or (mode == "auto" and torch.cuda.is_bf16_supported()):
        return torch.bfloat16
    return torch.float16


class Sums:
    """Per-epoch sums, all-reduced across workers so every rank sees global metrics."""

    # loss sum, rows the loss counts (known labels), rows, correct predictions, |err| sum, err^2 sum
    LOSS, N_LOSS, ROWS, CORRECT, ABS, SQ = range(6)

    def __init__(self, device: torch.device):
        self.t = torch.zeros(6, dtype=torch.float64, device=device)

    def add(self, task: str, loss: torch.Tensor, out: torch.Tensor, y: torch.Tensor) -> None:
        with torch.no_grad():
            v = torch.zeros(6, dtype=torch.float64, device=self.t.device)
            v[self.LOSS] = loss.double()
            v[self.ROWS] = y.numel()
            if task == "classification":
                v[self.N_LOSS] = (y != UNKNOWN_LABEL).sum()  # the loss ignores unseen labels...
                v[self.CORRECT] = (out.argmax(dim=1) == y).sum()  # ...accuracy counts them wrong
            else:
                err = out.reshape(-1).double() - y.double()
                v[self.N_LOSS] = y.numel()
                v[self.ABS], v[self.SQ] = err.abs().sum(), (err * err).sum()
            self.t += v

    def all_reduce(self) -> None:
        if dist.is_available() and dist.is_initialized():
            dist.all_reduce(self.t)

    def metrics(self, task: str, prefix: str, target_std: float = 1.0) -> dict[str, float]:
        s = self.t.tolist()
        out = {f"{prefix}loss": s[self.LOSS] / max(s[self.N_LOSS], 1)}
        if task == "classification":
            out[f"{prefix}accuracy"] = s[self.CORRECT] / max(s[self.ROWS], 1)
        else:  # errors back in the label's own units
            out[f"{prefix}rmse"] = math.sqrt(s[self.SQ] / max(s[self.ROWS], 1)) * target_std
            out[f"{prefix}mae"] = s[self.ABS] / max(s[self.ROWS], 1) * target_std
        return out


def evaluate(model: nn.Module, batches, task: str, model_spec: dict, device: torch.device, loss_fn: nn.Module, target_std: float, prefix: str) -> dict[str, float]:
    sums = Sums(device)
    model.eval()
    with torch.no_grad():
        for b in batches:
            x, y = b["x"].to(device), b["y"].to(device)
            out = forward(model, x, model_spec).float()
            loss = loss_fn(out, y) if task == "classification" else loss_fn(out.reshape(-1), y)
            sums.add(task, loss, out, y)
    return sums.metrics(task, prefix, target_std)


def _y_dtype(task: str) -> torch.dtype:
    return torch.int64 if task == "classification" else torch.float32


# ----------------------------------------------------------------------------------- worker loop


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

    def report(self, metrics: dict, checkpoint: Optional[Checkpoint]) -> None:
        ray.train.report(metrics, checkpoint=checkpoint)


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

    def report(self, metrics: dict, checkpoint: Optional[Checkpoint]) -> None:
        from ray import tune

        tune.report(metrics, checkpoint=checkpoint)


def train_loop_per_worker(config: dict, session=None) -> Optional[dict]:
    """Runs on every Ray Train worker (or in an in-process trial). `config` is plain data (see build_loop_config)."""
    session = session or TrainSession()
    t = config["train"]
    task, model_spec = config["task"], config["model"]
    rank = session.rank
    torch.set_num_threads(config["torch_threads"])
    torch.manual_seed(t["seed"])
    device = session.device()

    model = build_model(model_spec, config["input_shape"], config["num_outputs"], t["dropout"])
    optimizer = make_optimizer(model.parameters(), t)
    start_epoch, best, since_best, restored_from = 0, None, 0, None

    ckpt = session.get_checkpoint()
    if ckpt is not None:  # a restarted worker group, a resumed trial, or a re-run of the same run name: resume
        with ckpt.as_directory() as d:
            state = read_state(d)
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        start_epoch = state["epoch"] + 1
        best, since_best = state.get("best"), state.get("since_best", 0)
        restored_from = state["epoch"]

    model = session.prepare_model(model)
    raw_model = model.module if hasattr(model, "module") else model
    loss_fn = make_loss(task, t["label_smoothing"])
    eval_loss_fn = make_loss(task, 0.0)  # validation loss is comparable across label-smoothing settings
    amp_dtype = autocast_dtype(t["mixed_precision"], device)
    scaler = torch.amp.GradScaler("cuda", enabled=amp_dtype == torch.float16)
    metric, mode = config["checkpoint_metric"], config["checkpoint_mode"]
    patience = (t.get("early_stopping") or {}).get("patience")
    min_delta = (t.get("early_stopping") or {}).get("min_delta", 0.0)
    target_std = config["target_std"]

    train_shard = session.dataset("train")
    val_data = session.dataset("validation")
    dtypes = {"x": torch.float32, "y": _y_dtype(task)}

    for epoch in range(start_epoch, t["epochs"]):
        t0 = time.perf_counter()
        # Dropout's generator is seeded per epoch and rank (like the shuffle below), so an epoch re-run
        # after a restart from a checkpoint draws what the unkilled run drew.
        torch.manual_seed((t["seed"] * 1000 + epoch) * 1000 + rank)
        lr = t["lr"] * lr_factor(t, epoch)
        for g in optimizer.param_groups:
            g["lr"] = lr
        model.train()
        sums = Sums(device)
        for b in train_shard.iter_torch_batches(
            batch_size=t["batch_size"], dtypes=dtypes, device=device,
            local_shuffle_buffer_size=max(4 * t["batch_size"], 256), local_shuffle_seed=t["seed"] * 1000 + epoch,
        ):
            x, y = b["x"], b["y"]
            with torch.autocast(device_type=device.type, dtype=amp_dtype or torch.float32, enabled=amp_dtype is not None):
                out = forward(model, x, model_spec)
                loss = loss_fn(out.float(), y) if task == "classification" else loss_fn(out.float().reshape(-1), y)
            known = (y != UNKNOWN_LABEL).sum().clamp(min=1) if task == "classification" else torch.tensor(y.numel(), device=device)
            optimizer.zero_grad(set_to_none=True)
            scaler.scale(loss / known).backward()
            if t["grad_clip"]:
                scaler.unscale_(optimizer)
                nn.utils.clip_grad_norm_(model.parameters(), t["grad_clip"])
            scaler.step(optimizer)
            scaler.update()
            sums.add(task, loss.detach(), out.detach().float(), y)
        sums.all_reduce()
        metrics = {"epoch": epoch + 1, "lr": lr, **sums.metrics(task, "train_", target_std)}
        if not math.isfinite(metrics["train_loss"]):
            # Every rank sees the same all-reduced loss, so all stop together. Retrying would diverge
            # again, so this ends the run (no exception, no restart) and tells the driver why
            # through the return value (a report without validation metrics would confuse Tune).
            return {"diverged_epoch": epoch + 1, "loss": metrics["train_loss"]}

        # Rank 0 scores the whole validation set on the unwrapped model (no collectives needed).
        stop = torch.zeros(1, device=device)
        if rank == 0:
            metrics.update(evaluate(raw_model, val_data.iter_torch_batches(batch_size=512, dtypes=dtypes, device=device), task, model_spec, device, eval_loss_fn, target_std, "val_"))
            score = metrics[metric]
            improved = best is None or (score < best - min_delta if mode == "min" else score > best + min_delta)
            best, since_best = (score, 0) if improved else (best, since_best + 1)
            if patience and since_best >= patience:
                stop[0] = 1
        if dist.is_available() and dist.is_initialized():
            dist.broadcast(stop, src=0)
        metrics.update(
            epoch_time_s=time.perf_counter() - t0,
            restored_from_epoch=-1 if restored_from is None else restored_from + 1,
            early_stopped=bool(stop.item()),
            world_size=session.world_size,
        )

        with tempfile.TemporaryDirectory() as tmp:
            checkpoint = None
            if rank == 0:
                write_checkpoint(
                    tmp,
                    state={"model": raw_model.state_dict(), "optimizer": optimizer.state_dict(), "epoch": epoch, "best": best, "since_best": since_best},
                    model_meta={"model": model_spec, "input_shape": config["input_shape"], "num_outputs": config["num_outputs"], "dropout": t["dropout"], "task": task, "job": config["job_name"]},
                    preprocessing=config["preprocessing"],
                    metrics=metrics,
                )
                checkpoint = Checkpoint.from_directory(tmp)
            session.report(metrics, checkpoint)
        if stop.item():
            break


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
        self.queue.put({"kind": "failure", "errors": {int(k): f"{type(v).__name__}: {v}"[:500] for k, v in worker_exceptions.items()},
                        "failure": self.failures, "max_failures": self.max_failures, "restarting": self.failures <= self.max_failures})


def build_loop_config(spec: JobSpec, prepared: PreparedData, plan: WorkerPlan) -> dict:
    pre = prepared.preprocessor
    return {
        "job_name": spec.name,
        "task": pre.task,
        "model": spec.model.model_dump(mode="json"),
        "train": spec.train.model_dump(mode="json"),
        "input_shape": pre.input_shape,
        "num_outputs": pre.num_outputs,
        "preprocessing": pre.to_dict(),
        "target_std": pre.target_std if pre.task == "regression" else 1.0,
        "checkpoint_metric": spec.checkpoint.metric,
        "checkpoint_mode": spec.checkpoint.mode,
        "torch_threads": plan.torch_threads,
    }


def loop_datasets(prepared: PreparedData) -> dict:
    """The datasets the training loop reads (the test split stays with the driver)."""
    return {"train": prepared.transformed["train"], "validation": prepared.transformed["validation"]}


def build_trainer(spec: JobSpec, prepared: PreparedData, plan: WorkerPlan, *, storage_path: str, name: str, callbacks: list, loop_overrides: Optional[dict] = None, train_loop=None) -> TorchTrainer:
    config = build_loop_config(spec, prepared, plan)
    config.update(loop_overrides or {})
    return TorchTrainer(
        train_loop or train_loop_per_worker,
        train_loop_config=config,
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
        # Each worker streams its own disjoint shard of train; validation goes whole to every worker
        # (only rank 0 reads it, so metrics are exact rather than computed on equalised shards).
        dataset_config=DataConfig(datasets_to_split=["train"]),
    )


@dataclass
class TrainOutcome:
    epochs: list[dict]
    best_checkpoint: str
    best_metrics: dict
    test_metrics: dict
    failures: list[dict] = field(default_factory=list)
    wall_time_s: float = 0.0


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


def evaluate_checkpoint(checkpoint_dir: str, dataset: ray.data.Dataset) -> dict[str, float]:
    """Score a saved checkpoint on a transformed dataset (the held-out test split) on the driver."""
    loaded = load_model(checkpoint_dir)
    task = loaded.meta["task"]
    device = torch.device("cpu")
    dtypes = {"x": torch.float32, "y": _y_dtype(task)}
    m = evaluate(
        loaded.model, dataset.iter_torch_batches(batch_size=512, dtypes=dtypes, device="cpu"), task,
        loaded.meta["model"], device, make_loss(task, 0.0),
        loaded.preprocessor.target_std if task == "regression" else 1.0, "test_",
    )
    m["test_rows"] = int(dataset.count())
    return m


def run_training(spec: JobSpec, run_dir: Path, plan: WorkerPlan, *, prepared: Optional[PreparedData] = None, on_event: Callable[[dict], None] = lambda e: None, loop_overrides: Optional[dict] = None) -> TrainOutcome:
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
    trainer = build_trainer(spec, prepared, plan, storage_path=str(run_dir.resolve()), name="train", callbacks=[ProgressCallback(queue, max_failures)], loop_overrides=loop_overrides)
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
    import json

    best_metrics = json.loads((best_dir / "metrics.json").read_text())
    test_metrics = evaluate_checkpoint(str(best_dir), prepared.transformed["test"])
    return TrainOutcome(
        epochs=[epochs[k] for k in sorted(epochs)], best_checkpoint=str(best_dir), best_metrics=best_metrics,
        test_metrics=test_metrics, failures=failures, wall_time_s=time.perf_counter() - t0,
    )


class DivergedError(OrchestratorError):
    pass


def check_diverged(result) -> None:
    """`result`: a Train Result, or what the loop returned (an in-process trial)."""
    rv = result if isinstance(result, dict) else getattr(result, "return_value", None)
    if isinstance(rv, dict) and rv.get("diverged_epoch"):
        raise DivergedError(
            f"training diverged: the loss became {rv['loss']} at epoch {rv['diverged_epoch']} "
            "(lower train.lr, or set train.grad_clip)"
        )


def _root_cause(e: BaseException) -> str:
    seen = e
    while seen.__cause__ is not None:
        seen = seen.__cause__
    lines = [l for l in str(seen).strip().splitlines() if l.strip()]
    return lines[-1] if lines else type(seen).__name__
