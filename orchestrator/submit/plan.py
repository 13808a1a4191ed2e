"""What `orchestrator submit` would send, pure (no Ray): the Jobs API address, and the submission plan
(`plan_submission`: what files travel, the entrypoint, where the run directory goes). `--dry-run`
prints it and contacts nothing; client.py sends it.
"""

from __future__ import annotations

import contextlib
import ipaddress
import os
import secrets
import shlex
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator, Optional
from urllib.parse import urlsplit

from orchestrator.errors import DataError, OrchestratorError

MAX_SHIPPED_DATA = 100 * 1024 * 1024  # larger data belongs on shared storage or an object store
MAX_SHIPPED_CODE = 20 * 1024 * 1024
SKIP_DIRS = {"__pycache__", "node_modules", "venv", "site-packages", "build", "dist"}
METADATA_PREFIX = "orchestrator."


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
    from orchestrator.submit.local_cluster import cluster_processes, known_clusters

    running = [st for st in known_clusters() if cluster_processes(st)]
    if len(running) == 1:
        return running[0].dashboard_url
    if running:
        names = ", ".join(f"{st.name} ({st.dashboard_url})" for st in running)
        raise OrchestratorError(f"no --address given and several local clusters are up: {names}; pass --address")
    raise OrchestratorError(
        "no --address given and no local cluster is up: pass --address http://HEAD:8265 or start one with `orchestrator cluster local up`"
    )


def is_loopback(address: str) -> bool:
    host = urlsplit(address).hostname or ""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


# ------------------------------------------------------------------------------- submission


@dataclass
class SubmissionPlan:
    spec_name: str
    spec_file: str  # its name inside the working dir
    files: dict[str, Path]  # path inside the working dir -> local file
    entrypoint: str
    output_dir: str
    submission_id: str
    run_name: str  # chosen here and passed to `orchestrator run --run-name`: the job creates output_dir/run_name
    run_dir: str
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
            f"run directory: {self.run_dir}/",
            f"working_dir:   {len(self.files)} files, {size / 1024:.1f} KiB",
            *[f"  {rel}" for rel in sorted(self.files)],
            f"runtime_env:   {json.dumps(self.runtime_env('<working_dir>'))}",
            f"metadata:      {json.dumps(self.metadata)}",
        ]
        return "\n".join(lines + [f"note: {n}" for n in self.notes])


def plan_submission(
    spec_path: Path, *, address: str, storage: Optional[str] = None, cwd: Optional[Path] = None, submission_id: Optional[str] = None
) -> SubmissionPlan:
    """What `orchestrator submit` sends: validates the spec, picks the files and the run directory. Contacts nothing."""
    from orchestrator.spec import load_spec
    from orchestrator.submit.local_cluster import cluster_for_address

    spec_path = Path(spec_path)
    spec = load_spec(spec_path)
    cwd = Path(cwd or os.getcwd())
    notes: list[str] = []
    output_dir = resolve_output_dir(spec.output.dir, storage, address, cwd, cluster_for_address(address), notes)
    files = {spec_path.name: spec_path.resolve()}
    files.update(data_files(spec, address, notes))
    files.update(code_files(spec, cwd, notes))
    # The run directory is named here, not learnt from what the job prints: <name>-<timestamp>-<4 hex>,
    # the same name as the submission id (unless one is given), so the two are easy to match up.
    run_name = f"{spec.name}-{time.strftime('%Y%m%d-%H%M%S')}-{secrets.token_hex(2)}"
    sid = submission_id or run_name
    run_dir = f"{output_dir.rstrip('/')}/{run_name}"
    command = ["orchestrator", "run", shlex.quote(spec_path.name), "-o", shlex.quote(output_dir), "--run-name", run_name]
    if spec.serve is not None:
        # A job ends when its run does, as a RayJob does (k8s/render.py drops the section too): a
        # job that went on serving would stay RUNNING until stopped, and Serve would outlive it.
        command.append("--no-serve")
        notes.append(
            "the spec's serve section is not served by a submitted job (the job ends with its run); serve the "
            f"promoted model afterwards with: orchestrator serve {run_dir} (--address to serve it on the cluster)"
        )
    return SubmissionPlan(
        spec_name=spec.name,
        spec_file=spec_path.name,
        files=files,
        entrypoint=" ".join(command),
        output_dir=output_dir,
        submission_id=sid,
        run_name=run_name,
        run_dir=run_dir,
        # PYTHONPATH stays out: init_ray sets it in the driver's runtime_env, and Ray refuses to merge a
        # variable that both the job and the driver set.
        env_vars={"PYTHONUNBUFFERED": "1", "COLUMNS": "160"},
        metadata={
            METADATA_PREFIX + "spec": spec.name,
            METADATA_PREFIX + "spec_file": spec_path.name,
            METADATA_PREFIX + "output_dir": output_dir,
            METADATA_PREFIX + "run_dir": run_dir,
        },
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
            raise OrchestratorError(
                f"--storage {storage}: object-store URIs are not supported for run directories yet; give a shared filesystem path"
            )
        p = Path(storage).expanduser()
        if not p.is_absolute():
            if not is_loopback(address):
                raise OrchestratorError(f"--storage {storage}: give an absolute path that exists on the cluster's nodes")
            p = cwd / p
        return str(p.resolve() if is_loopback(address) else p)
    if is_uri(out):
        raise OrchestratorError(
            f"output.dir {out}: object-store URIs are not supported for run directories yet; give a shared filesystem path"
        )
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
        raise OrchestratorError(
            f"data.source {src}: a relative path outside the spec's folder cannot travel with the job; "
            "use an absolute path on shared storage or a URI (s3://, gs://)"
        )
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
            notes.append(
                f"model.factory {factory}: module {top!r} is neither next to the spec nor in this directory; "
                "it must be installed on the cluster"
            )
    size = sum(p.stat().st_size for p in files.values())
    if size > MAX_SHIPPED_CODE:
        raise OrchestratorError(
            f"the Python code next to the spec is {size / 2**20:.0f} MiB (limit {MAX_SHIPPED_CODE // 2**20} MiB); "
            "move the spec to a folder with only the job's own code"
        )
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
