"""The spec's `serve` section: how the promoted model is served."""

from __future__ import annotations

from typing import Optional

from pydantic import Field, model_validator

from orchestrator.spec.base import SpecModel


class Autoscaling(SpecModel):
    min_replicas: int = Field(1, ge=0, le=4096, description="Fewest replicas the autoscaler keeps (0 scales to zero when idle).")
    max_replicas: int = Field(1, gt=0, le=4096, description="Most replicas the autoscaler starts.")
    target_ongoing_requests: float = Field(8, gt=0, le=100_000, description="Requests in flight per replica that the autoscaler aims for.")

    @model_validator(mode="after")
    def _ordered(self) -> "Autoscaling":
        if self.min_replicas > self.max_replicas:
            raise ValueError(f"min_replicas ({self.min_replicas}) is more than max_replicas ({self.max_replicas})")
        return self


class ServeSpec(SpecModel):
    """How the promoted model is served over HTTP by Ray Serve."""

    host: str = Field(
        "127.0.0.1",
        pattern=r"^[A-Za-z0-9.:-]{1,253}$",
        description="Bind address. Loopback by default; 0.0.0.0 exposes the server to the network.",
    )
    port: int = Field(8000, gt=0, lt=65536, description="TCP port of the HTTP server (1 to 65535).")
    route_prefix: str = Field(
        "/", pattern=r"^/[\w\-/]*$", description="URL path prefix the model's endpoints are served under, e.g. /digits."
    )
    max_batch_size: int = Field(32, gt=0, le=4096, description="Dynamic batching: most requests per forward pass.")
    batch_wait_timeout_s: float = Field(0.005, ge=0, le=10, description="Dynamic batching: longest wait to fill a batch, in seconds.")
    autoscaling: Autoscaling = Field(
        default_factory=Autoscaling, description="Replica count bounds and the load per replica the autoscaler aims for."
    )
    max_ongoing_requests: int = Field(64, gt=0, le=100_000, description="Requests one replica works on at once.")
    max_queued_requests: int = Field(
        256,
        ge=-1,
        le=1_000_000,
        description="Requests left waiting, beyond max_ongoing_requests per replica, before the proxy answers HTTP 503; -1 is unbounded.",
    )
    cpus_per_replica: float = Field(0.5, gt=0, le=1024, description="CPUs (fractions allowed) reserved by each replica.")
    gpus_per_replica: float = Field(0, ge=0, le=64, description="GPUs (fractions share a GPU) reserved by each replica; > 0 serves on GPU.")
    max_body_bytes: int = Field(1 << 20, gt=0, le=1 << 30, description="Largest request body in bytes; larger ones get HTTP 413.")
    body_timeout_s: float = Field(
        10.0,
        gt=0,
        le=600,
        description="Longest time, in seconds, a request's body may take to arrive; a slower client gets HTTP 408 and its place is freed.",
    )
    max_receiving_requests: int = Field(
        256,
        ge=0,
        le=100_000,
        description="Requests one replica accepts beyond max_ongoing_requests while their bodies arrive or they wait for a slot: "
        "a slow client holds one of these, never one of the max_ongoing_requests slots.",
    )
    auth_token_env: Optional[str] = Field(
        None,
        pattern=r"^[A-Z_][A-Z0-9_]*$",
        description="Name of an environment variable holding a bearer token; when set, every endpoint but "
        "/healthz needs 'Authorization: Bearer <token>'. The token itself never goes in the spec.",
    )
