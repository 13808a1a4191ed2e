"""A local Ray cluster for `orchestrator cluster local up|down|status`: a real `ray start --head`
with token authentication on, its dashboard and Jobs API bound to 127.0.0.1.

Each cluster has a state folder, `$ORCHESTRATOR_HOME/clusters/<name>/` (default
`~/.orchestrator/clusters/<name>/`), holding its token (`auth_token`, mode 0600) and `state.json`
(addresses, ports, Ray's temp dir, pids). `down` stops only the processes of that cluster: every
process started by `ray start` carries a marker variable in its environment
(ORCHESTRATOR_CLUSTER_ID) and the cluster's own temp dir on its command line, and their
descendants (workers, job drivers) are found through the process tree. `ray stop` is never
used: it kills every Ray on the machine.

What Ray 2.60 does not let us choose: `ray start --node-ip-address 127.0.0.1` is mapped to the
machine's address, and the GCS and raylet gRPC ports listen on every interface. They require the
token (token auth covers gRPC too), but keep the ports firewalled on a shared machine.
"""

from __future__ import annotations

import json
import os
import re
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Optional

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from orchestrator.errors import OrchestratorError, last_line
from orchestrator.polling import poll_until
from orchestrator.ports import bind_error, free_port
from orchestrator.processes import Proc, alive, descendants, list_processes, send, wait_gone

MARKER_ENV = "ORCHESTRATOR_CLUSTER_ID"
HOME_ENV = "ORCHESTRATOR_HOME"
WORKER_PORTS = (10002, 19999)  # Ray's default worker port range: the fixed ports must stay out of it
MAX_TEMP_DIR_CHARS = 40  # Ray's socket paths (<temp>/session_<stamp>/sockets/plasma_store) must fit in 107 bytes


class LocalClusterConfig(BaseModel):
    """cluster/local.yaml: defaults for `orchestrator cluster local up`; flags override them."""

    model_config = ConfigDict(extra="forbid")

    name: str = Field(
        "local",
        pattern=r"^[a-z0-9]([a-z0-9-]{0,30}[a-z0-9])?$",
        description="Cluster name; its state lives in $ORCHESTRATOR_HOME/clusters/<name>/.",
    )
    num_cpus: Optional[int] = Field(None, gt=0, le=4096, description="Logical CPUs of the head node (default: the machine's cores).")
    num_gpus: int = Field(0, ge=0, le=64, description="GPUs of the head node.")
    port: int = Field(6390, ge=0, le=65535, description="GCS port (ray.init / `ray start --address`); 0 picks a free one.")
    dashboard_port: int = Field(8275, ge=0, le=65535, description="Dashboard and Jobs API port on 127.0.0.1; 0 picks a free one.")
    object_store_memory_mb: Optional[int] = Field(None, ge=80, description="Object store size in MiB (default: Ray's, 30% of memory).")
    storage: Optional[str] = Field(
        None,
        description="Absolute folder where jobs submitted to this cluster write their run directories when the "
        "spec's output.dir is relative (default: the submitting shell's working directory, as for `orchestrator run`).",
    )
    startup_timeout_s: float = Field(90, gt=0, description="Longest wait for the head and its Jobs API to answer.")

    @field_validator("port", "dashboard_port")
    @classmethod
    def _outside_worker_ports(cls, v: int) -> int:
        if WORKER_PORTS[0] <= v <= WORKER_PORTS[1]:
            raise ValueError(f"{v} is inside Ray's worker port range {WORKER_PORTS[0]}-{WORKER_PORTS[1]}; pick another")
        return v

    @field_validator("storage")
    @classmethod
    def _absolute(cls, v: Optional[str]) -> Optional[str]:
        if v is not None and not Path(v).expanduser().is_absolute():
            raise ValueError("must be an absolute path")
        return str(Path(v).expanduser()) if v else v


def load_config(path: Optional[Path]) -> LocalClusterConfig:
    if path is None:
        return LocalClusterConfig()
    from orchestrator.spec import format_validation_error

    try:
        data = yaml.safe_load(Path(path).read_text()) or {}
    except FileNotFoundError:
        raise OrchestratorError(f"{path}: file not found") from None
    except yaml.YAMLError as e:
        raise OrchestratorError(f"{path}: not valid YAML: {e}") from None
    if not isinstance(data, dict):
        raise OrchestratorError(f"{path}: expected a mapping of settings")
    try:
        return LocalClusterConfig.model_validate(data)
    except ValidationError as err:
        raise OrchestratorError(f"{path}: invalid cluster config\n" + "\n".join(f"  {p}" for p in format_validation_error(err))) from None


# ------------------------------------------------------------------------------------ state


def home() -> Path:
    return Path(os.environ.get(HOME_ENV) or "~/.orchestrator").expanduser()


def state_dir(name: str) -> Path:
    return home() / "clusters" / name


@dataclass
class ClusterState:
    name: str
    state_dir: str
    temp_dir: str
    marker: str
    dashboard_url: str  # also the Jobs API address
    gcs_address: str
    token_file: str
    num_cpus: int
    storage: Optional[str]
    ports: dict = field(default_factory=dict)
    pids: list = field(default_factory=list)
    session_dir: str = ""
    ray_version: str = ""
    created: float = 0.0

    @property
    def path(self) -> Path:
        return Path(self.state_dir) / "state.json"

    def token(self) -> str:
        return Path(self.token_file).read_text().strip()

    def save(self) -> None:
        tmp = self.path.with_suffix(".tmp")
        tmp.write_text(json.dumps(asdict(self), indent=2))
        tmp.replace(self.path)


def read_state(name: str) -> Optional[ClusterState]:
    path = state_dir(name) / "state.json"
    try:
        return ClusterState(**json.loads(path.read_text()))
    except FileNotFoundError:
        return None
    except (ValueError, TypeError) as e:
        raise OrchestratorError(f"{path}: unreadable cluster state ({e}); remove it if no cluster runs") from None


def known_clusters() -> list[ClusterState]:
    root = home() / "clusters"
    out = []
    for p in sorted(root.glob("*/state.json")) if root.is_dir() else []:
        try:
            st = read_state(p.parent.name)
        except OrchestratorError:
            continue
        if st is not None:
            out.append(st)
    return out


def cluster_for_address(url: str) -> Optional[ClusterState]:
    """The local cluster whose Jobs API is `url` (http://127.0.0.1:PORT or localhost:PORT), if any."""
    m = re.match(r"^(?:https?://)?(127\.0\.0\.1|localhost|\[::1\]):(\d+)/?$", url.strip())
    if not m:
        return None
    port = int(m.group(2))
    for st in known_clusters():
        if st.ports.get("dashboard") == port:
            return st
    return None


def ensure_token(folder: Path) -> Path:
    """The cluster's token file, created with mode 0600 (kept across up/down so exported copies stay valid)."""
    folder.mkdir(parents=True, exist_ok=True)
    os.chmod(folder, 0o700)
    path = folder / "auth_token"
    if not path.is_file() or not path.read_text().strip():
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write(secrets.token_hex(32) + "\n")
    os.chmod(path, 0o600)
    return path


# -------------------------------------------------------------------------------- processes


def cluster_processes(state: ClusterState, procs: Optional[dict[int, Proc]] = None) -> list[int]:
    """Pids of this cluster: marked by its environment variable or naming its temp dir, plus every
    descendant of those (Ray workers, job drivers). Never another Ray's processes."""
    procs = list_processes() if procs is None else procs
    temp = state.temp_dir.rstrip("/") + "/"
    # The temp dir on the command line only counts where the environment cannot be read (not Linux):
    # a `tail -f <temp dir>/...` of the user must not be taken for part of the cluster.
    roots = {p.pid for p in procs.values() if not p.zombie and (p.environ.get(MARKER_ENV) == state.marker if p.environ else temp in p.args)}
    return [pid for pid in descendants(roots, procs) if pid != os.getpid()]


def stop_cluster_processes(state: ClusterState, grace_s: float) -> tuple[int, int]:
    """Stop this cluster's processes; returns (found, killed with SIGKILL).

    Order matters: the raylet first (it ends its workers and the job drivers under it), then the
    GCS (it exits within a second once its raylet is gone), then the helpers (autoscaler monitor,
    log monitor, dashboard, client server), which ignore SIGTERM and are killed after a short wait.
    """
    procs = list_processes()
    pids = cluster_processes(state, procs)
    if not pids:
        return 0, 0
    gcs = [p for p in pids if "gcs_server" in procs[p].args.split(" ", 1)[0]]
    rest = [p for p in pids if p not in gcs]
    raylets = [p for p in rest if procs[p].args.split(" ", 1)[0].endswith("/raylet")]
    raylet_tree = descendants(raylets, procs)
    send(rest, signal.SIGTERM)
    wait_gone(raylet_tree, grace_s)
    send(gcs, signal.SIGTERM)
    wait_gone(gcs, min(grace_s, 5.0))
    left = wait_gone(rest, 1.0)
    killed = alive(gcs) + left
    send(killed, signal.SIGKILL)
    # anything started meanwhile (or reparented away from its parent) still carries the marker
    stragglers = [p for p in cluster_processes(state) if p not in killed]
    send(stragglers, signal.SIGKILL)
    still = wait_gone(killed + stragglers, 10)
    if still:
        raise OrchestratorError(f"could not stop processes {still} of local cluster {state.name!r}")
    return len(set(pids) | set(stragglers)), len(killed) + len(stragglers)


# ---------------------------------------------------------------------------------- up/down


def _ray_executable() -> str:
    exe = Path(sys.executable).parent / "ray"
    found = str(exe) if exe.exists() else shutil.which("ray")
    if not found:
        raise OrchestratorError("the `ray` command was not found next to this Python or on PATH (pip install 'ray[default]')")
    return found


def _temp_dir(folder: Path) -> Path:
    inside = folder / "ray"
    if len(str(inside)) <= MAX_TEMP_DIR_CHARS:
        return inside
    # Ray puts unix sockets under its temp dir; a long state path would overflow their 107-byte limit.
    digest = uuid.uuid5(uuid.NAMESPACE_URL, str(folder.resolve())).hex[:10]
    return Path(tempfile.gettempdir()) / f"orch-ray-{digest}"


def http_get(url: str, token: Optional[str], timeout: float = 3.0):
    """(status, body) of a GET, or (None, reason) when nothing answers."""
    import httpx

    headers = {"Authorization": f"Bearer {token}"} if token else {}
    try:
        r = httpx.get(url, headers=headers, timeout=timeout)
    except httpx.HTTPError as e:
        return None, type(e).__name__
    return r.status_code, r.text


def start_command(cfg: LocalClusterConfig, temp: Path, ports: dict[str, int]) -> list[str]:
    cmd = [
        _ray_executable(),
        "start",
        "--head",
        "--node-ip-address",
        "127.0.0.1",
        "--port",
        str(ports["gcs"]),
        "--include-dashboard",
        "true",
        "--dashboard-host",
        "127.0.0.1",
        "--dashboard-port",
        str(ports["dashboard"]),
        "--ray-client-server-port",
        str(ports["client_server"]),
        "--dashboard-agent-listen-port",
        str(ports["dashboard_agent_http"]),
        "--dashboard-agent-grpc-port",
        str(ports["dashboard_agent_grpc"]),
        "--runtime-env-agent-port",
        str(ports["runtime_env_agent"]),
        "--metrics-export-port",
        str(ports["metrics_export"]),
        "--node-manager-port",
        str(ports["node_manager"]),
        "--object-manager-port",
        str(ports["object_manager"]),
        "--num-cpus",
        str(cfg.num_cpus or os.cpu_count() or 1),
        "--num-gpus",
        str(cfg.num_gpus),
        "--temp-dir",
        str(temp),
        "--disable-usage-stats",
        "--log-style",
        "record",
        "--log-color",
        "false",
    ]
    if cfg.object_store_memory_mb:
        cmd += ["--object-store-memory", str(cfg.object_store_memory_mb * 1024 * 1024)]
    return cmd


def head_environment(token_file: Path, marker: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("RAY_AUTH_TOKEN", "RAY_ADDRESS", "RAY_API_SERVER_ADDRESS")}
    env.update(
        RAY_AUTH_MODE="token",
        RAY_AUTH_TOKEN_PATH=str(token_file),
        RAY_USAGE_STATS_ENABLED="0",
        # Job entrypoints (`orchestrator run ...`) run through a shell: find this environment's commands first.
        PATH=os.pathsep.join([str(Path(sys.executable).parent), env.get("PATH", "")]),
        **{MARKER_ENV: marker},
    )
    return env


def _check_not_running(name: str) -> None:
    st = read_state(name)
    if st is None:
        return
    if cluster_processes(st):
        raise OrchestratorError(
            f"local cluster {name!r} is already up at {st.dashboard_url} (`orchestrator cluster local down --name {name}` stops it)"
        )
    st.path.unlink(missing_ok=True)  # left behind by a cluster that died


def up(cfg: LocalClusterConfig, log=lambda line: None) -> ClusterState:
    _check_not_running(cfg.name)
    folder = state_dir(cfg.name)
    token_file = ensure_token(folder)
    ports = {}
    for key, host, wanted in (("gcs", "0.0.0.0", cfg.port), ("dashboard", "127.0.0.1", cfg.dashboard_port)):
        if wanted and bind_error(host, wanted) is not None:
            raise OrchestratorError(
                f"port {wanted} ({key}) is in use; choose another with --{'port' if key == 'gcs' else 'dashboard-port'} (0 picks a free one)"
            )
        ports[key] = wanted or free_port(host)
    for key in (
        "client_server",
        "dashboard_agent_http",
        "dashboard_agent_grpc",
        "runtime_env_agent",
        "metrics_export",
        "node_manager",
        "object_manager",
    ):
        ports[key] = free_port("0.0.0.0")  # Ray's fixed defaults (10001, 52365, ...) would collide with any other Ray here
    temp = _temp_dir(folder)
    marker = uuid.uuid4().hex
    state = ClusterState(
        name=cfg.name,
        state_dir=str(folder),
        temp_dir=str(temp),
        marker=marker,
        dashboard_url=f"http://127.0.0.1:{ports['dashboard']}",
        gcs_address="",
        token_file=str(token_file),
        num_cpus=cfg.num_cpus or os.cpu_count() or 1,
        storage=cfg.storage,
        ports=ports,
        created=time.time(),
    )
    state.save()  # before starting, so `down` can clean up after a half-started head
    cmd = start_command(cfg, temp, ports)
    log("$ " + " ".join(cmd))
    try:
        proc = subprocess.run(cmd, env=head_environment(token_file, marker), capture_output=True, text=True, timeout=cfg.startup_timeout_s)
    except subprocess.TimeoutExpired:
        down(cfg.name)
        raise OrchestratorError(f"`ray start --head` did not finish within {cfg.startup_timeout_s:g} s") from None
    out = proc.stdout + proc.stderr
    if proc.returncode != 0:
        down(cfg.name)
        raise OrchestratorError(f"`ray start --head` failed: {last_line(out, f'exit code {proc.returncode}')}")
    m = re.search(r"ray start --address='([^']+)'", out)
    state.gcs_address = m.group(1) if m else f"127.0.0.1:{ports['gcs']}"
    latest = temp / "session_latest"
    state.session_dir = str(latest.resolve()) if latest.exists() else ""
    state.pids = cluster_processes(state)
    state.save()
    _wait_for_jobs_api(state, cfg.startup_timeout_s)
    code, body = http_get(f"{state.dashboard_url}/api/version", state.token())
    try:
        state.ray_version = json.loads(body).get("ray_version", "") if code == 200 else ""
    except ValueError:
        pass
    state.save()
    return state


def _wait_for_jobs_api(state: ClusterState, timeout: float) -> None:
    code, body = poll_until(
        lambda: http_get(f"{state.dashboard_url}/api/jobs/", state.token()), lambda answer: answer[0] == 200, timeout=timeout, interval=0.5
    )
    if code == 200:
        return
    down(state.name)
    raise OrchestratorError(f"the Jobs API at {state.dashboard_url} did not answer within {timeout:g} s (last: {code} {body[:200]})")


@dataclass
class DownResult:
    found: int
    killed: int  # with SIGKILL, after SIGTERM was ignored


def down(name: str, *, grace_s: float = 10.0, keep_logs: bool = False) -> DownResult:
    st = read_state(name)
    if st is None:
        raise OrchestratorError(f"no local cluster named {name!r} (nothing in {state_dir(name)})")
    found, killed = stop_cluster_processes(st, grace_s)
    st.path.unlink(missing_ok=True)
    if not keep_logs:
        shutil.rmtree(st.temp_dir, ignore_errors=True)
    return DownResult(found, killed)


def status(name: str) -> dict:
    """What `cluster local status` shows; `up` is True only when processes run and the Jobs API answers."""
    st = read_state(name)
    if st is None:
        return {"name": name, "up": False, "reason": f"no state in {state_dir(name)}"}
    pids = cluster_processes(st)
    info = {"name": name, **asdict(st), "processes": len(pids)}
    if not pids:
        return {**info, "up": False, "reason": "no process of this cluster is running (stale state; `down` cleans it)"}
    code, body = http_get(f"{st.dashboard_url}/api/v0/nodes?limit=100", st.token())
    if code != 200:
        return {**info, "up": False, "reason": f"the dashboard at {st.dashboard_url} does not answer ({code or body})"}
    try:
        nodes = json.loads(body)["data"]["result"]["result"]
    except (ValueError, KeyError, TypeError):
        nodes = []
    alive = [n for n in nodes if n.get("state") == "ALIVE"]
    info["nodes"] = len(alive)
    info["cpus"] = sum(float(n.get("resources_total", {}).get("CPU", 0)) for n in alive)
    code, body = http_get(f"{st.dashboard_url}/api/jobs/", st.token())
    try:
        jobs = json.loads(body) if code == 200 else []
    except ValueError:
        jobs = []
    info["jobs"] = {s: sum(j.get("status") == s for j in jobs) for s in ("PENDING", "RUNNING", "SUCCEEDED", "FAILED", "STOPPED")}
    return {**info, "up": True}
