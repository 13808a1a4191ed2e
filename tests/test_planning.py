"""Resource planning (pure): CPU shares leave room for Ray Data; infeasible specs are refused."""

from __future__ import annotations

import pytest

from orchestrator.errors import ResourceError
from orchestrator.spec import ScalingSpec
from orchestrator.train.plan import DATA_RESERVE_CPUS, ClusterResources, plan_workers


def test_auto_leaves_room_for_data_on_two_cpus():
    plan = plan_workers(ScalingSpec(workers=2), ClusterResources(cpus=2, gpus=0))
    assert plan.total_cpus + DATA_RESERVE_CPUS <= 2
    assert plan.cpus_per_worker == 0.5 and plan.torch_threads == 1


def test_auto_uses_whole_cpus_on_big_nodes():
    plan = plan_workers(ScalingSpec(workers=4), ClusterResources(cpus=32, gpus=0))
    assert plan.cpus_per_worker == 7 and plan.torch_threads == 7


def test_concurrent_runs_share_the_cluster():
    plan = plan_workers(ScalingSpec(workers=2), ClusterResources(cpus=2, gpus=0), concurrent_runs=2)
    assert plan.cpus_per_worker * 4 + DATA_RESERVE_CPUS <= 2


@pytest.mark.parametrize(
    "scaling,cluster,words",
    [
        (ScalingSpec(workers=8, cpus_per_worker=1), ClusterResources(cpus=2, gpus=0), "8 workers x 1 CPU"),
        (ScalingSpec(workers=40), ClusterResources(cpus=2, gpus=0), "does not fit"),
        (ScalingSpec(workers=1, gpus_per_worker=1), ClusterResources(cpus=8, gpus=0), "gpus_per_worker: 0"),
        (ScalingSpec(workers=4, gpus_per_worker=1), ClusterResources(cpus=64, gpus=2), "= 4 GPUs, but the cluster has 2"),
        (ScalingSpec(workers=1, cpus_per_worker=6), ClusterResources(cpus=12, gpus=0, node_cpus=(4, 4, 4)), "largest node"),
    ],
)
def test_infeasible_specs_are_refused(scaling, cluster, words):
    with pytest.raises(ResourceError, match=None) as info:
        plan_workers(scaling, cluster)
    assert words in str(info.value)
