"""`orchestrator k8s render`, `submit_k8s` behind `orchestrator submit SPEC --k8s`, and the
Kubernetes options shared with `orchestrator cluster k8s` (cli/cluster.py).

User errors are one message on stderr and a non-zero exit code, never a traceback.
"""

from __future__ import annotations

import os
import re
import secrets
import string
from enum import Enum
from pathlib import Path
from typing import Optional

import typer

from orchestrator.cli.backends import Backend, SubmitRequest
from orchestrator.cli.common import (
    ENV_GPU_IMAGE,
    ENV_IMAGE,
    ENV_STORAGE_PVC,
    check_namespace,
    command_group,
    echo_err,
    echo_out,
    friendly,
    opt_gpu_image,
    opt_image,
    opt_storage_pvc,
    warn_each,
)
from orchestrator.errors import INTERRUPTED_EXIT, OrchestratorError

_DNS1123_SUBDOMAIN = re.compile(r"^[a-z0-9]([-a-z0-9.]{0,251}[a-z0-9])?$")


class Kind(str, Enum):
    raycluster = "raycluster"
    rayjob = "rayjob"
    rayservice = "rayservice"


k8s_app = command_group("Kubernetes manifests (KubeRay RayCluster, RayJob, RayService) rendered from a job spec.", name="k8s")


@k8s_app.callback()
def _k8s_group() -> None:
    """Kubernetes manifests (KubeRay RayCluster, RayJob, RayService) rendered from a job spec."""


# ----------------------------------------------------------------------------------- helpers


def render_options(
    *,
    namespace: Optional[str],
    storage_pvc: Optional[str] = None,
    image: Optional[str] = None,
    gpu_image: Optional[str] = None,
    name: Optional[str] = None,
    checkpoint: Optional[str] = None,
):
    """RenderOptions from CLI values, falling back to the ORCHESTRATOR_K8S_* environment variables."""
    from orchestrator.k8s.render import RenderOptions

    check_namespace(namespace)
    storage_pvc = storage_pvc or os.environ.get(ENV_STORAGE_PVC) or None
    if storage_pvc and not _DNS1123_SUBDOMAIN.match(storage_pvc):
        raise OrchestratorError(f"--storage-pvc {storage_pvc!r} is not a valid PersistentVolumeClaim name")
    kw = {}
    if image or os.environ.get(ENV_IMAGE):
        kw["image"] = image or os.environ[ENV_IMAGE]
    if gpu_image or os.environ.get(ENV_GPU_IMAGE):
        kw["gpu_image"] = gpu_image or os.environ[ENV_GPU_IMAGE]
    return RenderOptions(namespace=namespace, name=name, storage_pvc=storage_pvc, checkpoint=checkpoint, **kw)


def new_suffix() -> str:
    """5 random lower-case letters/digits, like Kubernetes' generateName: each submit is its own RayJob."""
    return "".join(secrets.choice(string.ascii_lowercase + string.digits) for _ in range(5))


def ownership_note(objects: list[dict]) -> str:
    *helpers, main = objects
    if not helpers:
        return ""
    names = ", ".join(f"{o['kind']}/{o['metadata']['name']}" for o in helpers)
    return (
        f"# After creating {main['kind']}/{main['metadata']['name']}, its uid is added to the ownerReferences of "
        f"{names}, so deleting it deletes them.\n"
    )


# ------------------------------------------------------------------------------------ render


@k8s_app.command()
@friendly
def render(
    spec_path: Path = typer.Argument(..., metavar="SPEC", help="Job spec YAML."),
    kind: Kind = typer.Option(Kind.rayjob, "--kind", help="What to render."),
    namespace: Optional[str] = typer.Option(
        None, "--namespace", "-n", help="Namespace to write into the objects (default: none; kubectl -n decides)."
    ),
    checkpoint: Optional[str] = typer.Option(
        None, "--checkpoint", help="rayservice: the promoted checkpoint, a path on the storage volume or a URI."
    ),
    name: Optional[str] = typer.Option(None, "--name", help="Object name (default: from the spec's name)."),
    storage_pvc: Optional[str] = opt_storage_pvc(),
    image: Optional[str] = opt_image(),
    gpu_image: Optional[str] = opt_gpu_image(),
) -> None:
    """Print a RayCluster, RayJob or RayService (with its NetworkPolicy and, for a RayJob, the spec's
    ConfigMap) for SPEC as YAML. Contacts nothing."""
    from orchestrator.k8s.render import render as render_objects
    from orchestrator.spec import load_spec

    spec = load_spec(spec_path)
    opts = render_options(namespace=namespace, storage_pvc=storage_pvc, image=image, gpu_image=gpu_image, name=name, checkpoint=checkpoint)
    if checkpoint and kind is not Kind.rayservice:
        raise OrchestratorError("--checkpoint applies to --kind rayservice only")
    rendered = render_objects(kind.value, spec, opts)
    warn_each(rendered.warnings)
    echo_out(rendered.yaml())


# ------------------------------------------------------------------------------------ submit


def submit_k8s(
    spec_path: str,
    *,
    namespace: str,
    kubeconfig: Optional[str],
    context: Optional[str],
    dry_run: bool,
    follow: bool,
    storage_pvc: Optional[str] = None,
    image: Optional[str] = None,
    gpu_image: Optional[str] = None,
    suffix: Optional[str] = None,
) -> int:
    """`orchestrator submit SPEC --k8s`: create a RayJob (with its ConfigMap and NetworkPolicy) and,
    with follow, wait until it finishes. Returns the exit code: 0 when created (and, if followed,
    succeeded), 1 when the job failed or the cluster could not be reached, 2 for an invalid spec."""
    from orchestrator.k8s.render import render_rayjob
    from orchestrator.spec import load_spec

    name = "?"
    try:
        spec = load_spec(spec_path)
        opts = render_options(namespace=namespace, storage_pvc=storage_pvc, image=image, gpu_image=gpu_image)
        rendered = render_rayjob(spec, opts, suffix=suffix or new_suffix())
        warn_each(rendered.warnings)
        name = rendered.main["metadata"]["name"]
        if dry_run:
            echo_out(rendered.yaml() + ownership_note(rendered.objects))
            return 0

        from orchestrator.k8s import client as kc

        conn = kc.connect(kubeconfig, context)
        kc.apply_new(conn, rendered.objects)
        typer.echo(f"created RayJob {name} in namespace {namespace}")
        typer.echo(f"  logs:   kubectl -n {namespace} logs -f job/{name}")
        typer.echo(f"  status: kubectl -n {namespace} get rayjob {name}")
        typer.echo(f"  cancel: kubectl -n {namespace} delete rayjob {name}")
        if not follow:
            return 0
        final = kc.follow_rayjob(conn, namespace, name, lambda st: typer.echo(_rayjob_line(name, st)))
        return 0 if final.get("jobStatus") == "SUCCEEDED" else 1
    except OrchestratorError as e:
        echo_err(f"error: {e}")
        return e.exit_code
    except KeyboardInterrupt:
        echo_err(f"stopped following; RayJob {name} keeps running (kubectl -n {namespace} delete rayjob {name} cancels it)")
        return INTERRUPTED_EXIT


def submit_rayjob(request: SubmitRequest) -> None:
    """The `k8s` backend (`orchestrator submit --k8s`): a KubeRay RayJob, followed by default."""
    if request.given("address", "token_env", "insecure", "storage"):
        raise OrchestratorError("--address, --token-env, --insecure and --storage apply to Ray Jobs API submission, not to --k8s")
    o = request.options
    code = submit_k8s(
        str(request.spec_path),
        namespace=o.get("namespace") or "default",
        kubeconfig=o.get("kubeconfig"),
        context=o.get("context"),
        dry_run=request.dry_run,
        follow=True if request.follow is None else request.follow,
        storage_pvc=o.get("storage_pvc"),
        image=o.get("image"),
        gpu_image=o.get("gpu_image"),
    )
    if code:
        raise typer.Exit(code)


BACKEND = Backend("k8s", submit_rayjob)  # cli/backends.py


def _rayjob_line(name: str, status: dict) -> str:
    deploy = status.get("jobDeploymentStatus") or "Pending"
    line = f"RayJob {name}: {deploy}"
    if status.get("jobStatus"):
        line += f" (job {status['jobStatus']})"
    detail = status.get("message") or status.get("reason")
    if detail:
        line += f": {' '.join(str(detail).split())}"
    return line


def register(app: typer.Typer) -> None:
    """Add `k8s` (render) to the main app."""
    app.add_typer(k8s_app, name="k8s")
