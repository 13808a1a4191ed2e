"""Training plan: spec + cluster resources -> what each worker reserves (`plan_workers`; and, for a
cluster built to fit the spec, `requested_workers`), the config the per-worker loop gets
(`LoopConfig`), and the loop's pure decisions (mixed precision, early stopping). Pure, no Ray or
torch import.

On a small machine Ray Train workers must not take every CPU: Ray Data's read and transform
tasks (DATA_TASK_CPUS each) would never be scheduled and the run would hang. So `auto` shares
what is left after DATA_RESERVE_CPUS, and an explicit request that leaves no room is refused up
front with a clear message instead of hanging.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Optional

from orchestrator import extensions
from orchestrator.errors import DataError, ResourceError, counted
from orchestrator.spec import JobSpec, ScalingSpec, TrainSpec

if TYPE_CHECKING:  # ingest imports Ray; the plan only reads PreparedData's fields
    from orchestrator.data.ingest import PreparedData

DATA_RESERVE_CPUS = 1.0  # some Ray Data operators (file listing) always ask for a whole CPU
MIN_WORKER_CPUS = 0.1
AUTO_WORKER_CPUS = 1.0  # `cpus_per_worker: auto` on a cluster built for the spec (Kubernetes): one whole CPU


@dataclass(frozen=True)
class ClusterResources:
    cpus: float
    gpus: float
    node_cpus: tuple[float, ...] = ()  # per alive node; empty means one node with everything
    node_gpus: tuple[float, ...] = ()


@dataclass(frozen=True)
class WorkerPlan:
    workers: int
    cpus_per_worker: float
    gpus_per_worker: float
    torch_threads: int

    @property
    def total_cpus(self) -> float:
        return self.workers * self.cpus_per_worker

    def resources_per_worker(self) -> dict[str, float]:
        res = {"CPU": self.cpus_per_worker}
        if self.gpus_per_worker:
            res["GPU"] = self.gpus_per_worker
        return res


def _worker_plan(workers: int, cpus: float, gpus: float) -> WorkerPlan:
    return WorkerPlan(workers=workers, cpus_per_worker=cpus, gpus_per_worker=gpus, torch_threads=max(1, int(cpus)))


def requested_workers(scaling: ScalingSpec) -> WorkerPlan:
    """What each worker reserves on a cluster built to fit the spec (a KubeRay one) rather than the
    spec fitted into a given cluster (`plan_workers`): `auto` is AUTO_WORKER_CPUS each. Such a
    cluster also needs DATA_RESERVE_CPUS beside the workers."""
    cpus = AUTO_WORKER_CPUS if scaling.cpus_per_worker == "auto" else float(scaling.cpus_per_worker)
    return _worker_plan(scaling.workers, cpus, float(scaling.gpus_per_worker))


def plan_workers(scaling: ScalingSpec, cluster: ClusterResources, *, concurrent_runs: int = 1) -> WorkerPlan:
    """CPUs/GPUs per worker so that `concurrent_runs` trainings plus Ray Data fit in the cluster."""
    n = scaling.workers
    runs = max(1, concurrent_runs)
    free = cluster.cpus - DATA_RESERVE_CPUS
    if scaling.cpus_per_worker == "auto":
        share = math.floor(free / (n * runs) * 100) / 100
        if share < MIN_WORKER_CPUS:
            raise ResourceError(
                f"scaling.workers={n}"
                + (f" x {runs} concurrent trials" if runs > 1 else "")
                + f" does not fit in this cluster's {cluster.cpus:g} CPUs (each worker needs at least "
                f"{MIN_WORKER_CPUS} CPU and {DATA_RESERVE_CPUS} CPU stays free for Ray Data); lower scaling.workers"
            )
        cpus = share if share < 1 else float(math.floor(share))
    else:
        cpus = float(scaling.cpus_per_worker)
        need = cpus * n * runs + DATA_RESERVE_CPUS
        if need > cluster.cpus + 1e-9:
            raise ResourceError(
                f"scaling asks for {counted(n, 'worker')} x {counted(cpus, 'CPU')}"
                + (f" x {runs} concurrent trials" if runs > 1 else "")
                + f" + {DATA_RESERVE_CPUS} CPU for Ray Data = {need:g} CPUs, but the cluster has {cluster.cpus:g}; "
                "lower scaling.workers or scaling.cpus_per_worker (or use 'auto')"
            )
    if cluster.node_cpus and cpus > max(cluster.node_cpus) + 1e-9:
        raise ResourceError(f"scaling.cpus_per_worker={cpus:g} is more than the largest node has ({max(cluster.node_cpus):g} CPUs)")
    gpus = float(scaling.gpus_per_worker)
    if gpus:
        need_gpus = gpus * n * runs
        if need_gpus > cluster.gpus + 1e-9:
            raise ResourceError(
                f"scaling asks for {counted(n, 'worker')} x {counted(gpus, 'GPU')} = {counted(need_gpus, 'GPU')}, but the cluster has {cluster.gpus:g}"
                + ("; set scaling.gpus_per_worker: 0 to train on CPU" if cluster.gpus == 0 else "")
            )
        if cluster.node_gpus and gpus > max(cluster.node_gpus) + 1e-9:
            raise ResourceError(f"scaling.gpus_per_worker={gpus:g} is more than the largest node has ({max(cluster.node_gpus):g})")
    return _worker_plan(n, cpus, gpus)


# --------------------------------------------------------------------------- the loop's config


@dataclass(frozen=True)
class LoopConfig:
    """Everything the per-worker loop reads, built once on the driver (`build_loop_config`) and
    read as is on the workers: the spec's sections arrive already validated, nothing is re-parsed."""

    job_name: str
    task: str  # classification | regression
    model: dict[str, Any]  # the spec's model section as plain data: the form model.json keeps and build_model reads
    train: TrainSpec
    input_shape: list[int]
    num_outputs: int
    preprocessing: dict[str, Any]  # the fitted Preprocessor's state, written into every checkpoint
    target_std: float  # regression errors are reported times this, in the label's units; 1 for classification
    checkpoint_metric: str
    checkpoint_mode: str  # min | max
    torch_threads: int
    input_kind: str = "table"  # table | image | text | sequence | series (Preprocessor.kind): the batch's dtypes
    vocab_size: Optional[int] = None  # text: token ids are below this
    max_length: Optional[int] = None  # text, sequence, series: the longest input in tokens or steps
    # the training split is materialised (data.cache memory, or auto on a small source): each worker
    # then takes its shard as tensors once per run and shuffles it with a permutation per epoch
    in_memory: bool = False
    # where model.factory's module is looked for after Python's path: the spec's folder (models/custom.py)
    code_dirs: list[str] = field(default_factory=list)
    class_weights: Optional[list[float]] = None  # per class, in the preprocessor's class order (train.class_weights)
    extensions: list[str] = field(default_factory=list)  # `module:function`s each worker calls first (orchestrator/extensions.py)


def is_materialised(dataset: Any) -> bool:
    """Whether a Ray dataset is already in the object store (read without importing Ray here)."""
    return any(c.__name__ == "MaterializedDataset" for c in type(dataset).__mro__)


# A worker holds its in-memory shard as tensors, and a shuffled copy of it during an epoch: past
# this size per worker the shard is streamed from the object store instead.
IN_MEMORY_MAX_SHARD_BYTES = 1 << 30


def hold_in_memory(materialised: bool, train_bytes: Optional[int], workers: int) -> bool:
    """Whether each worker takes its shard of the training split as tensors once per run: the split
    is materialised and a worker's share of it (bytes in the object store) is at most
    IN_MEMORY_MAX_SHARD_BYTES. An unknown size streams."""
    return bool(materialised and train_bytes is not None and train_bytes / max(1, workers) <= IN_MEMORY_MAX_SHARD_BYTES)


def build_loop_config(spec: JobSpec, prepared: PreparedData, plan: WorkerPlan) -> LoopConfig:
    pre = prepared.preprocessor
    train: Any = (getattr(prepared, "transformed", None) or {}).get("train")
    materialised = is_materialised(train)
    train_bytes = train.size_bytes() if materialised else None  # the object store's block metadata: no execution
    return LoopConfig(
        job_name=spec.name,
        task=pre.task,
        model=spec.model.model_dump(mode="json"),
        train=spec.train,
        input_shape=list(pre.input_shape),
        num_outputs=pre.num_outputs,
        preprocessing=pre.to_dict(),
        target_std=pre.target_std if pre.task == "regression" else 1.0,
        checkpoint_metric=spec.checkpoint.metric,
        checkpoint_mode=spec.checkpoint.mode,
        torch_threads=plan.torch_threads,
        input_kind=pre.kind,
        vocab_size=pre.vocab_size,
        max_length=pre.max_length,
        in_memory=hold_in_memory(materialised, train_bytes, plan.workers),
        code_dirs=[str(spec.base_dir)],
        class_weights=class_weight_vector(spec.train.class_weights, pre.classes or [], pre.class_counts),
        extensions=extensions.used(),
    )


def class_weight_vector(setting, classes: list, counts: Optional[list[int]]) -> Optional[list[float]]:
    """train.class_weights as one weight per class (the preprocessor's order), or None for none.
    balanced: rows / (classes x the class's rows), scikit-learn's compute_class_weight("balanced").
    A map: its weights, 1 for a class it does not name; a label that is no class of the training
    split is refused (a typo would otherwise weigh nothing)."""
    if setting is None:
        return None
    if setting == "balanced":
        if not counts or len(counts) != len(classes):
            raise ValueError("train.class_weights: balanced needs the training split's class counts")
        total = sum(counts)
        return [total / (len(classes) * c) if c else 0.0 for c in counts]
    by_name = {str(c): i for i, c in enumerate(classes)}
    unknown = [k for k in setting if str(k) not in by_name]
    if unknown:
        raise DataError(
            f"train.class_weights: {', '.join(repr(k) for k in unknown)} is no class of the training split "
            f"(its classes: {', '.join(repr(c) for c in classes)})"
        )
    weights = [1.0] * len(classes)
    for k, w in setting.items():
        weights[by_name[str(k)]] = float(w)
    return weights


# ------------------------------------------------------------------------ the loop's decisions


def autocast_dtype(mode: str, on_gpu: bool, bf16_supported: bool) -> Optional[str]:
    """The torch dtype name ("bfloat16", "float16") to autocast to, or None for full precision.
    Mixed precision applies on GPU only; auto picks bf16 where the GPU supports it."""
    if not on_gpu or mode == "off":
        return None
    if mode == "bf16" or (mode == "auto" and bf16_supported):
        return "bfloat16"
    return "float16"


@dataclass
class EarlyStopper:
    """Tracks the best checkpoint metric; `update` says when it has not improved for `patience`
    epochs in a row (no patience: never). `best` and `since_best` go into each checkpoint, so a
    resumed run goes on counting where it stopped."""

    mode: str  # min | max
    patience: Optional[int] = None
    min_delta: float = 0.0
    best: Optional[float] = None
    since_best: int = 0

    @classmethod
    def for_loop(cls, config: LoopConfig, best: Optional[float] = None, since_best: int = 0) -> "EarlyStopper":
        es = config.train.early_stopping
        return cls(config.checkpoint_mode, es.patience if es else None, es.min_delta if es else 0.0, best, since_best)

    def update(self, score: float) -> bool:
        if self.best is None:
            improved = True
        elif self.mode == "min":
            improved = score < self.best - self.min_delta
        else:
            improved = score > self.best + self.min_delta
        self.best, self.since_best = (score, 0) if improved else (self.best, self.since_best + 1)
        return bool(self.patience and self.since_best >= self.patience)
