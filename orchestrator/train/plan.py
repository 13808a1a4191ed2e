"""Training plan: spec + cluster resources -> what each worker reserves, and the plain-data config the
per-worker loop gets (`build_loop_config`). Pure, no Ray import.

On a small machine Ray Train workers must not take every CPU: Ray Data's read and transform
tasks (DATA_TASK_CPUS each) would never be scheduled and the run would hang. So `auto` shares
what is left after DATA_RESERVE_CPUS, and an explicit request that leaves no room is refused up
front with a clear message instead of hanging.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING

from orchestrator.errors import ResourceError
from orchestrator.spec import JobSpec, ScalingSpec

if TYPE_CHECKING:  # ingest imports Ray; the plan only reads PreparedData's fields
    from orchestrator.data.ingest import PreparedData

DATA_RESERVE_CPUS = 1.0  # some Ray Data operators (file listing) always ask for a whole CPU
MIN_WORKER_CPUS = 0.1


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


def plan_workers(scaling: ScalingSpec, cluster: ClusterResources, *, concurrent_runs: int = 1) -> WorkerPlan:
    """CPUs/GPUs per worker so that `concurrent_runs` trainings plus Ray Data fit in the cluster."""
    n = scaling.workers
    runs = max(1, concurrent_runs)
    free = cluster.cpus - DATA_RESERVE_CPUS
    if scaling.cpus_per_worker == "auto":
        share = math.floor(free / (n * runs) * 100) / 100
        if share < MIN_WORKER_CPUS:
            raise ResourceError(
                f"scaling.workers={n}" + (f" x {runs} concurrent trials" if runs > 1 else "")
                + f" does not fit in this cluster's {cluster.cpus:g} CPUs (each worker needs at least "
                f"{MIN_WORKER_CPUS} CPU and {DATA_RESERVE_CPUS} CPU stays free for Ray Data); lower scaling.workers"
            )
        cpus = share if share < 1 else float(math.floor(share))
    else:
        cpus = float(scaling.cpus_per_worker)
        need = cpus * n * runs + DATA_RESERVE_CPUS
        if need > cluster.cpus + 1e-9:
            raise ResourceError(
                f"scaling asks for {n} workers x {cpus:g} CPUs"
                + (f" x {runs} concurrent trials" if runs > 1 else "")
                + f" + {DATA_RESERVE_CPUS} CPU for Ray Data = {need:g} CPUs, but the cluster has {cluster.cpus:g}; "
                "lower scaling.workers or scaling.cpus_per_worker (or use 'auto')"
            )
    if cluster.node_cpus and cpus > max(cluster.node_cpus) + 1e-9:
        raise ResourceError(
            f"scaling.cpus_per_worker={cpus:g} is more than the largest node has ({max(cluster.node_cpus):g} CPUs)"
        )
    gpus = float(scaling.gpus_per_worker)
    if gpus:
        need_gpus = gpus * n * runs
        if need_gpus > cluster.gpus + 1e-9:
            raise ResourceError(
                f"scaling asks for {n} workers x {gpus:g} GPUs = {need_gpus:g} GPUs, but the cluster has {cluster.gpus:g}"
                + ("; set scaling.gpus_per_worker: 0 to train on CPU" if cluster.gpus == 0 else "")
            )
        if cluster.node_gpus and gpus > max(cluster.node_gpus) + 1e-9:
            raise ResourceError(f"scaling.gpus_per_worker={gpus:g} is more than the largest node has ({max(cluster.node_gpus):g})")
    return WorkerPlan(workers=n, cpus_per_worker=cpus, gpus_per_worker=gpus, torch_threads=max(1, int(cpus)))


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
