"""The per-worker training loop (torch only; its Ray runtime comes in as `session`, see driver.py).

`run_loop` reads as its steps: set up the model and optimizer and restore from the session's
checkpoint (`WorkerLoop.__init__`, `restore`), then per epoch `train_epoch`, `validate` (with
early stopping, plan.EarlyStopper) and `save_and_report`. Its config is the LoopConfig the driver
built (plan.py), read as is. Every rank takes the same number of steps each epoch (`epoch_batches`),
so DDP's gradient all-reduce never waits for a rank that has run out of batches.
"""

from __future__ import annotations

import math
import tempfile
import time
from dataclasses import dataclass
from typing import Optional

import numpy as np
import torch
import torch.distributed as dist
from torch import nn

from orchestrator import extensions
from orchestrator.data import kinds
from orchestrator.data.preprocess import UNKNOWN_LABEL
from orchestrator.models.build import build_model, forward
from orchestrator.spec import ACCURACY, LOSS, MAE, RMSE, TRAIN_PREFIX, VAL_PREFIX, TrainSpec
from orchestrator.train.checkpoint import read_state, write_checkpoint
from orchestrator.train.metrics import whole_split_metrics
from orchestrator.train.plan import EarlyStopper, LoopConfig, autocast_dtype

TRAIN_LOSS = TRAIN_PREFIX + LOSS
IN_MEMORY_READ_BATCH = 8192  # rows per batch when a worker reads its in-memory shard once

# ------------------------------------------------------------------------------ loop building blocks


def make_optimizer(params, t: TrainSpec) -> torch.optim.Optimizer:
    if t.optimizer == "sgd":
        return torch.optim.SGD(params, lr=t.lr, momentum=t.momentum, weight_decay=t.weight_decay)
    if t.optimizer == "adam":
        return torch.optim.Adam(params, lr=t.lr, weight_decay=t.weight_decay)
    return torch.optim.AdamW(params, lr=t.lr, weight_decay=t.weight_decay)


def lr_factor(t: TrainSpec, epoch: int) -> float:
    """Learning-rate multiplier for an epoch (0-based), applied per epoch."""
    epochs, warm = t.epochs, t.warmup_epochs
    if warm and epoch < warm:
        return (epoch + 1) / (warm + 1)
    if t.schedule == "cosine":
        span = max(1, epochs - warm)
        return 0.5 * (1 + math.cos(math.pi * (epoch - warm) / span))
    if t.schedule == "step":
        return t.gamma ** (epoch // t.step_size)
    if t.schedule == "onecycle":  # triangle up to the peak at 30%, then down to 1/25
        peak = max(1, int(0.3 * epochs))
        if epoch < peak:
            return 0.1 + 0.9 * epoch / peak
        return max(0.04, 1 - 0.96 * (epoch - peak) / max(1, epochs - peak))
    return 1.0


def make_loss(task: str, label_smoothing: float, class_weights: Optional[list[float]] = None) -> nn.Module:
    if task == "classification":
        weight = torch.tensor(class_weights, dtype=torch.float32) if class_weights else None
        return nn.CrossEntropyLoss(weight=weight, ignore_index=UNKNOWN_LABEL, label_smoothing=label_smoothing, reduction="sum")
    return nn.MSELoss(reduction="sum")


def amp_dtype(mode: str, device: torch.device) -> Optional[torch.dtype]:
    """train.mixed_precision on this device (the choice is plan.autocast_dtype)."""
    on_gpu = device.type == "cuda"
    name = autocast_dtype(mode, on_gpu, on_gpu and mode == "auto" and torch.cuda.is_bf16_supported())
    return getattr(torch, name) if name else None


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
            else:  # y [batch] or, forecasting several steps, [batch, horizon]
                err = out.reshape(-1).double() - y.reshape(-1).double()
                v[self.N_LOSS] = y.numel()
                v[self.ABS], v[self.SQ] = err.abs().sum(), (err * err).sum()
            self.t += v

    def all_reduce(self) -> None:
        if dist.is_available() and dist.is_initialized():
            dist.all_reduce(self.t)

    def metrics(self, task: str, prefix: str, target_std: float = 1.0) -> dict[str, float]:
        s = self.t.tolist()
        out = {prefix + LOSS: s[self.LOSS] / max(s[self.N_LOSS], 1)}
        if task == "classification":
            out[prefix + ACCURACY] = s[self.CORRECT] / max(s[self.ROWS], 1)
        else:  # errors back in the label's own units
            out[prefix + RMSE] = math.sqrt(s[self.SQ] / max(s[self.ROWS], 1)) * target_std
            out[prefix + MAE] = s[self.ABS] / max(s[self.ROWS], 1) * target_std
        return out


def batch_loss(loss_fn: nn.Module, task: str, out: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    return loss_fn(out, y) if task == "classification" else loss_fn(out.reshape(-1), y.reshape(-1))


def model_inputs(batch: dict, device: torch.device) -> dict[str, torch.Tensor]:
    """A batch's model inputs ("x", and "len" for text, sequence and series) on `device`; what forward() takes."""
    return {k: v.to(device) for k, v in batch.items() if k != "y"}


def evaluate(
    model: nn.Module,
    batches,
    task: str,
    model_spec: dict,
    device: torch.device,
    loss_fn: nn.Module,
    target_std: float,
    prefix: str,
    outputs: Optional[dict] = None,
) -> dict[str, float]:
    """A whole split's metrics in one process: the Sums ones, and for a classification the ones
    that need every prediction (train/metrics.py). `outputs`, when given, receives the split's
    labels and model outputs as numpy arrays ("y", "outputs")."""
    sums = Sums(device)
    labels, logits = [], []
    model.eval()
    with torch.no_grad():
        for b in batches:
            y = b["y"].to(device)
            out = forward(model, model_inputs(b, device), model_spec).float()
            sums.add(task, batch_loss(loss_fn, task, out, y), out, y)
            if task == "classification" or outputs is not None:
                labels.append(y.cpu())
                logits.append(out.cpu())
    metrics = sums.metrics(task, prefix, target_std)
    if task == "classification" and labels:
        metrics.update(whole_split_metrics(torch.cat(labels).numpy(), torch.cat(logits).numpy(), prefix, UNKNOWN_LABEL))
    if outputs is not None:
        outputs["y"] = torch.cat(labels).numpy() if labels else np.zeros(0)
        outputs["outputs"] = torch.cat(logits).numpy() if logits else np.zeros((0, 1))
    return metrics


def in_memory_batches(columns: dict[str, torch.Tensor], batch_size: int):
    """Consecutive batches of `batch_size` rows (the last one shorter) of tensors already in memory."""
    n = len(columns["y"]) if columns else 0
    for i in range(0, n, batch_size):
        yield {k: v[i : i + batch_size] for k, v in columns.items()}


def read_whole(data, dtypes: dict[str, torch.dtype], rank: int = 0, world_size: int = 1) -> dict[str, torch.Tensor]:
    """A dataset or shard read once, in order, as one CPU tensor per column ({} when it has no rows).
    With `world_size` > 1, only this rank's share of a dataset every rank reads whole: the rows
    whose index i has i % world_size == rank (disjoint, and equal to within a row)."""
    parts: dict[str, list[torch.Tensor]] = {}
    start = 0
    for b in data.iter_torch_batches(batch_size=IN_MEMORY_READ_BATCH, dtypes=dtypes, device="cpu"):
        n = len(next(iter(b.values()))) if b else 0
        if world_size > 1:
            first = (rank - start) % world_size
            b = {k: v[first::world_size] for k, v in b.items()}
        start += n
        for k, v in b.items():
            parts.setdefault(k, []).append(v)
    return {k: torch.cat(v) for k, v in parts.items()}


def agreed_min(value: int, device: torch.device) -> int:
    """The smallest of `value` over all ranks (itself without a process group)."""
    if not (dist.is_available() and dist.is_initialized()):
        return value
    t = torch.tensor([value], dtype=torch.int64, device=device)
    dist.all_reduce(t, op=dist.ReduceOp.MIN)
    return int(t.item())


def _y_dtype(task: str) -> torch.dtype:
    return torch.int64 if task == "classification" else torch.float32


def batch_dtypes(input_kind: str, task: str) -> dict[str, torch.dtype]:
    """The torch dtype of each column of a transformed batch: token ids and lengths stay integers."""
    kind = kinds.get(input_kind)
    dtypes = {"x": torch.int64 if kind.token_ids else torch.float32, "y": _y_dtype(task)}
    if kind.steps:
        dtypes["len"] = torch.int64
    return dtypes


# ----------------------------------------------------------------------------------- worker loop


@dataclass
class Restored:
    """Where a worker starts: epoch 0, or after the epoch of the checkpoint it resumes from."""

    start_epoch: int = 0
    best: Optional[float] = None
    since_best: int = 0
    restored_from: Optional[int] = None


def restore(session, model: nn.Module, optimizer: torch.optim.Optimizer) -> Restored:
    """Load the session's checkpoint into model and optimizer, if there is one."""
    ckpt = session.get_checkpoint()
    if ckpt is None:
        return Restored()
    # a restarted worker group, a resumed trial, or a re-run of the same run name: resume
    with ckpt.as_directory() as d:
        state = read_state(d)
    model.load_state_dict(state["model"])
    optimizer.load_state_dict(state["optimizer"])
    return Restored(
        start_epoch=state["epoch"] + 1, best=state.get("best"), since_best=state.get("since_best", 0), restored_from=state["epoch"]
    )


class WorkerLoop:
    """One worker's run of the training loop: its model, optimizer, data and early-stopping state."""

    def __init__(self, config: LoopConfig, session):
        self.config, self.session = config, session
        t = self.t = config.train
        self.task, self.model_spec = config.task, config.model
        self.rank = session.rank
        torch.set_num_threads(config.torch_threads)
        torch.manual_seed(t.seed)
        self.device = session.device()

        model = build_model(
            self.model_spec,
            config.input_shape,
            config.num_outputs,
            t.dropout,
            vocab_size=config.vocab_size,
            max_length=config.max_length,
            code_dirs=config.code_dirs,
        )
        self.optimizer = make_optimizer(model.parameters(), t)
        r = restore(session, model, self.optimizer)
        self.start_epoch, self.restored_from = r.start_epoch, r.restored_from
        self.stopper = EarlyStopper.for_loop(config, r.best, r.since_best)

        self.model = session.prepare_model(model)
        self.raw_model = self.model.module if hasattr(self.model, "module") else self.model
        self.loss_fn = make_loss(self.task, t.label_smoothing, config.class_weights).to(self.device)
        # validation loss is comparable across label-smoothing and class-weight settings
        self.eval_loss_fn = make_loss(self.task, 0.0)
        self.amp_dtype = amp_dtype(t.mixed_precision, self.device)
        self.scaler = torch.amp.GradScaler("cuda", enabled=self.amp_dtype == torch.float16)
        self.target_std = config.target_std

        self.train_shard = session.dataset("train")
        self.val_data = session.dataset("validation")
        self.dtypes = batch_dtypes(config.input_kind, self.task)
        # in memory: this rank's shard as tensors (read on the first epoch) and the rows every rank uses per epoch
        self.train_tensors: Optional[dict[str, torch.Tensor]] = None
        self.val_tensors: Optional[dict[str, torch.Tensor]] = None
        self.rows_per_epoch = 0

    def run(self) -> Optional[dict]:
        for epoch in range(self.start_epoch, self.t.epochs):
            t0 = time.perf_counter()
            metrics = self.train_epoch(epoch)
            if not math.isfinite(metrics[TRAIN_LOSS]):
                # Every rank sees the same all-reduced loss, so all stop together. Retrying would diverge
                # again, so this ends the run (no exception, no restart) and tells the driver why
                # through the return value (a report without validation metrics would confuse Tune).
                return {"diverged_epoch": epoch + 1, LOSS: metrics[TRAIN_LOSS]}
            stop = self.validate(metrics)
            metrics.update(
                epoch_time_s=time.perf_counter() - t0,
                restored_from_epoch=-1 if self.restored_from is None else self.restored_from + 1,
                early_stopped=stop,
                world_size=self.session.world_size,
            )
            self.save_and_report(epoch, metrics)
            if stop:
                break
        return None

    def train_epoch(self, epoch: int) -> dict:
        """One pass over this worker's shard; returns the epoch's all-reduced train metrics."""
        t, device, model, optimizer, scaler = self.t, self.device, self.model, self.optimizer, self.scaler
        task, amp_dtype = self.task, self.amp_dtype
        # Dropout's generator is seeded per epoch and rank (like the shuffle below), so an epoch re-run
        # after a restart from a checkpoint draws what the unkilled run drew.
        torch.manual_seed((t.seed * 1000 + epoch) * 1000 + self.rank)
        lr = t.lr * lr_factor(t, epoch)
        for g in optimizer.param_groups:
            g["lr"] = lr
        model.train()
        sums = Sums(device)
        steps = 0
        for b in self.epoch_batches(epoch):
            steps += 1
            y = b["y"].to(device)
            # Token ids and lengths stay int64 under autocast (it only casts floating-point inputs).
            with torch.autocast(device_type=device.type, dtype=amp_dtype or torch.float32, enabled=amp_dtype is not None):
                out = forward(model, model_inputs(b, device), self.model_spec)
                loss = batch_loss(self.loss_fn, task, out.float(), y)
            known = (y != UNKNOWN_LABEL).sum().clamp(min=1) if task == "classification" else torch.tensor(y.numel(), device=device)
            optimizer.zero_grad(set_to_none=True)
            scaler.scale(loss / known).backward()
            if t.grad_clip:
                scaler.unscale_(optimizer)
                nn.utils.clip_grad_norm_(model.parameters(), t.grad_clip)
            scaler.step(optimizer)
            scaler.update()
            sums.add(task, loss.detach(), out.detach().float(), y)
        sums.all_reduce()
        return {"epoch": epoch + 1, "lr": lr, **sums.metrics(task, TRAIN_PREFIX, self.target_std), "steps": steps}

    def epoch_batches(self, epoch: int):
        """This rank's training batches for an epoch, shuffled; every rank gets the same number of them,
        so no rank waits in DDP's gradient all-reduce for a step another rank never takes."""
        if self.config.in_memory:
            return self._in_memory_batches(epoch)
        return self._streamed_batches(epoch)

    def _in_memory_batches(self, epoch: int):
        """The shard is read once per run (from the object store) into tensors: every rank reads the
        materialised split and keeps every world_size-th row from its rank on, which spares a Train
        run Ray Data's split coordinator (measured: about 5 s of a 2-epoch, 2-worker run). Ranks agree up front on
        the rows each uses per epoch (the fewest any rank holds; the equalised split makes that all of
        them, or all but a few), so they take the same ceil(rows / batch_size) steps. A rank holding
        more rows leaves out a different random few each epoch."""
        t = self.t
        if self.train_tensors is None:  # the whole split reaches every rank (build_trainer): each keeps its share
            self.train_tensors = read_whole(self.train_shard, self.dtypes, self.rank, getattr(self.session, "world_size", 1))
            local = len(self.train_tensors["y"]) if self.train_tensors else 0
            self.rows_per_epoch = agreed_min(local, self.device)
        if not self.rows_per_epoch:
            return iter(())
        # seeded by train.seed, epoch and rank: the same seed gives the same order, each epoch another
        g = torch.Generator().manual_seed(((t.seed * 1000 + epoch) * 1000 + self.rank) * 2 + 1)
        perm = torch.randperm(len(self.train_tensors["y"]), generator=g)[: self.rows_per_epoch]
        return in_memory_batches({k: v[perm] for k, v in self.train_tensors.items()}, t.batch_size)

    def _streamed_batches(self, epoch: int):
        """Ray Data's local shuffle can yield short batches mid-stream at block boundaries, so ranks with
        equal rows can still hold different numbers of batches. Before each step the ranks agree that
        every one of them has a batch (an all-reduce of one integer); the epoch ends when any rank is
        out, and the others drop what they have left of it (at most a batch or two)."""
        t = self.t
        it = iter(
            self.train_shard.iter_torch_batches(
                batch_size=t.batch_size,
                dtypes=self.dtypes,
                device=self.device,
                local_shuffle_buffer_size=max(4 * t.batch_size, 256),
                local_shuffle_seed=t.seed * 1000 + epoch,
            )
        )
        while True:
            b = next(it, None)
            if not agreed_min(int(b is not None), self.device):
                for _ in it:  # read the shard to its end, so the next epoch starts a fresh pass
                    pass
                return
            yield b

    def validate(self, metrics: dict) -> bool:
        """Rank 0 scores the whole validation set on the unwrapped model (no collectives needed) into
        `metrics`; returns whether early stopping ends the run (the same answer on every rank)."""
        stop = torch.zeros(1, device=self.device)
        if self.rank == 0:
            if self.config.in_memory:  # the validation split is materialised too: read it once per run
                if self.val_tensors is None:
                    self.val_tensors = read_whole(self.val_data, self.dtypes)
                batches = in_memory_batches(self.val_tensors, 512)
            else:
                batches = self.val_data.iter_torch_batches(batch_size=512, dtypes=self.dtypes, device=self.device)
            metrics.update(
                evaluate(self.raw_model, batches, self.task, self.model_spec, self.device, self.eval_loss_fn, self.target_std, VAL_PREFIX)
            )
            if self.stopper.update(metrics[self.config.checkpoint_metric]):
                stop[0] = 1
        if dist.is_available() and dist.is_initialized():
            dist.broadcast(stop, src=0)
        return bool(stop.item())

    def save_and_report(self, epoch: int, metrics: dict) -> None:
        """Rank 0 writes the checkpoint; every rank reports the epoch's metrics."""
        config, stopper = self.config, self.stopper
        with tempfile.TemporaryDirectory() as tmp:
            checkpoint_dir = None
            if self.rank == 0:
                write_checkpoint(
                    tmp,
                    state={
                        "model": self.raw_model.state_dict(),
                        "optimizer": self.optimizer.state_dict(),
                        "epoch": epoch,
                        "best": stopper.best,
                        "since_best": stopper.since_best,
                    },
                    model_meta={
                        "model": self.model_spec,
                        "input_shape": config.input_shape,
                        "num_outputs": config.num_outputs,
                        "dropout": self.t.dropout,
                        "task": self.task,
                        "job": config.job_name,
                        "input_kind": config.input_kind,
                        "vocab_size": config.vocab_size,
                        "max_length": config.max_length,
                        "code_dirs": config.code_dirs,
                    },
                    preprocessing=config.preprocessing,
                    metrics=metrics,
                )
                checkpoint_dir = tmp
            self.session.report(metrics, checkpoint_dir)


def run_loop(config: LoopConfig, session) -> Optional[dict]:
    """The whole loop on one worker. Returns None, or {"diverged_epoch", "loss"} when the loss became non-finite."""
    extensions.ensure(config.extensions)
    return WorkerLoop(config, session).run()
