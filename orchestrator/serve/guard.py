"""The HTTP guard in front of a served model: the outermost ASGI layer (metrics for every request,
the bearer-token check, the Content-Length limit) and the intake that bounds how long a body may
take to arrive and how many requests are worked on at once."""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import json
import time
from contextlib import asynccontextmanager
from typing import AsyncIterator, Callable, Optional

from orchestrator.serve.schemas import ClientError

OPEN_PATHS = frozenset({"/healthz"})  # reachable without a token (liveness probes)
ROUTES = ("/predict", "/healthz", "/metadata", "/docs", "/docs/oauth2-redirect", "/redoc", "/openapi.json")


def token_digest(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def relative_path(scope: dict) -> str:
    """Path below the app's mount point (Serve mounts the app at its route_prefix)."""
    path, root = scope.get("path", "/"), scope.get("root_path", "") or ""
    if root and path.startswith(root):
        path = path[len(root) :]
    return path or "/"


async def send_json(send, status: int, body: dict, headers: Optional[dict] = None) -> None:
    raw = json.dumps(body).encode()
    hdrs = [(b"content-type", b"application/json"), (b"content-length", str(len(raw)).encode())]
    hdrs += [(k.lower().encode(), v.encode()) for k, v in (headers or {}).items()]
    await send({"type": "http.response.start", "status": status, "headers": hdrs})
    await send({"type": "http.response.body", "body": raw})


class Guard:
    """Outermost ASGI layer: metrics for every request, bearer-token check, Content-Length limit."""

    def __init__(
        self, app, *, token_sha256: Optional[str], max_body_bytes: int, observe: Optional[Callable[[str, int, float], None]] = None
    ):
        self.app = app
        self.token_sha256 = token_sha256
        self.max_body_bytes = max_body_bytes
        self.observe = observe

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        t0 = time.perf_counter()
        status = 500
        path = relative_path(scope)

        async def send_status(message):
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            problem = self._check(scope, path)
            if problem is not None:
                await send_json(send_status, problem.status, problem.body(), problem.headers)
            else:
                await self.app(scope, receive, send_status)
        finally:
            if self.observe is not None:
                self.observe(path if path in ROUTES else "other", status, time.perf_counter() - t0)

    def _check(self, scope, path: str) -> Optional[ClientError]:
        headers = dict(scope.get("headers") or [])
        for check in CHECKS:
            problem = check(self, headers, path)
            if problem is not None:
                return problem
        return None


# ------------------------------------------------------------------------------------- checks

# A check of a request before it reaches the app: (the guard, its headers by lower-case name, the
# path below the route prefix) -> the client's mistake, or None. The first that finds one answers.
Check = Callable[[Guard, dict, str], Optional[ClientError]]


def bearer_token(guard: Guard, headers: dict, path: str) -> Optional[ClientError]:
    """With a token configured, every path but OPEN_PATHS needs 'Authorization: Bearer <token>'."""
    if not guard.token_sha256 or path in OPEN_PATHS:
        return None
    auth = headers.get(b"authorization", b"").decode("latin-1")
    scheme, _, given = auth.partition(" ")
    challenge = {"WWW-Authenticate": "Bearer"}
    if not auth:
        return ClientError(401, "missing bearer token: send 'Authorization: Bearer <token>'", headers=challenge)
    if scheme.lower() != "bearer" or not given.strip():
        return ClientError(401, "malformed Authorization header: expected 'Bearer <token>'", headers=challenge)
    if not hmac.compare_digest(token_digest(given.strip()), guard.token_sha256):
        return ClientError(403, "invalid bearer token")
    return None


def body_size(guard: Guard, headers: dict, path: str) -> Optional[ClientError]:
    """A declared Content-Length over the limit is refused before the body is read (a body without
    one is measured as it arrives, Intake.read_body)."""
    length = headers.get(b"content-length")
    if length is None:
        return None
    try:
        n = int(length)
    except ValueError:
        return ClientError(400, "invalid Content-Length header")
    if n > guard.max_body_bytes:
        return ClientError(413, f"request body is {n} bytes; the limit is {guard.max_body_bytes} (serve.max_body_bytes)")
    return None


CHECKS: list[Check] = [bearer_token, body_size]


def register_check(check: Check) -> None:
    """Run `check` on every request, after the checks before it (docs/extending.md)."""
    if check not in CHECKS:
        CHECKS.append(check)


def unregister_check(check: Check) -> None:
    if check in CHECKS and check not in (bearer_token, body_size):
        CHECKS.remove(check)


class Intake:
    """A request's way in: its body must arrive within `body_timeout_s` (else 408); only then does it
    take one of `max_working` slots (None: no bound here), waiting for one behind at most
    `max_waiting` others (-1: unbounded; more: 503). So a client that sends its body slowly, or
    never, holds no working slot, and /healthz (which takes none) answers while such clients are
    connected. Counts are per replica and read by /metadata."""

    def __init__(self, body_timeout_s: float = 10.0, max_working: Optional[int] = None, max_waiting: int = -1):
        self.body_timeout_s = body_timeout_s
        self.max_working = max_working
        self.max_waiting = max_waiting
        self.receiving = self.working = self.waiting = 0
        self._slots: Optional[asyncio.Semaphore] = asyncio.Semaphore(max_working) if max_working else None

    def counts(self) -> dict[str, int]:
        return {"receiving": self.receiving, "working": self.working, "waiting": self.waiting}

    async def read_body(self, request, limit: int) -> bytes:
        """The body, refused with 413 as soon as it grows past `limit` (also without a Content-Length)
        and with 408 when it has not all arrived within body_timeout_s."""
        self.receiving += 1
        try:
            return await asyncio.wait_for(read_body(request, limit), self.body_timeout_s)
        except asyncio.TimeoutError:
            raise ClientError(
                408, f"request body not received within {self.body_timeout_s:g} s (serve.body_timeout_s)", headers={"Connection": "close"}
            ) from None
        finally:
            self.receiving -= 1

    @asynccontextmanager
    async def slot(self) -> AsyncIterator[None]:
        """One working slot for the request's parsing and inference; 503 when too many wait for one."""
        if self._slots is None:
            self.working += 1
            try:
                yield
            finally:
                self.working -= 1
            return
        if self._slots.locked() and 0 <= self.max_waiting <= self.waiting:
            raise ClientError(
                503,
                f"overloaded: {self.max_working} requests in progress and {self.waiting} waiting; retry later",
                headers={"Retry-After": "1"},
            )
        self.waiting += 1
        try:
            await self._slots.acquire()
        finally:
            self.waiting -= 1
        self.working += 1
        try:
            yield
        finally:
            self.working -= 1
            self._slots.release()


async def read_body(request, limit: int) -> bytes:
    """The body, refused with 413 as soon as it grows past `limit` (also without a Content-Length)."""
    chunks, total = [], 0
    async for chunk in request.stream():
        total += len(chunk)
        if total > limit:
            raise ClientError(413, f"request body is larger than {limit} bytes (serve.max_body_bytes)")
        chunks.append(chunk)
    return b"".join(chunks)
