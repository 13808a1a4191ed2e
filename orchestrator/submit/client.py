"""Jobs on a Ray cluster through the Ray Jobs API: `orchestrator submit` and `orchestrator jobs ...`.

A submitted job runs `orchestrator run <spec> -o <output dir>` on the cluster, the same code path
as a local `orchestrator run`; Ray sets RAY_ADDRESS for the job's driver, so `init_ray` joins the
cluster. Planning a submission (`plan_submission`: what files travel, the entrypoint, where the run
directory goes) is separate from sending it (`JobsClient.submit`), so `--dry-run` can print the
request and contact nothing.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import os
import re
import secrets
import shlex
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterator, Optional
from urllib.parse import urlsplit

from orchestrator.errors import DataError, OrchestratorError

TERMINAL = ("SUCCEEDED", "FAILED", "STOPPED")
PROBE_TIMEOUT = (3.0, 5.0)  # connect, read: a dead address fails well within 10 s
MAX_SHIPPED_DATA = 100 * 1024 * 1024  # larger data belongs on shared storage or an object store
MAX_SHIPPED_CODE = 20 * 1024 * 1024
SKIP_DIRS = {"__pycache__", "node_modules", "venv", "site-packages", "build", "dist"}
METADATA_PREFIX = "orchestrator."
RUN_LINE = re.compile(r"^run (\S.*?)\s*$", re.M)  # printed by `orchestrator run` when it creates the run directory


# ---------------------------------------------------------------------------------- address


def normalize_address(address: str) -> str:
    address = address.strip()
    if address.startswith("ray://"):
        raise OrchestratorError(f"{address}: give the Jobs API address (the dashboard, http://HEAD:8265), not a Ray Client address")
    if "://" not in address:
        address = "http://" + address
    parts = urlsplit(address)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise OrchestratorError(f"{address}: expected http(s)://HOST:PORT (the cluster's dashboard / Jobs API)")
    return address.rstrip("/")


def resolve_address(address: Optional[str]) -> str:
    """--address, else RAY_API_SERVER_ADDRESS, else an http(s) RAY_ADDRESS, else the one local cluster that is up."""
    if address:
        return normalize_address(address)
    for var in ("RAY_API_SERVER_ADDRESS", "RAY_ADDRESS"):
        value = os.environ.get(var, "")
        if value.startswith(("http://", "https://")) or (var == "RAY_API_SERVER_ADDRESS" and value):
            return normalize_address(value)
    from orchestrator.cluster_local import cluster_processes, known_clusters

    running = [st for st in known_clusters() if cluster_processes(st)]
    if len(running) == 1:
        return running[0].dashboard_url
    if running:
        names = ", ".join(f"{st.name} ({st.dashboard_url})" for st in running)
        raise OrchestratorError(f"no --address given and several local clusters are up: {names}; pass --address")
    raise OrchestratorError("no --address given and no local cluster is up: pass --address http://HEAD:8265 "
                            "or start one with `orchestrator cluster local up`")


def is_loopback(address: str) -> bool:
    host = urlsplit(address).hostname or ""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


# ------------------------------------------------------------------------------------ token


@dataclass(frozen=True)
class Token:
    value: Optional[str]
    source: str  # where it came from, for messages; never the token itself


def find_token(address: str, token_env: Optional[str] = None) -> Token:
    """--token-env VAR, RAY_AUTH_TOKEN, RAY_AUTH_TOKEN_PATH, the token of the local cluster at `address`,
    then ~/.ray/auth_token (what `ray.init()` and `ray get-auth-token --generate` write)."""
    from orchestrator.cluster_local import cluster_for_address

    if token_env:
        value = os.environ.get(token_env, "").strip()
        if not value:
            raise OrchestratorError(f"--token-env {token_env}: the environment variable {token_env} is not set or empty")
        return Token(value, f"${token_env}")
    if os.environ.get("RAY_AUTH_TOKEN", "").strip():
        return Token(os.environ["RAY_AUTH_TOKEN"].strip(), "$RAY_AUTH_TOKEN")
    if os.environ.get("RAY_AUTH_TOKEN_PATH"):
        path = Path(os.environ["RAY_AUTH_TOKEN_PATH"]).expanduser()
        try:
            return Token(path.read_text().strip() or None, str(path))
        except OSError as e:
            raise OrchestratorError(f"RAY_AUTH_TOKEN_PATH={path}: cannot read the token ({e.strerror})") from None
    local = cluster_for_address(address)
    if local is not None and Path(local.token_file).is_file():
        return Token(local.token(), local.token_file)
    default = Path("~/.ray/auth_token").expanduser()
    if default.is_file() and default.read_text().strip():
        return Token(default.read_text().strip(), str(default))
    return Token(None, "none")


def check_transport(address: str, token: Token, insecure: bool) -> list[str]:
    """Refuse plain http to another machine without a token; warn when a token would travel unencrypted."""
    if urlsplit(address).scheme != "http" or is_loopback(address):
        return []
    if token.value is None:
        if not insecure:
            raise OrchestratorError(
                f"refusing to send a job to {address} without a token over plain http: anyone who can reach that port can "
                "run code on the cluster. Set RAY_AUTH_TOKEN (or --token-env VAR), reach the cluster through an SSH tunnel "
                "or port-forward on 127.0.0.1, or pass --insecure if that is really what you want"
            )
        return [f"sending to {address} over plain http without a token (--insecure)"]
    return [f"the token travels unencrypted over plain http to {address}; prefer https or an SSH tunnel / port-forward to 127.0.0.1"]


def auth_message(status: int, address: str, token: Token) -> str:
    if status == 401:
        from orchestrator.cluster_local import home

        return (f"the cluster at {address} requires a token: set RAY_AUTH_TOKEN (or RAY_AUTH_TOKEN_PATH, or pass --token-env VAR); "
                f"a cluster started with `orchestrator cluster local up` keeps it in {home()}/clusters/<name>/auth_token")
    return f"the token was rejected by {address} (token from {token.source}); check that it is this cluster's token"


def unreachable_message(address: str, why: str = "") -> str:
    return f"nothing answers at {address}{f' ({why})' if why else ''} (is the cluster up? `orchestrator cluster local status`)"


def probe(address: str, token: Token) -> str:
    """GET /api/version with short timeouts; returns the cluster's Ray version or raises a clear error."""
    import requests

    headers = {"Authorization": f"Bearer {token.value}"} if token.value else {}
    try:
        r = requests.get(f"{address}/api/version", headers=headers, timeout=PROBE_TIMEOUT)
    except requests.exceptions.SSLError as e:
        raise OrchestratorError(f"TLS handshake with {address} failed: {_first_line(e)}") from None
    except requests.exceptions.Timeout:
        raise OrchestratorError(unreachable_message(address, f"no answer within {sum(PROBE_TIMEOUT):g} s")) from None
    except requests.exceptions.RequestException as e:
        raise OrchestratorError(unreachable_message(address, _why(e))) from None
    if r.status_code in (401, 403):
        raise OrchestratorError(auth_message(r.status_code, address, token))
    if r.status_code != 200:
        raise OrchestratorError(f"{address} answered HTTP {r.status_code} to /api/version: not a Ray dashboard / Jobs API?")
    try:
        return r.json()["ray_version"]
    except (ValueError, KeyError):
        raise OrchestratorError(f"{address} answered /api/version without a Ray version: not a Ray dashboard / Jobs API?") from None


def _why(e: Exception) -> str:
    text = str(e)
    for known in ("Connection refused", "Name or service not known", "No route to host", "Network is unreachable", "timed out"):
        if known in text:
            return known.lower()
    return type(e).__name__


def _first_line(e: BaseException) -> str:
    lines = [l for l in str(e).strip().splitlines() if l.strip()]
    return lines[0] if lines else type(e).__name__


# ----------------------------------------------------------------------------------- client


@contextlib.contextmanager
def _without_env(*names: str) -> Iterator[None]:
    """JobSubmissionClient lets RAY_ADDRESS / RAY_API_SERVER_ADDRESS override the address it is given."""
    saved = {n: os.environ.pop(n) for n in names if n in os.environ}
    try:
        yield
    finally:
        os.environ.update(saved)


@dataclass
class JobView:
    submission_id: str
    status: str
    entrypoint: str
    message: str
    start_time: Optional[float]  # seconds since the epoch
    end_time: Optional[float]
    metadata: dict
    driver_exit_code: Optional[int]

    @property
    def spec_name(self) -> str:
        return self.metadata.get(METADATA_PREFIX + "spec", "")

    @property
    def output_dir(self) -> str:
        return self.metadata.get(METADATA_PREFIX + "output_dir", "")


def _view(info) -> JobView:
    def secs(ms):
        return ms / 1000 if ms else None

    status = getattr(info.status, "value", str(info.status))
    return JobView(info.submission_id or info.job_id or "", status, info.entrypoint or "", info.message or "",
                   secs(info.start_time), secs(info.end_time), dict(info.metadata or {}), getattr(info, "driver_exit_code", None))


class JobsClient:
    """The Ray Jobs API of one cluster, with every failure turned into one clear OrchestratorError."""

    def __init__(self, address: Optional[str] = None, *, token_env: Optional[str] = None, insecure: bool = False, warn: Callable[[str], None] = lambda m: None):
        self.address = resolve_address(address)
        self.token = find_token(self.address, token_env)
        for w in check_transport(self.address, self.token, insecure):
            warn(w)
        self.ray_version = probe(self.address, self.token)
        from ray.job_submission import JobSubmissionClient

        _quiet_sdk()

        headers = {"Authorization": f"Bearer {self.token.value}"} if self.token.value else None
        with _without_env("RAY_ADDRESS", "RAY_API_SERVER_ADDRESS"), self._errors():
            self._client = JobSubmissionClient(self.address, headers=headers)

    @contextlib.contextmanager
    def _errors(self, job_id: Optional[str] = None) -> Iterator[None]:
        import requests
        from ray.exceptions import AuthenticationError

        try:
            yield
        except AuthenticationError as e:
            raise OrchestratorError(auth_message(401 if "required" in str(e).lower() else 403, self.address, self.token)) from None
        except (requests.exceptions.ConnectionError, requests.exceptions.Timeout, ConnectionError) as e:
            raise OrchestratorError(unreachable_message(self.address, _why(e))) from None
        except RuntimeError as e:
            text = str(e)
            if job_id and ("404" in text or "does not exist" in text):
                raise OrchestratorError(f"no job {job_id!r} at {self.address} (`orchestrator jobs list` shows the jobs)") from None
            raise OrchestratorError(f"{self.address}: {_first_line(e)}") from None

    def submit(self, plan: "SubmissionPlan") -> str:
        with materialized(plan) as working_dir, self._errors():
            deadline = time.monotonic() + 30
            while True:
                try:
                    return self._client.submit_job(
                        entrypoint=plan.entrypoint, submission_id=plan.submission_id, runtime_env=plan.runtime_env(str(working_dir)),
                        metadata=plan.metadata, entrypoint_num_cpus=plan.entrypoint_num_cpus,
                    )
                except RuntimeError as e:
                    # a head that just started may not have registered its job agent yet
                    if "No available agent" not in str(e) or time.monotonic() > deadline:
                        raise
                    time.sleep(1)

    def job(self, job_id: str) -> JobView:
        with self._errors(job_id):
            return _view(self._client.get_job_info(job_id))

    def list(self) -> list[JobView]:
        with self._errors():
            jobs = [_view(j) for j in self._client.list_jobs()]
        return sorted(jobs, key=lambda j: j.start_time or 0)

    def logs(self, job_id: str) -> str:
        with self._errors(job_id):
            return self._client.get_job_logs(job_id)

    def stop(self, job_id: str) -> bool:
        with self._errors(job_id):
            return self._client.stop_job(job_id)

    def wait(self, job_id: str, timeout: float, statuses=TERMINAL) -> JobView:
        deadline = time.monotonic() + timeout
        while True:
            view = self.job(job_id)
            if view.status in statuses or time.monotonic() > deadline:
                return view
            time.sleep(0.5)

    def follow(self, job_id: str, write: Callable[[str], None]) -> JobView:
        """Stream the job's logs until it ends; returns its final state."""
        self.job(job_id)  # a clear error for an unknown id before opening the websocket

        async def tail() -> None:
            async for chunk in self._client.tail_job_logs(job_id):
                write(chunk)

        try:
            with self._errors(job_id):
                asyncio.run(tail())
        except OrchestratorError:
            pass  # the log stream broke; the job's status below still tells how it ended
        return self.wait(job_id, timeout=60)


def _quiet_sdk() -> None:
    """The SDK logs every upload and websocket close at INFO; our commands say what matters themselves."""
    import logging

    for name in ("ray.dashboard.modules.dashboard_sdk", "ray.dashboard.modules.job.sdk", "ray._private.runtime_env.packaging"):
        logging.getLogger(name).setLevel(logging.WARNING)


def run_dir_from_logs(logs: str) -> Optional[str]:
    m = RUN_LINE.search(logs)
    return m.group(1) if m else None


def exit_code(view: JobView) -> int:
    """SUCCEEDED -> 0; FAILED -> the driver's exit code (3: not promoted, 2: invalid spec...) or 1; STOPPED -> 1."""
    if view.status == "SUCCEEDED":
        return 0
    if view.status == "FAILED" and view.driver_exit_code and 0 < view.driver_exit_code < 256:
        return view.driver_exit_code
    return 1


# ------------------------------------------------------------------------------- submission


@dataclass
class SubmissionPlan:
    spec_name: str
    spec_file: str  # its name inside the working dir
    files: dict[str, Path]  # path inside the working dir -> local file
    entrypoint: str
    output_dir: str
    submission_id: str
    env_vars: dict[str, str] = field(default_factory=dict)
    metadata: dict[str, str] = field(default_factory=dict)
    entrypoint_num_cpus: Optional[float] = None
    notes: list[str] = field(default_factory=list)

    def runtime_env(self, working_dir: str) -> dict:
        return {"working_dir": working_dir, "env_vars": dict(self.env_vars)}

    def describe(self) -> str:
        import json

        size = sum(p.stat().st_size for p in self.files.values())
        lines = [
            f"submission id: {self.submission_id}",
            f"entrypoint:    {self.entrypoint}",
            f"run directory: {self.output_dir}/{self.spec_name}-<timestamp>/",
            f"working_dir:   {len(self.files)} files, {size / 1024:.1f} KiB",
            *[f"  {rel}" for rel in sorted(self.files)],
            f"runtime_env:   {json.dumps(self.runtime_env('<working_dir>'))}",
            f"metadata:      {json.dumps(self.metadata)}",
        ]
        return "\n".join(lines + [f"note: {n}" for n in self.notes])


def plan_submission(spec_path: Path, *, address: str, storage: Optional[str] = None, cwd: Optional[Path] = None,
                    submission_id: Optional[str] = None) -> SubmissionPlan:
    """What `orchestrator submit` sends: validates the spec, picks the files and the run directory. Contacts nothing."""
    from orchestrator.cluster_local import cluster_for_address
    from orchestrator.spec import load_spec

    spec_path = Path(spec_path)
    spec = load_spec(spec_path)
    cwd = Path(cwd or os.getcwd())
    notes: list[str] = []
    output_dir = resolve_output_dir(spec.output.dir, storage, address, cwd, cluster_for_address(address), notes)
    files = {spec_path.name: spec_path.resolve()}
    files.update(data_files(spec, address, notes))
    files.update(code_files(spec, cwd, notes))
    sid = submission_id or f"{spec.name}-{time.strftime('%Y%m%d-%H%M%S')}-{secrets.token_hex(2)}"
    return SubmissionPlan(
        spec_name=spec.name, spec_file=spec_path.name, files=files,
        entrypoint=" ".join(["orchestrator", "run", shlex.quote(spec_path.name), "-o", shlex.quote(output_dir)]),
        output_dir=output_dir, submission_id=sid,
        # PYTHONPATH stays out: init_ray sets it in the driver's runtime_env, and Ray refuses to merge a
        # variable that both the job and the driver set.
        env_vars={"PYTHONUNBUFFERED": "1", "COLUMNS": "160"},
        metadata={METADATA_PREFIX + "spec": spec.name, METADATA_PREFIX + "spec_file": spec_path.name,
                  METADATA_PREFIX + "output_dir": output_dir},
        notes=notes,
    )


def resolve_output_dir(out: str, storage: Optional[str], address: str, cwd: Path, local, notes: list[str]) -> str:
    """Where the job writes its run directory. The job's own working directory is a temporary copy
    on the cluster, so a relative output.dir cannot be used as is:

    1. --storage DIR (absolute; relative only for a cluster on this machine, resolved here);
    2. the spec's output.dir when it is absolute;
    3. the `storage` of the local cluster at `address` (cluster/local.yaml);
    4. a cluster on this machine (loopback address): output.dir resolved against this working directory,
       exactly where `orchestrator run` would put it;
    5. otherwise refused: name a shared path.
    """
    from orchestrator.spec import is_uri

    if storage:
        if is_uri(storage):
            raise OrchestratorError(f"--storage {storage}: object-store URIs are not supported for run directories yet; give a shared filesystem path")
        p = Path(storage).expanduser()
        if not p.is_absolute():
            if not is_loopback(address):
                raise OrchestratorError(f"--storage {storage}: give an absolute path that exists on the cluster's nodes")
            p = cwd / p
        return str(p.resolve() if is_loopback(address) else p)
    if is_uri(out):
        raise OrchestratorError(f"output.dir {out}: object-store URIs are not supported for run directories yet; give a shared filesystem path")
    if Path(out).is_absolute():
        return out
    if local is not None and local.storage:
        notes.append(f"output.dir {out!r} is relative: using the storage of local cluster {local.name!r}")
        return local.storage
    if is_loopback(address):
        return str((cwd / out).resolve())
    raise OrchestratorError(
        f"output.dir {out!r} is relative: on a remote cluster it would land in the job's temporary working directory. "
        "Pass --storage /shared/path (a folder every node and you can reach, e.g. NFS) or make output.dir absolute"
    )


def data_files(spec, address: str, notes: list[str]) -> dict[str, Path]:
    """Relative data travels with the job (it resolves against the spec's folder, which is the job's
    working directory on the cluster); bundled datasets (data.prepare) are generated there instead."""
    from orchestrator.spec import is_uri

    src = spec.data.source
    if is_uri(src):
        return {}
    if Path(src).expanduser().is_absolute():
        if not is_loopback(address):
            notes.append(f"data.source {src} is absolute: it must exist at that path on the cluster's nodes")
        return {}
    rel = Path(os.path.normpath(src))
    if rel.parts and rel.parts[0] == "..":
        raise OrchestratorError(f"data.source {src}: a relative path outside the spec's folder cannot travel with the job; "
                                "use an absolute path on shared storage or a URI (s3://, gs://)")
    if spec.data.prepare:
        notes.append(f"data.source {src}: generated on the cluster by the prepare step ({spec.data.prepare})")
        return {}
    local = spec.base_dir / rel
    if not local.exists():
        raise DataError(f"{local}: data file not found (data.source in the spec)")
    found = [local] if local.is_file() else sorted(p for p in local.rglob("*") if p.is_file())
    size = sum(p.stat().st_size for p in found)
    if size > MAX_SHIPPED_DATA:
        raise OrchestratorError(
            f"data.source {src} is {size / 2**20:.0f} MiB, too large to travel with the job (limit {MAX_SHIPPED_DATA // 2**20} MiB): "
            "put it on shared storage or an object store and use an absolute path or a URI"
        )
    notes.append(f"data.source {src} ({size / 1024:.0f} KiB) travels with the job")
    return {str(rel / p.relative_to(local)) if p != local else str(rel): p for p in found}


def code_files(spec, cwd: Path, notes: list[str]) -> dict[str, Path]:
    """Python code next to the spec (user model modules and packages, .py files only), plus the
    module of model.factory when it lives in this working directory instead."""
    base = spec.base_dir
    files: dict[str, Path] = {}
    for p in sorted(base.glob("*.py")):
        files[p.name] = p
    for d in sorted(x for x in base.iterdir() if x.is_dir() and (x / "__init__.py").is_file() and _wanted_dir(x.name)):
        files.update(_py_tree(d, base))
    factory = getattr(spec.model, "factory", None)
    if factory:
        top = factory.split(":")[0].split(".")[0]
        for root in dict.fromkeys([base, cwd.resolve()]):
            if (root / f"{top}.py").is_file():
                files.setdefault(f"{top}.py", root / f"{top}.py")
                break
            if (root / top).is_dir():
                for rel, p in _py_tree(root / top, root).items():
                    files.setdefault(rel, p)
                break
        else:
            notes.append(f"model.factory {factory}: module {top!r} is neither next to the spec nor in this directory; "
                         "it must be installed on the cluster")
    size = sum(p.stat().st_size for p in files.values())
    if size > MAX_SHIPPED_CODE:
        raise OrchestratorError(f"the Python code next to the spec is {size / 2**20:.0f} MiB (limit {MAX_SHIPPED_CODE // 2**20} MiB); "
                                "move the spec to a folder with only the job's own code")
    return files


def _wanted_dir(name: str) -> bool:
    return not name.startswith(".") and name not in SKIP_DIRS


def _py_tree(folder: Path, root: Path) -> dict[str, Path]:
    out = {}
    for dirpath, dirnames, filenames in os.walk(folder):
        dirnames[:] = sorted(d for d in dirnames if _wanted_dir(d))
        for f in sorted(filenames):
            if f.endswith(".py"):
                p = Path(dirpath) / f
                out[str(p.relative_to(root))] = p
    return out


@contextlib.contextmanager
def materialized(plan: SubmissionPlan) -> Iterator[Path]:
    """The working dir as a temporary folder; Ray zips and uploads it during submit_job."""
    import tempfile

    with tempfile.TemporaryDirectory(prefix=f"orchestrator-{plan.spec_name}-") as tmp:
        for rel, src in plan.files.items():
            dest = Path(tmp) / rel
            dest.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src, dest)
        yield Path(tmp)
