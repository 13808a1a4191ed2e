"""Serving a checkpoint with Ray Serve: a FastAPI ingress with dynamic batching.

`app_builder(args)` is the import path `orchestrator.serve.deployment:app_builder` that a RayService (or
`serve run`/`serve deploy`) points at; `args` are plain JSON (see `ServeArgs`). `deploy()` does the
same from Python or the CLI: start or join Ray, start Serve on the spec's host and port (loopback by
default), run the application and return its URL. Deploying again under the same name with another
checkpoint rolls the replicas over without dropping requests (new replicas start before old ones
drain: `max_surge_percent=100`).

Inside each replica (`Predictor`) requests are validated against the schema derived from the
checkpoint's preprocessing, then queued for `@serve.batch`: every forward pass takes up to
`max_batch_size` records from however many requests arrived within `batch_wait_timeout_s`, and runs
in a worker thread so the replica keeps accepting requests meanwhile. A request's body must arrive
within `body_timeout_s` (else 408), and only then does it take one of the replica's
`max_working_requests` slots (the spec's max_ongoing_requests); with all of them busy and
`max_waiting_requests` already waiting it gets 503. Serve's own max_ongoing_requests is set higher
by the requests whose bodies are still arriving (serve/plan.py, replica_capacity), so slow clients
never take the slots that work is done in.

Prometheus metrics (exported by Ray's metrics agent on every node, with the deployment, replica and
application as labels): ray_orchestrator_serve_requests_total{route,status},
ray_orchestrator_serve_request_latency_ms{route} and ray_orchestrator_serve_batch_size (records per
forward pass), next to Serve's own ray_serve_* metrics.
"""

from __future__ import annotations

import asyncio
import os
import tempfile
from collections import deque
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, Optional

from pydantic import BaseModel, ConfigDict, Field, ValidationError
from ray import serve

from orchestrator import extensions
from orchestrator.errors import CheckpointError, OrchestratorError, last_line
from orchestrator.ports import bind_error
from orchestrator.serve.app import make_api
from orchestrator.serve.guard import Intake, token_digest
from orchestrator.serve.plan import DEPLOYMENT, serve_args
from orchestrator.serve.runner import ModelRunner
from orchestrator.serve.schemas import DEFAULT_MAX_RECORDS
from orchestrator.spec import Autoscaling, ServeSpec, loc_path
from orchestrator.train.checkpoint import describe_error

DEFAULT_APP = "orchestrator"
LATENCY_BUCKETS_MS = [1, 2, 5, 10, 20, 50, 100, 200, 500, 1000, 2000, 5000, 10000]
MAX_BATCHES_IN_FLIGHT = 64  # batches handed to _run_batch at once; the forward loop merges them
BATCH_BUCKETS = [1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024, 2048, 4096]

_D = ServeSpec.model_fields


class ServeArgs(BaseModel):
    """Arguments of `app_builder` (JSON). Deployment options left out keep the decorator's defaults,
    which a Serve config file's `deployments:` section may override."""

    model_config = ConfigDict(extra="forbid")

    checkpoint_path: str = Field(description="Checkpoint directory: a local path or a pyarrow URI (s3://, gs://, ...).")
    version: Optional[str] = Field(None, description="Model version reported in answers; default: digest of the weights.")
    max_batch_size: int = Field(_D["max_batch_size"].default, gt=0, le=4096)
    batch_wait_timeout_s: float = Field(_D["batch_wait_timeout_s"].default, ge=0, le=10)
    max_body_bytes: int = Field(_D["max_body_bytes"].default, gt=0)
    max_records: int = Field(DEFAULT_MAX_RECORDS, gt=0, description="Most records in one request (more: 413).")
    body_timeout_s: float = Field(
        _D["body_timeout_s"].default, gt=0, le=600, description="Longest wait for a request's body (slower: 408)."
    )
    max_working_requests: Optional[int] = Field(
        None,
        gt=0,
        description="Requests a replica works on at once once their bodies are in; default: no bound besides Serve's max_ongoing_requests.",
    )
    max_waiting_requests: int = Field(
        -1, ge=-1, description="Requests with a complete body waiting for a working slot before 503; -1 is unbounded."
    )
    auth_token_env: Optional[str] = Field(None, description="Env var of the replica holding the bearer token.")
    auth_token_sha256: Optional[str] = Field(
        None, pattern=r"^[0-9a-f]{64}$", description="SHA-256 of the bearer token (wins over auth_token_env)."
    )
    torch_threads: Optional[int] = Field(None, gt=0, description="torch.set_num_threads in each replica.")
    extensions: list[str] = Field(
        default_factory=list, description="`module:function`s each replica calls first (orchestrator/extensions.py)."
    )
    # deployment options
    max_ongoing_requests: Optional[int] = Field(None, gt=0)
    max_queued_requests: Optional[int] = Field(None, ge=-1)
    autoscaling_config: Optional[Autoscaling] = None
    num_cpus: Optional[float] = Field(None, gt=0)
    num_gpus: Optional[float] = Field(None, ge=0)

    def replica_settings(self) -> dict:
        return self.model_dump(
            mode="json",
            include={
                "checkpoint_path",
                "version",
                "max_batch_size",
                "batch_wait_timeout_s",
                "max_body_bytes",
                "max_records",
                "body_timeout_s",
                "max_working_requests",
                "max_waiting_requests",
                "auth_token_env",
                "auth_token_sha256",
                "torch_threads",
                "extensions",
            },
        )


def local_checkpoint(path: str) -> str:
    """A local directory for `path`; URIs are copied into a temporary directory first."""
    if path.startswith("file://"):
        return path[len("file://") :]
    if "://" not in path:
        return path
    import pyarrow.fs as pafs

    dest = tempfile.mkdtemp(prefix="orchestrator-checkpoint-")
    pafs.copy_files(path.rstrip("/"), dest)
    return dest


class _Metrics:
    def __init__(self) -> None:
        from ray.serve.metrics import Counter, Histogram

        self.requests = Counter(
            "orchestrator_serve_requests", description="HTTP requests by route and status code.", tag_keys=("route", "status")
        )
        self.latency = Histogram(
            "orchestrator_serve_request_latency_ms",
            description="Request latency inside the replica (ms).",
            boundaries=LATENCY_BUCKETS_MS,
            tag_keys=("route",),
        )
        self.batch_size = Histogram("orchestrator_serve_batch_size", description="Records per forward pass.", boundaries=BATCH_BUCKETS)
        self.records = Counter("orchestrator_serve_records", description="Records predicted.")

    def request(self, route: str, status: int, seconds: float) -> None:
        self.requests.inc(tags={"route": route, "status": str(status)})
        self.latency.observe(seconds * 1000.0, tags={"route": route})

    def batch(self, n: int) -> None:
        self.batch_size.observe(n)
        self.records.inc(n)


def _gpu_assigned() -> bool:
    import ray
    import torch

    return bool(ray.get_gpu_ids()) and torch.cuda.is_available()


def _hide_batch_size_warning() -> None:
    """Serve warns when max_batch_size x max_concurrent_batches exceeds max_ongoing_requests; here
    concurrent batches are merged into one forward pass, so that product means nothing."""
    import logging

    logger = logging.getLogger("ray.serve")
    if _not_batch_size_warning not in logger.filters:
        logger.addFilter(_not_batch_size_warning)


def _not_batch_size_warning(record) -> bool:
    return not str(record.msg).startswith("`max_batch_size`")


def _rows(items: list[list[dict]]) -> int:
    return sum(len(i) for i in items)


@serve.deployment(
    name=DEPLOYMENT,
    max_ongoing_requests=_D["max_ongoing_requests"].default,
    max_queued_requests=_D["max_queued_requests"].default,
    ray_actor_options={"num_cpus": _D["cpus_per_replica"].default},
    max_surge_percent=100,  # a redeploy starts the new replicas before the old ones stop: no gap
    max_constructor_retry_count=3,
    # the proxy logs every request already; a second access log line per request in the replica
    # costs ~10% throughput (re-enable with logging_config in a Serve config file)
    logging_config={"enable_access_log": False},
)
@serve.ingress()
class Predictor:
    """One replica: the checkpoint's model and preprocessing behind a FastAPI app."""

    def __init__(self, settings: dict):
        s = ServeArgs.model_validate(settings)
        extensions.ensure(s.extensions)
        if s.torch_threads:
            import torch

            torch.set_num_threads(s.torch_threads)
        token_sha256 = s.auth_token_sha256
        if token_sha256 is None and s.auth_token_env:
            token = os.environ.get(s.auth_token_env)
            if not token:  # refuse to serve without the auth that was asked for
                raise RuntimeError(f"auth_token_env is {s.auth_token_env} but that variable is not set in the replica")
            token_sha256 = token_digest(token)
        device = "cuda" if _gpu_assigned() else "cpu"  # Ray gave this replica a GPU (ray_actor_options.num_gpus)
        self.runner = ModelRunner(
            local_checkpoint(s.checkpoint_path),
            version=s.version,
            max_records=s.max_records,
            max_body_bytes=s.max_body_bytes,
            device=device,
        )
        self.intake = Intake(body_timeout_s=s.body_timeout_s, max_working=s.max_working_requests, max_waiting=s.max_waiting_requests)
        self.token_sha256 = token_sha256
        self.max_batch_size = s.max_batch_size
        self.batch_wait_timeout_s = s.batch_wait_timeout_s
        _hide_batch_size_warning()
        self._run_batch.set_max_batch_size(s.max_batch_size)
        self._run_batch.set_batch_wait_timeout_s(s.batch_wait_timeout_s)
        self._pool = ThreadPoolExecutor(1, thread_name_prefix="forward")  # one forward pass at a time
        self._pending: deque[tuple[list[list[dict]], asyncio.Future]] = deque()
        self._forward_task: Optional[asyncio.Task] = None
        self.metrics = _Metrics()

    def __serve_build_asgi_app__(self):
        return make_api(
            self.runner, self.infer, token_sha256=self.token_sha256, observe=self.metrics.request, info=self._info, intake=self.intake
        )

    def _info(self) -> dict:
        ctx = serve.get_replica_context()
        return {
            "serving": {
                "replica": getattr(ctx, "replica_tag", None) or str(getattr(ctx, "replica_id", "")),
                "max_batch_size": self.max_batch_size,
                "batch_wait_timeout_s": self.batch_wait_timeout_s,
                "auth": self.token_sha256 is not None,
                **self.intake.counts(),
            }
        }

    async def infer(self, records: list[dict]) -> list[dict]:
        n = self.max_batch_size
        parts = await asyncio.gather(*(self._run_batch(records[i : i + n]) for i in range(0, len(records), n)))
        return [o for p in parts for o in p]

    @serve.batch(
        max_batch_size=_D["max_batch_size"].default,
        batch_wait_timeout_s=_D["batch_wait_timeout_s"].default,
        max_concurrent_batches=MAX_BATCHES_IN_FLIGHT,
        batch_size_fn=_rows,
    )
    async def _run_batch(self, chunks: list[list[dict]]) -> list[list[dict]]:
        """One batch from @serve.batch -> its outputs, computed by the forward loop."""
        done = asyncio.get_running_loop().create_future()
        self._pending.append((chunks, done))
        if self._forward_task is None or self._forward_task.done():
            self._forward_task = asyncio.create_task(self._forward_loop())
        return await done

    async def _forward_loop(self) -> None:
        """Run forward passes while batches are waiting, each over as many of them as fit.

        Serve forms a new batch every batch_wait_timeout_s whether or not the previous forward pass
        has finished. Merging the batches that queued up meanwhile (up to max_batch_size records)
        makes passes larger exactly when the model is the bottleneck, while a lone request still
        waits only batch_wait_timeout_s.
        """
        loop = asyncio.get_running_loop()
        while self._pending:
            take = [self._pending.popleft()]
            rows = _rows(take[0][0])
            while self._pending and rows + _rows(self._pending[0][0]) <= self.max_batch_size:
                take.append(self._pending.popleft())
                rows += _rows(take[-1][0])
            flat = [r for chunks, _ in take for c in chunks for r in c]
            try:
                out = await loop.run_in_executor(self._pool, self.runner.predict, flat)
            except Exception as e:  # noqa: BLE001 - every waiting request gets the error
                for _, done in take:
                    if not done.done():
                        done.set_exception(e)
                continue
            self.metrics.batch(len(flat))
            i = 0
            for chunks, done in take:
                parts = []
                for c in chunks:
                    parts.append(out[i : i + len(c)])
                    i += len(c)
                if not done.done():
                    done.set_result(parts)

    def check_health(self) -> None:
        pass


def app_builder(args: dict):
    """`orchestrator.serve.deployment:app_builder`: JSON args (`ServeArgs`) -> the Serve application."""
    try:
        a = ServeArgs.model_validate(args)
    except ValidationError as e:
        problems = "; ".join(f"{loc_path(tuple(x['loc']), quote=False, empty='(args)')}: {x['msg']}" for x in e.errors(include_url=False))
        raise ValueError(f"orchestrator.serve.deployment:app_builder: invalid args: {problems}") from None
    opts: dict[str, Any] = {}
    if a.max_ongoing_requests is not None:
        opts["max_ongoing_requests"] = a.max_ongoing_requests
    if a.max_queued_requests is not None:
        opts["max_queued_requests"] = a.max_queued_requests
    if a.autoscaling_config is not None:
        opts["autoscaling_config"] = a.autoscaling_config.model_dump()
    if a.num_cpus is not None or a.num_gpus is not None:
        actor: dict[str, Any] = {"num_cpus": a.num_cpus if a.num_cpus is not None else _D["cpus_per_replica"].default}
        if a.num_gpus:
            actor["num_gpus"] = a.num_gpus
        opts["ray_actor_options"] = actor
    dep: Any = Predictor.options(**opts) if opts else Predictor  # type: ignore[attr-defined]  # Serve's decorator adds options()
    return dep.bind(a.replica_settings())


# ------------------------------------------------------------------------------------- driving


def _serve_http() -> Optional[tuple[str, int]]:
    """(host, port) of the running Serve proxy, or None when Serve is not running."""
    from orchestrator.ray_internals import serve_http_address

    return serve_http_address()


def _check_port(host: str, port: int) -> None:
    error = bind_error(host, port, reuse=True)
    if error is not None:
        raise OrchestratorError(f"cannot serve on {host}:{port}: {error.strerror} (choose another serve.port or --port)")


def _check_checkpoint(path: str | os.PathLike) -> str:
    from orchestrator.train.checkpoint import MODEL_FILE, PREPROCESSING_FILE, STATE_FILE

    p = str(path)
    if "://" in p and not p.startswith("file://"):
        return p
    d = Path(p.removeprefix("file://")).expanduser().resolve()
    missing = [f for f in (STATE_FILE, MODEL_FILE, PREPROCESSING_FILE) if not (d / f).is_file()]
    if not d.is_dir() or missing:
        raise OrchestratorError(
            f"{d}: not an orchestrator checkpoint" + (f" (missing {', '.join(missing)})" if d.is_dir() else " (no such directory)")
        )
    return str(d)


def _validate_checkpoint(path: str) -> None:
    """Load a local checkpoint here as every replica will, so that a truncated or corrupt file is
    named before anything is deployed (a failing replica only says "Failed to update the deployments")."""
    if "://" in path:
        return  # a URI: the replicas copy and check it themselves
    try:
        ModelRunner(path)
    except OrchestratorError:
        raise
    except Exception as e:  # e.g. a preprocessing.json whose fields have the wrong types
        raise CheckpointError(f"{path}: cannot serve this checkpoint ({describe_error(e)})") from None


def _replica_error(name: str) -> Optional[str]:
    """The last line of a failed replica's traceback (the exception and its message), if Serve has one."""
    try:
        app = serve.status().applications.get(name)
        message = app.deployments[DEPLOYMENT].message if app and DEPLOYMENT in app.deployments else ""
    except Exception:
        return None
    return last_line(message or "")


def _remove_failed(name: str) -> None:
    """Never leave a failed application behind (nor Serve, when it ran nothing else)."""
    try:
        serve.delete(name)
        if not serve.status().applications:
            serve.shutdown()
    except Exception:  # already gone
        pass


def display_url(host: str, port: int, route_prefix: str = "/") -> str:
    shown = "127.0.0.1" if host in ("0.0.0.0", "", "::") else (f"[{host}]" if ":" in host else host)
    return f"http://{shown}:{port}{route_prefix.rstrip('/')}"


def deploy(
    checkpoint_dir: str | os.PathLike,
    serve_spec: Optional[ServeSpec] = None,
    *,
    name: str = DEFAULT_APP,
    version: Optional[str] = None,
    address: Optional[str] = None,
    torch_threads: Optional[int] = None,
) -> str:
    """Serve `checkpoint_dir` with `serve_spec`'s settings and return the application's URL.

    Starts embedded Ray (or joins `address`/RAY_ADDRESS) and Serve on spec.host:spec.port if they
    are not running; a local checkpoint is loaded here first, so that a damaged file is named before
    anything is deployed (CheckpointError). Deploying again under the same `name` rolls the replicas
    over to the new checkpoint/version with no request lost. The bearer token (serve.auth_token_env)
    is read here, kept out of the environment of the Ray processes, and only its SHA-256 digest goes
    to the replicas. A deployment that fails is removed (unless it was a rollover). `torch_threads` sets torch.set_num_threads in each
    replica (default: Ray's, one thread per reserved CPU).
    """
    spec = serve_spec or ServeSpec()
    ckpt = _check_checkpoint(checkpoint_dir)
    _validate_checkpoint(ckpt)
    args = serve_args(ckpt, spec, version=version)
    if extensions.used():
        args["extensions"] = extensions.used()
    if torch_threads:
        args["torch_threads"] = torch_threads
    if spec.auth_token_env:
        token = os.environ.get(spec.auth_token_env)
        if not token:
            raise OrchestratorError(f"serve.auth_token_env is {spec.auth_token_env}, but that environment variable is not set")
        args.pop("auth_token_env")
        args["auth_token_sha256"] = token_digest(token)

    from orchestrator.runtime import init_ray

    # Ray's processes inherit this process's environment when an embedded node starts: the token stays out
    init_ray(address, secret_env=[spec.auth_token_env] if spec.auth_token_env else ())
    running = _serve_http()
    if running is None:
        _check_port(spec.host, spec.port)
        serve.start(http_options={"host": spec.host, "port": spec.port})
        running = _serve_http() or (spec.host, spec.port)
    rollover = name in serve.status().applications
    try:
        serve.run(app_builder(args), name=name, route_prefix=spec.route_prefix)
    except Exception as e:  # noqa: BLE001 - Serve raises several types; the replica's own error says more
        reason = _replica_error(name) or f"{type(e).__name__}: {e}"
        if not rollover:  # a failed rollover keeps the old replicas serving
            _remove_failed(name)
        raise OrchestratorError(f"deploying {ckpt} failed: {reason}") from None
    return display_url(running[0], running[1], spec.route_prefix)


def metrics_url() -> Optional[str]:
    """Ray's Prometheus endpoint on this node (the serve metrics are exported there), if known."""
    from orchestrator.ray_internals import metrics_export_url

    try:
        return metrics_export_url()
    except Exception:  # not connected, or another Ray (its message is for the command that needs Ray)
        return None
