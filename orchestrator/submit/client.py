"""Jobs on a Ray cluster through the Ray Jobs API (tokens, transport checks, `JobsClient`), behind
`orchestrator submit` and `orchestrator jobs ...`.

A submitted job runs `orchestrator run <spec> -o <output dir>` on the cluster, the same code path
as a local `orchestrator run`; Ray sets RAY_ADDRESS for the job's driver, so `init_ray` joins the
cluster. Planning a submission (plan.py `plan_submission`: what files travel, the entrypoint, where the run
directory goes) is separate from sending it (`JobsClient.submit`), so `--dry-run` can print the
request and contact nothing.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import ssl
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator, Optional
from urllib.parse import urlsplit

import tenacity

from orchestrator.errors import OrchestratorError, first_line
from orchestrator.polling import poll_until
from orchestrator.submit.plan import METADATA_PREFIX, SubmissionPlan, is_loopback, materialized, resolve_address

TERMINAL = ("SUCCEEDED", "FAILED", "STOPPED")
PROBE_TIMEOUT = (3.0, 5.0)  # connect, read: a dead address fails well within 10 s
AGENT_WAIT_S = 30  # how long a submission waits for the job agent of a head that just started


# ------------------------------------------------------------------------------------ token


@dataclass(frozen=True)
class Token:
    value: Optional[str]
    source: str  # where it came from, for messages; never the token itself


def find_token(address: str, token_env: Optional[str] = None) -> Token:
    """--token-env VAR, RAY_AUTH_TOKEN, RAY_AUTH_TOKEN_PATH, the token of the local cluster at `address`,
    then ~/.ray/auth_token (what `ray.init()` and `ray get-auth-token --generate` write)."""
    from orchestrator.submit.local_cluster import cluster_for_address

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
        from orchestrator.submit.local_cluster import home

        return (
            f"the cluster at {address} requires a token: set RAY_AUTH_TOKEN (or RAY_AUTH_TOKEN_PATH, or pass --token-env VAR); "
            f"a cluster started with `orchestrator cluster local up` keeps it in {home()}/clusters/<name>/auth_token"
        )
    return f"the token was rejected by {address} (token from {token.source}); check that it is this cluster's token"


def unreachable_message(address: str, why: str = "") -> str:
    return f"nothing answers at {address}{f' ({why})' if why else ''} (is the cluster up? `orchestrator cluster local status`)"


def probe(address: str, token: Token) -> str:
    """GET /api/version with short timeouts; returns the cluster's Ray version or raises a clear error."""
    import httpx

    headers = {"Authorization": f"Bearer {token.value}"} if token.value else {}
    connect, read = PROBE_TIMEOUT
    try:
        r = httpx.get(f"{address}/api/version", headers=headers, timeout=httpx.Timeout(read, connect=connect))
    except httpx.TimeoutException:
        raise OrchestratorError(unreachable_message(address, f"no answer within {sum(PROBE_TIMEOUT):g} s")) from None
    except httpx.HTTPError as e:
        if (tls := _tls_error(e)) is not None:
            raise OrchestratorError(f"TLS handshake with {address} failed: {first_line(tls)}") from None
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


def _tls_error(e: Optional[BaseException]) -> Optional[ssl.SSLError]:
    """The TLS failure behind an HTTP client error (httpx reports it as a ConnectError), if that is what it was."""
    for _ in range(20):  # a chain of causes is short; never follow a cycle
        if e is None or isinstance(e, ssl.SSLError):
            return e
        e = e.__cause__ or e.__context__
    return None


def _transport_error(e: BaseException) -> bool:
    """A failed connection or a timeout. Ray's JobSubmissionClient talks HTTP through `requests`,
    whose ConnectionError and Timeout are OSErrors that this package matches by name rather than
    import that second HTTP library."""
    return any(c.__name__ in ("ConnectionError", "Timeout", "TimeoutError") for c in type(e).__mro__)


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

    @property
    def run_dir(self) -> str:
        """The run directory the job was told to create (`orchestrator run --run-name`), from its metadata."""
        return self.metadata.get(METADATA_PREFIX + "run_dir", "")


def _view(info) -> JobView:
    def secs(ms):
        return ms / 1000 if ms else None

    status = getattr(info.status, "value", str(info.status))
    return JobView(
        info.submission_id or info.job_id or "",
        status,
        info.entrypoint or "",
        info.message or "",
        secs(info.start_time),
        secs(info.end_time),
        dict(info.metadata or {}),
        getattr(info, "driver_exit_code", None),
    )


class JobsClient:
    """The Ray Jobs API of one cluster, with every failure turned into one clear OrchestratorError."""

    def __init__(
        self,
        address: Optional[str] = None,
        *,
        token_env: Optional[str] = None,
        insecure: bool = False,
        warn: Callable[[str], None] = lambda m: None,
    ):
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
        from ray.exceptions import AuthenticationError

        try:
            yield
        except AuthenticationError as e:
            raise OrchestratorError(auth_message(401 if "required" in str(e).lower() else 403, self.address, self.token)) from None
        except OSError as e:
            if not _transport_error(e):
                raise
            raise OrchestratorError(unreachable_message(self.address, _why(e))) from None
        except RuntimeError as e:
            text = str(e)
            if job_id and ("404" in text or "does not exist" in text):
                raise OrchestratorError(f"no job {job_id!r} at {self.address} (`orchestrator jobs list` shows the jobs)") from None
            raise OrchestratorError(f"{self.address}: {first_line(e)}") from None

    def submit(self, plan: "SubmissionPlan") -> str:
        # a head that just started may not have registered its job agent yet: ask again for a while
        agent_starting = tenacity.Retrying(
            retry=tenacity.retry_if_exception(lambda e: isinstance(e, RuntimeError) and "No available agent" in str(e)),
            stop=tenacity.stop_after_delay(AGENT_WAIT_S),
            wait=tenacity.wait_fixed(1),
            reraise=True,
        )
        with materialized(plan) as working_dir, self._errors():
            return agent_starting(
                self._client.submit_job,
                entrypoint=plan.entrypoint,
                submission_id=plan.submission_id,
                runtime_env=plan.runtime_env(str(working_dir)),
                metadata=plan.metadata,
                entrypoint_num_cpus=plan.entrypoint_num_cpus,
            )

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
        """The job once its status is one of `statuses`, or as it is after `timeout` s."""
        return poll_until(lambda: self.job(job_id), lambda view: view.status in statuses, timeout=timeout, interval=0.5)

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

    from orchestrator.ray_internals import JOB_SDK_LOGGERS

    for name in JOB_SDK_LOGGERS:
        logging.getLogger(name).setLevel(logging.WARNING)


def exit_code(view: JobView) -> int:
    """SUCCEEDED -> 0; FAILED -> the driver's exit code (3: not promoted, 2: invalid spec...) or 1; STOPPED -> 1."""
    if view.status == "SUCCEEDED":
        return 0
    if view.status == "FAILED" and view.driver_exit_code and 0 < view.driver_exit_code < 256:
        return view.driver_exit_code
    return 1
