"""Connecting to Ray: an embedded single-node instance by default, or an existing cluster."""

from __future__ import annotations

import logging
import os
from typing import Optional

from orchestrator.planning import ClusterResources


def init_ray(address: Optional[str] = None, *, verbose: bool = False, num_cpus: Optional[int] = None, code_dirs: Optional[list[str]] = None) -> None:
    """Start embedded Ray (dashboard on 127.0.0.1, token auth on) or join `address`/RAY_ADDRESS.

    The dashboard stays on: Ray Train's placement-group cleanup and Tune's early stopping need the
    State API it serves (see shared notes on Ray 2.60).
    """
    import ray

    if ray.is_initialized():
        return
    kwargs = dict(
        logging_level=logging.INFO if verbose else logging.WARNING,
        log_to_driver=verbose,
    )
    # User model code (model.factory) must import on every worker: put the working directory and
    # the spec's folder on the workers' path, as they are on the driver's.
    paths = [os.getcwd(), *(code_dirs or []), *filter(None, os.environ.get("PYTHONPATH", "").split(os.pathsep))]
    kwargs["runtime_env"] = {"env_vars": {"PYTHONPATH": os.pathsep.join(dict.fromkeys(paths))}}
    address = address or os.environ.get("RAY_ADDRESS")
    if address:
        ray.init(address=address, **kwargs)
    else:
        ray.init(include_dashboard=True, dashboard_host="127.0.0.1", num_cpus=num_cpus, **kwargs)
    quiet_ray_data(verbose)


def quiet_ray_data(verbose: bool = False) -> None:
    import ray

    if not verbose:
        logging.getLogger("ray.data").setLevel(logging.ERROR)
        logging.getLogger("ray.train").setLevel(logging.WARNING)
        logging.getLogger("ray.tune").setLevel(logging.WARNING)
    ray.data.DataContext.get_current().enable_progress_bars = verbose


def cluster_resources() -> ClusterResources:
    import ray

    nodes = [n for n in ray.nodes() if n.get("Alive")]
    cpus = tuple(float(n["Resources"].get("CPU", 0)) for n in nodes)
    gpus = tuple(float(n["Resources"].get("GPU", 0)) for n in nodes)
    return ClusterResources(cpus=sum(cpus), gpus=sum(gpus), node_cpus=cpus, node_gpus=gpus)
