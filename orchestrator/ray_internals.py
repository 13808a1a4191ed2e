"""Every use of Ray's private APIs, in one module, each behind a function named for what it does.

They were read from Ray 2.60, which pyproject.toml pins (`ray>=2.60,<2.61`), and each has its own
test against the installed Ray (tests/test_ray_internals.py). Another Ray release may move any of
them: each function here first calls `require_known_ray()`, which then fails in one place with a
message naming both versions, rather than an AttributeError somewhere inside a run.

What is reached, and why:
- `ray._private.ray_constants.ENABLE_RAY_CLUSTER` and ray.init's `_node_ip_address`: an embedded
  node on 127.0.0.1 in Ray's single-machine mode (`start_embedded_node`, for runtime.py).
- `ray._private.worker`: the session folder of the node this process started (the watchdog
  watches it) and the node's metrics export port (Serve's metrics are exported there).
- `ray.serve.context._get_global_client`: the host and port of a running Serve proxy, without
  starting Serve (serve/deployment.py).
- `ray.data._internal.logging.SessionFileHandler`: Ray Data's handler that writes its log file,
  told apart from its console handlers (data/ingest.py quiets only the console).
- Tune's saved search state (tune/search.py repairs it before a resume): the pickled checkpoint
  manager of each trial (`_checkpoint_results`, `_latest_checkpoint_result`), Ray Train's
  `StorageContext` inside a pickled search algorithm, and the live-trial sets of
  BasicVariantGenerator and ConcurrencyLimiter.
- The loggers of the job SDK's upload module (submit/client.py quiets them).
"""

from __future__ import annotations

import functools
from typing import Any, Optional

from orchestrator.errors import OrchestratorError

KNOWN_RAY = "2.60"
# the job SDK's loggers, one of them in a private module: each logs every upload at INFO
JOB_SDK_LOGGERS = ("ray.dashboard.modules.dashboard_sdk", "ray.dashboard.modules.job.sdk", "ray._private.runtime_env.packaging")


@functools.cache
def require_known_ray() -> None:
    """Fail, with what to install, unless the installed Ray is the release this module was read from."""
    import ray

    if ray.__version__.split(".")[:2] != KNOWN_RAY.split("."):
        raise OrchestratorError(
            f"this orchestrator needs Ray {KNOWN_RAY}.x (it relies on parts of Ray that change between releases), "
            f"but Ray {ray.__version__} is installed: pip install 'ray[default,data,train,tune,serve]=={KNOWN_RAY}.*'"
        )


def start_embedded_node(**init_kwargs: Any) -> None:
    """`ray.init` of a new single-node cluster whose node address is 127.0.0.1, in Ray's
    single-machine mode: every listener that binds loopback for a loopback node address then stays
    on loopback (see runtime.init_ray). Ray's processes read that switch from the environment
    (runtime.SINGLE_MACHINE_ENV), the driver read it at import, hence the constant too; the node
    address is ray.init's private `_node_ip_address`. address="local": never join another cluster
    found on this machine by accident."""
    require_known_ray()
    import ray
    from ray._private import ray_constants

    before = ray_constants.ENABLE_RAY_CLUSTER
    ray_constants.ENABLE_RAY_CLUSTER = False
    try:
        ray.init(address="local", _node_ip_address="127.0.0.1", **init_kwargs)
    finally:
        ray_constants.ENABLE_RAY_CLUSTER = before


def session_dir() -> str:
    """The session folder of the node this process started or joined (ray.init first)."""
    require_known_ray()
    import ray

    return ray._private.worker._global_node.get_session_dir_path()


def metrics_export_url() -> Optional[str]:
    """The Prometheus endpoint of this process's node, where Serve's metrics are exported; None
    when not connected."""
    require_known_ray()
    import ray

    node = getattr(ray._private.worker.global_worker, "node", None)
    if node is None:
        return None
    return f"http://{node.node_ip_address}:{node.metrics_export_port}/metrics"


def serve_http_address() -> Optional[tuple[str, int]]:
    """(host, port) of the running Serve proxy, or None when Serve is not running (Serve's public API
    has no call that answers without starting Serve)."""
    require_known_ray()
    from ray.serve.context import _get_global_client

    try:
        client = _get_global_client(raise_if_no_controller_running=False)
    except Exception:
        return None
    if client is None:
        return None
    cfg = client.http_config
    return cfg.host, int(cfg.port)


def is_ray_data_log_file(handler: Any) -> bool:
    """Whether a handler of the `ray.data` logger is the one writing Ray Data's log file."""
    require_known_ray()
    from ray.data._internal.logging import SessionFileHandler

    return isinstance(handler, SessionFileHandler)


# ---------------------------------------------------------------------------- Tune's saved state


def load_checkpoint_manager(value: str) -> Any:
    """A trial's checkpoint manager from the hex string Tune stores in its experiment state."""
    require_known_ray()
    import ray.cloudpickle as cloudpickle
    from ray._common.utils import hex_to_binary

    return cloudpickle.loads(hex_to_binary(value))


def dump_checkpoint_manager(manager: Any) -> str:
    """The hex string Tune stores for `manager` (load_checkpoint_manager's inverse)."""
    require_known_ray()
    import ray.cloudpickle as cloudpickle
    from ray._common.utils import binary_to_hex

    return binary_to_hex(cloudpickle.dumps(manager))


def checkpoint_results(manager: Any) -> tuple[list, Any]:
    """(every checkpoint result the manager keeps, the latest one, which a resume starts from); each
    result has `.checkpoint.path`."""
    require_known_ray()
    return list(manager._checkpoint_results), manager._latest_checkpoint_result


def set_checkpoint_results(manager: Any, kept: list, latest: Any) -> None:
    """Keep only `kept` in the manager, and resume from `latest` (one of them, or None: from scratch)."""
    require_known_ray()
    manager._checkpoint_results, manager._latest_checkpoint_result = kept, latest


def rebase_storage(obj: Any, storage_fs_path: str) -> bool:
    """Point every Ray Train StorageContext inside `obj` (an unpickled search algorithm) at
    `storage_fs_path`; True if one was found."""
    require_known_ray()
    from ray.train._internal.storage import StorageContext

    stack, seen, found = [obj], set(), False
    while stack:
        o = stack.pop()
        if id(o) in seen or isinstance(o, (str, bytes, int, float, bool, type(None))):
            continue
        seen.add(id(o))
        if isinstance(o, StorageContext):
            o.storage_fs_path, found = storage_fs_path, True
        elif isinstance(o, dict):
            stack += o.values()
        elif isinstance(o, (list, tuple, set, frozenset)):
            stack += o
        elif hasattr(o, "__dict__") and not isinstance(o, type):
            stack += vars(o).values()
    return found


def forget_live_trials(searcher_state: dict, trial_ids: set[str]) -> bool:
    """Tell a saved search algorithm's state that these trials ended: it still counts them as running
    (towards max_concurrent, so it would never start another trial) when Tune saved it before they
    did. True if anything changed."""
    require_known_ray()
    changed = False
    for d in [searcher_state, *(v for v in searcher_state.values() if isinstance(v, dict))]:
        for key in ("_live_trials", "live_trials"):  # BasicVariantGenerator, ConcurrencyLimiter
            live = d.get(key)
            if isinstance(live, set) and live & trial_ids:
                gone = live & trial_ids
                d[key] = live - gone
                if isinstance(d.get("num_unfinished_live_trials"), int):
                    d["num_unfinished_live_trials"] = max(0, d["num_unfinished_live_trials"] - len(gone))
                changed = True
    return changed
