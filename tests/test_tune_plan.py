"""Search planning (no Ray): when a trial's DDP workers are merged into one process, and the spec
such a trial trains."""

from __future__ import annotations

import pytest

from orchestrator.spec import JobSpec, parse_spec
from orchestrator.train.plan import ClusterResources
from orchestrator.tune.plan import in_process_trials, plan_search, trial_resources, trial_spec


def _spec(scaling: dict, **tune) -> JobSpec:
    return parse_spec(
        {
            "name": "unit",
            "data": {"source": "rows.parquet", "label": "y"},
            "train": {"batch_size": 32},
            "scaling": scaling,
            "tune": {"space": {"train.lr": {"loguniform": [1e-4, 1e-1]}}, "num_samples": 8, **tune},
        }
    )


def test_workers_sharing_under_one_cpu_train_each_trial_in_one_process():
    # 2 CPUs: two trials of two workers would get (2 - 2 x 0.01 - 1) / 4 = 0.24 CPU per worker
    k, plan = plan_search(_spec({"workers": 2}), ClusterResources(cpus=2, gpus=0))
    assert k == 2
    assert in_process_trials(plan)
    assert (plan.workers, plan.cpus_per_worker, plan.torch_threads) == (1, 0.48, 1)  # the two workers' CPUs together
    assert trial_resources(plan) == {"CPU": 0.48}


def test_a_fixed_concurrency_merges_the_workers_too():
    k, plan = plan_search(_spec({"workers": 2}, max_concurrent=3), ClusterResources(cpus=4, gpus=0))
    assert k == 3 and in_process_trials(plan) and plan.cpus_per_worker == 0.98  # 2 x floor((4 - 0.03 - 1) / 6)


@pytest.mark.parametrize(
    "scaling, cpus, gpus",
    [
        ({"workers": 2}, 8, 0),  # a whole CPU per worker: DDP runs in parallel
        ({"workers": 2, "cpus_per_worker": 0.2}, 2, 0),  # the spec fixes the workers' CPUs: its workers as they are
        ({"workers": 2, "gpus_per_worker": 0.5}, 2, 1),  # GPU workers
    ],
)
def test_trials_keep_their_ddp_workers(scaling, cpus, gpus):
    _, plan = plan_search(_spec(scaling), ClusterResources(cpus=cpus, gpus=gpus))
    assert plan.workers == 2 and not in_process_trials(plan)


def test_a_one_process_trial_takes_the_global_batch():
    base = _spec({"workers": 2}).model_dump(mode="json")
    spec = trial_spec(base, {"train.lr": 0.01}, "val_loss", ".", one_process=True)
    assert (spec.train.batch_size, spec.scaling.workers, spec.train.lr) == (64, 1, 0.01)  # a step sees 2 x 32 rows, as in DDP
    assert spec.tune is None and spec.checkpoint.metric == "val_loss"
    searched = trial_spec(base, {"train.batch_size": 16}, "val_loss", ".", one_process=True)
    assert searched.train.batch_size == 32  # a searched batch size is per worker too
    ddp = trial_spec(base, {}, "val_loss", ".")
    assert (ddp.train.batch_size, ddp.scaling.workers) == (32, 2)
