"""The spec's `train`, `scaling`, `checkpoint` and `output` sections."""

from __future__ import annotations

from typing import Annotated, Literal, Optional, Union

from pydantic import Field, field_validator, model_validator

from orchestrator.spec.base import SpecModel
from orchestrator.spec.metrics import METRIC_MODES, VAL_LOSS, ValMetric


class EarlyStopping(SpecModel):
    patience: int = Field(gt=0, le=10_000, description="Epochs in a row without improvement of checkpoint.metric before training stops.")
    min_delta: float = Field(
        0.0, ge=0, le=1e6, description="Smallest change of checkpoint.metric, in that metric's units, that counts as an improvement."
    )


class TrainSpec(SpecModel):
    epochs: int = Field(
        10, gt=0, le=10_000, description="Epochs (full passes over the train split) each training run or trial runs at most."
    )
    batch_size: int = Field(64, gt=0, le=1_000_000, description="Rows per batch on each worker; a step sees workers x batch_size rows.")
    optimizer: Literal["adamw", "adam", "sgd"] = Field(
        "adamw", description="torch optimizer: adamw (decoupled weight decay), adam or sgd (with `momentum`); all use lr and weight_decay."
    )
    lr: float = Field(1e-3, gt=0, le=10, description="Peak learning rate; the schedule multiplies it by a factor each epoch.")
    momentum: float = Field(0.9, ge=0, lt=1, description="Momentum factor, 0 to below 1 (optimizer: sgd only).")
    schedule: Literal["constant", "cosine", "step", "onecycle"] = Field(
        "constant",
        description="lr per epoch: constant; cosine: towards 0 over the epochs after warm-up; step: x gamma every "
        "step_size epochs; onecycle: 0.1 x lr up to lr at 30% of the epochs, then down towards lr / 25.",
    )
    step_size: int = Field(10, gt=0, le=10_000, description="Epochs between lr decays (schedule: step).")
    gamma: float = Field(0.1, gt=0, le=1, description="Factor (0 to 1) the lr is multiplied by every step_size epochs (schedule: step).")
    warmup_epochs: int = Field(
        0,
        ge=0,
        le=10_000,
        description="Epochs of linear warm-up at the start, epoch e at lr x (e + 1) / (warmup_epochs + 1); "
        "they replace the schedule's first epochs (cosine starts after them); 0: none.",
    )
    weight_decay: float = Field(
        0.0, ge=0, le=1, description="Weight-decay coefficient, 0 to 1 (adamw: decoupled, adam and sgd: L2 on the gradient); 0: none."
    )
    dropout: float = Field(
        0.0,
        ge=0,
        lt=1,
        description="Dropout probability, 0 to below 1, after each mlp hidden layer and the cnn dense layer; rnn: on "
        "embeddings, between layers and before the head; transformer: on embeddings, attention, feed-forward blocks and "
        "before the head (a custom factory gets `dropout`).",
    )
    label_smoothing: float = Field(
        0.0, ge=0, lt=1, description="Fraction, 0 to below 1, of the target probability spread over all classes (classification only)."
    )
    class_weights: Optional[Union[Literal["balanced"], dict[Union[int, str], Annotated[float, Field(gt=0, le=1e6)]]]] = Field(
        None,
        description="Weights of the classes in the training loss, for imbalanced labels (classification only): balanced "
        "(rows / (classes x the class's rows in the training split), scikit-learn's rule) or a map from label to weight, "
        "above 0 (a class not listed weighs 1); validation and test metrics stay unweighted.",
    )
    grad_clip: Optional[float] = Field(
        None, gt=0, le=1e6, description="Max global L2 norm of the gradients, clipped before each step; omit to disable."
    )
    early_stopping: Optional[EarlyStopping] = Field(
        None, description="Stop a run when checkpoint.metric stops improving; omit to train all epochs."
    )
    mixed_precision: Literal["auto", "off", "bf16", "fp16"] = Field(
        "auto", description="Autocast dtype on GPU: auto (bf16 where the GPU supports it, else fp16), bf16, fp16 or off; always off on CPU."
    )
    max_failures: int = Field(
        3, ge=0, le=1000, description="Worker-group restarts allowed per run (a count); each resumes from the latest checkpoint."
    )
    seed: int = Field(0, ge=0, le=2**32 - 1, description="Seed for weight initialisation and shuffling (0 to 2**32 - 1).")

    @model_validator(mode="after")
    def _warmup_fits(self) -> "TrainSpec":
        if self.warmup_epochs >= self.epochs and self.warmup_epochs:
            raise ValueError(f"warmup_epochs ({self.warmup_epochs}) must be smaller than epochs ({self.epochs})")
        return self


class ScalingSpec(SpecModel):
    workers: int = Field(2, gt=0, le=4096, description="Data-parallel (DDP) worker processes per training run.")
    cpus_per_worker: Union[float, Literal["auto"]] = Field(
        "auto",
        description="CPUs (fractions allowed) reserved per worker. auto: share the cluster's CPUs, leaving room for Ray Data.",
    )
    gpus_per_worker: float = Field(0, ge=0, le=64, description="GPUs (fractions share a GPU) reserved per worker; > 0 trains on GPU.")

    @field_validator("cpus_per_worker")
    @classmethod
    def _positive(cls, v: Union[float, str]) -> Union[float, str]:
        if v != "auto" and not (0 < float(v) <= 1024):
            raise ValueError("must be 'auto' or a number in (0, 1024]")
        return v

    @property
    def use_gpu(self) -> bool:
        return self.gpus_per_worker > 0


class CheckpointSpec(SpecModel):
    keep: int = Field(2, gt=0, le=1000, description="Checkpoints kept per run (best by `metric`; the latest is always kept too).")
    metric: ValMetric = Field(VAL_LOSS, description="Validation metric that ranks checkpoints and picks the best one.")

    @property
    def mode(self) -> str:
        return METRIC_MODES[self.metric]


class OutputSpec(SpecModel):
    dir: str = Field(
        "runs",
        min_length=1,
        pattern=r"^[^\x00]*$",
        description="Folder under which each run gets its own directory (relative to the working directory).",
    )
