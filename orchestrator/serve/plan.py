"""What serving a checkpoint with a spec's serve section asks of Ray Serve, pure (no Ray): the
import path and deployment name the Serve application is known by, and `app_builder`'s arguments.
`orchestrator serve` (deployment.py) and the KubeRay RayService (k8s/render.py) both use these.
"""

from __future__ import annotations

from typing import Any, Optional

from orchestrator.spec import ServeSpec

IMPORT_PATH = "orchestrator.serve.deployment:app_builder"
# Name of the Serve deployment that app_builder builds; the RayService manifest's serveConfigV2 sets
# its replicas, queueing and actor resources by this name.
DEPLOYMENT = "Predictor"


def replica_capacity(spec: ServeSpec) -> int:
    """Serve's max_ongoing_requests for the deployment: the requests a replica works on, plus those
    whose bodies are still arriving or that wait for one of those slots. The replica itself lets at
    most `spec.max_ongoing_requests` of them past the body (serve/guard.py, Intake), so a slow client
    never holds a working slot, and /healthz answers while such clients are connected."""
    return spec.max_ongoing_requests + spec.max_receiving_requests


def replica_args(checkpoint_path: str, spec: ServeSpec, *, version: Optional[str] = None) -> dict:
    """app_builder args that each replica reads itself (the deployment options are set apart)."""
    args: dict[str, Any] = {
        "checkpoint_path": checkpoint_path,
        "max_batch_size": spec.max_batch_size,
        "batch_wait_timeout_s": spec.batch_wait_timeout_s,
        "max_body_bytes": spec.max_body_bytes,
        "body_timeout_s": spec.body_timeout_s,
        "max_working_requests": spec.max_ongoing_requests,
        "max_waiting_requests": spec.max_queued_requests,
    }
    if version:
        args["version"] = version
    if spec.auth_token_env:
        args["auth_token_env"] = spec.auth_token_env
    return args


def serve_args(checkpoint_path: str, spec: ServeSpec, *, version: Optional[str] = None) -> dict:
    """app_builder args for a checkpoint served with `spec`'s settings: the replica's and the deployment options."""
    return {
        **replica_args(checkpoint_path, spec, version=version),
        "max_ongoing_requests": replica_capacity(spec),
        "max_queued_requests": spec.max_queued_requests,
        "autoscaling_config": spec.autoscaling.model_dump(),
        "num_cpus": spec.cpus_per_replica,
        "num_gpus": spec.gpus_per_replica,
    }
