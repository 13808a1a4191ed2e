"""Connecting to Ray: an embedded single-node instance by default, or an existing cluster."""

from __future__ import annotations

import logging
import os
from typing import Optional

from orchestrator.planning import ClusterResources

HEALTH_CHECK_ENV = "RAY_TRAIN_HEALTH_CHECK_INTERVAL_S"
TRAIN_POLL_INTERVAL_S = "0.25"


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
    env = {"PYTHONPATH": os.pathsep.join(dict.fromkeys(paths))}
    # Ray Train V2's controller collects each report when it polls the workers, every 2 s by
    # default, and that wait lands between every two epochs. Measured on 2 CPUs: a 10-epoch
    # run took 88 s at 2 s and 47 s at 0.25 s. Set here for the driver and, through the
    # runtime env, for Tune trials' drivers; an explicit setting wins.
    os.environ.setdefault(HEALTH_CHECK_ENV, TRAIN_POLL_INTERVAL_S)
    env[HEALTH_CHECK_ENV] = os.environ[HEALTH_CHECK_ENV]
    # Ray Train's placement-group cleaner (which frees the resources of trials that ASHA stops)
    # finds its cluster through RAY_ADDRESS, else by scanning the machine, which fails or picks
    # the wrong cluster when several Ray instances run on one machine. So every worker gets the
    # address; for embedded Ray that means choosing the GCS port before starting it.
    address = address or os.environ.get("RAY_ADDRESS")
    if address and address not in ("auto", "local"):
        if not address.startswith(("ray://", "http://", "https://")):
            env["RAY_ADDRESS"] = address
        kwargs["runtime_env"] = {"env_vars": env}
        ray.init(address=address, **kwargs)
    else:
        port = free_port()
        env["RAY_ADDRESS"] = f"127.0.0.1:{port}"
        kwargs["runtime_env"] = {"env_vars": env}
        previous = os.environ.get("RAY_GCS_SERVER_PORT")
        os.environ["RAY_GCS_SERVER_PORT"] = str(port)
        try:
            # address="local": never join another cluster found on this machine by accident
            ray.init(address="local", _node_ip_address="127.0.0.1", include_dashboard=True, dashboard_host="127.0.0.1", num_cpus=num_cpus, **kwargs)
        finally:
            if previous is None:
                os.environ.pop("RAY_GCS_SERVER_PORT", None)
            else:
                os.environ["RAY_GCS_SERVER_PORT"] = previous
    quiet_ray_data(verbose)


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


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
