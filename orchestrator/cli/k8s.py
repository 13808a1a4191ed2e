"""CLI pieces for Kubernetes: `orchestrator k8s render`, `orchestrator cluster k8s up|down|status|scale`
and `submit_k8s` behind `orchestrator submit SPEC --k8s`.

Every command that would change a cluster has `--dry-run`, which prints the exact objects (or
patch) as multi-document YAML and contacts nothing (`scale --dry-run` reads the RayCluster to find
its worker group, and changes nothing). User errors are one message on stderr and a non-zero exit
code, never a traceback.
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

from orchestrator.clitools import friendly
from orchestrator.errors import OrchestratorError

ENV_IMAGE = "ORCHESTRATOR_K8S_IMAGE"
ENV_GPU_IMAGE = "ORCHESTRATOR_K8S_GPU_IMAGE"
ENV_STORAGE_PVC = "ORCHESTRATOR_K8S_STORAGE_PVC"
DEFAULT_CLUSTER_NAME = "orchestrator"

_DNS1123_LABEL = re.compile(r"^[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?$")
_DNS1123_SUBDOMAIN = re.compile(r"^[a-z0-9]([-a-z0-9.]{0,251}[a-z0-9])?$")


class Kind(str, Enum):
    raycluster = "raycluster"
    rayjob = "rayjob"
    rayservice = "rayservice"


k8s_app = typer.Typer(
    name="k8s",
    help="Kubernetes manifests (KubeRay RayCluster, RayJob, RayService) rendered from a job spec.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
cluster_k8s_app = typer.Typer(
    name="k8s",
    help="Create, inspect, scale and delete a KubeRay RayCluster (kubeconfig or in-cluster credentials).",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)


@k8s_app.callback()
def _k8s_group() -> None:
    """Kubernetes manifests (KubeRay RayCluster, RayJob, RayService) rendered from a job spec."""


@cluster_k8s_app.callback()
def _cluster_group() -> None:
    """Create, inspect, scale and delete a KubeRay RayCluster."""


# ----------------------------------------------------------------------------------- helpers


def _out(text: str) -> None:
    typer.echo(text, nl=False)


def _err(line: str) -> None:
    typer.echo(line, err=True)


def _warn(warnings: list[str]) -> None:
    for w in warnings:
        _err(f"warning: {w}")


def _check_namespace(namespace: Optional[str]) -> None:
    if namespace is not None and not _DNS1123_LABEL.match(namespace):
        raise OrchestratorError(f"--namespace {namespace!r} is not a valid namespace name (lower-case letters, digits, '-')")


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

    _check_namespace(namespace)
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


def _targets_yaml(targets: list[tuple[str, str, str, str]]) -> str:
    from orchestrator.k8s.render import to_yaml

    return to_yaml(
        [{"apiVersion": api, "kind": kind, "metadata": {"name": name, "namespace": ns}} for api, kind, name, ns in targets]
    )


# Shared option definitions ---------------------------------------------------------------

_NS_HELP = "Kubernetes namespace."
_KUBECONFIG_HELP = "kubeconfig file (default: $KUBECONFIG, ~/.kube/config, else in-cluster credentials)."


def _opt_namespace(default: Optional[str] = "default"):
    return typer.Option(default, "--namespace", "-n", help=_NS_HELP)


def _opt_kubeconfig():
    return typer.Option(None, "--kubeconfig", help=_KUBECONFIG_HELP, show_default=False)


def _opt_context():
    return typer.Option(None, "--context", help="kubeconfig context (default: the current one).", show_default=False)


def _opt_dry_run(what: str = "Print the objects that would be sent, as YAML, and contact nothing."):
    return typer.Option(False, "--dry-run", help=what)


def _opt_storage_pvc():
    return typer.Option(
        None,
        "--storage-pvc",
        envvar=ENV_STORAGE_PVC,
        help="ReadWriteMany PersistentVolumeClaim mounted at /mnt/storage in every Ray pod; relative data.source, "
        "output.dir and --checkpoint paths live there.",
        show_default=False,
    )


def _opt_image():
    return typer.Option(None, "--image", envvar=ENV_IMAGE, help="Container image for the head and CPU workers.", show_default=False)


def _opt_gpu_image():
    return typer.Option(None, "--gpu-image", envvar=ENV_GPU_IMAGE, help="Container image for GPU workers.", show_default=False)


# ------------------------------------------------------------------------------------ render


@k8s_app.command()
@friendly
def render(
    spec_path: Path = typer.Argument(..., metavar="SPEC", help="Job spec YAML."),
    kind: Kind = typer.Option(Kind.rayjob, "--kind", help="What to render."),
    namespace: Optional[str] = typer.Option(None, "--namespace", "-n", help="Namespace to write into the objects (default: none; kubectl -n decides)."),
    checkpoint: Optional[str] = typer.Option(None, "--checkpoint", help="rayservice: the promoted checkpoint, a path on the storage volume or a URI."),
    name: Optional[str] = typer.Option(None, "--name", help="Object name (default: from the spec's name)."),
    storage_pvc: Optional[str] = _opt_storage_pvc(),
    image: Optional[str] = _opt_image(),
    gpu_image: Optional[str] = _opt_gpu_image(),
) -> None:
    """Print a RayCluster, RayJob or RayService (with its NetworkPolicy and, for a RayJob, the spec's
    ConfigMap) for SPEC as YAML. Contacts nothing."""
    from orchestrator.k8s.render import render as render_objects
    from orchestrator.spec import load_spec

    spec = load_spec(spec_path)
    opts = render_options(
        namespace=namespace, storage_pvc=storage_pvc, image=image, gpu_image=gpu_image, name=name, checkpoint=checkpoint
    )
    if checkpoint and kind is not Kind.rayservice:
        raise OrchestratorError("--checkpoint applies to --kind rayservice only")
    rendered = render_objects(kind.value, spec, opts)
    _warn(rendered.warnings)
    _out(rendered.yaml())


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
        _warn(rendered.warnings)
        name = rendered.main["metadata"]["name"]
        if dry_run:
            _out(rendered.yaml() + ownership_note(rendered.objects))
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
        _err(f"error: {e}")
        return e.exit_code
    except KeyboardInterrupt:
        _err(f"stopped following; RayJob {name} keeps running (kubectl -n {namespace} delete rayjob {name} cancels it)")
        return 130


def _rayjob_line(name: str, status: dict) -> str:
    deploy = status.get("jobDeploymentStatus") or "Pending"
    line = f"RayJob {name}: {deploy}"
    if status.get("jobStatus"):
        line += f" (job {status['jobStatus']})"
    detail = status.get("message") or status.get("reason")
    if detail:
        line += f": {' '.join(str(detail).split())}"
    return line


# ------------------------------------------------------------------------------- cluster up


@cluster_k8s_app.command()
@friendly
def up(
    spec_path: Optional[Path] = typer.Argument(
        None, metavar="SPEC", help="Size the cluster for this job spec's scaling section (default: 2 CPU workers)."
    ),
    name: Optional[str] = typer.Option(None, "--name", help=f"RayCluster name (default: the spec's name, else {DEFAULT_CLUSTER_NAME!r})."),
    namespace: str = _opt_namespace(),
    kubeconfig: Optional[str] = _opt_kubeconfig(),
    context: Optional[str] = _opt_context(),
    storage_pvc: Optional[str] = _opt_storage_pvc(),
    image: Optional[str] = _opt_image(),
    gpu_image: Optional[str] = _opt_gpu_image(),
    dry_run: bool = _opt_dry_run(),
) -> None:
    """Create an autoscaling RayCluster (and its NetworkPolicy)."""
    from orchestrator.k8s.render import concurrent_trials, render_raycluster
    from orchestrator.spec import ScalingSpec, load_spec

    if spec_path is not None:
        spec = load_spec(spec_path)
        base, scaling, trials = spec.name, spec.scaling, concurrent_trials(spec)
    else:
        base, scaling, trials = DEFAULT_CLUSTER_NAME, ScalingSpec(), 1
    opts = render_options(namespace=namespace, storage_pvc=storage_pvc, image=image, gpu_image=gpu_image, name=name)
    rendered = render_raycluster(base, scaling, opts, trials=trials)
    _warn(rendered.warnings)
    cluster = rendered.main
    cname = cluster["metadata"]["name"]
    if dry_run:
        _out(rendered.yaml() + ownership_note(rendered.objects))
        return

    from orchestrator.k8s import client as kc

    conn = kc.connect(kubeconfig, context)
    try:
        existing = kc.get(conn, "RayCluster", namespace, cname)
    except kc.NotFound:
        existing = None
    if existing is not None:
        state = (existing.get("status") or {}).get("state") or "pending"
        raise kc.K8sError(
            f"RayCluster {cname} already exists in namespace {namespace} (state: {state}); "
            f"see `orchestrator cluster k8s status {cname}`, or `scale` / `down` it"
        )
    kc.apply_new(conn, rendered.objects)
    group = cluster["spec"]["workerGroupSpecs"][0]
    res = group["template"]["spec"]["containers"][0]["resources"]["limits"]
    typer.echo(
        f"created RayCluster {cname} in namespace {namespace}: group {group['groupName']} "
        f"{group['minReplicas']}-{group['maxReplicas']} pods x {', '.join(f'{v} {k}' for k, v in res.items())}"
    )
    for line in _hints(cname, namespace):
        typer.echo(line)


def _hints(cname: str, namespace: str) -> list[str]:
    return [
        f"  status:    orchestrator cluster k8s status {cname} -n {namespace}",
        f"  dashboard: kubectl -n {namespace} port-forward svc/{cname}-head-svc 8265:8265",
        f"  token:     kubectl -n {namespace} get secret {cname} -o jsonpath='{{.data.auth_token}}' | base64 -d",
    ]


# ----------------------------------------------------------------------------- cluster down


@cluster_k8s_app.command()
@friendly
def down(
    name: str = typer.Argument(DEFAULT_CLUSTER_NAME, help="RayCluster name."),
    namespace: str = _opt_namespace(),
    kubeconfig: Optional[str] = _opt_kubeconfig(),
    context: Optional[str] = _opt_context(),
    dry_run: bool = _opt_dry_run("Print the objects that would be deleted, as YAML, and contact nothing."),
) -> None:
    """Delete a RayCluster and its NetworkPolicy."""
    from orchestrator.k8s.render import RAY_API_VERSION

    _check_namespace(namespace)
    targets = [
        (RAY_API_VERSION, "RayCluster", name, namespace),
        ("networking.k8s.io/v1", "NetworkPolicy", f"{name}-ray-ingress", namespace),
    ]
    if dry_run:
        _out("# would delete:\n" + _targets_yaml(targets))
        return

    from orchestrator.k8s import client as kc

    conn = kc.connect(kubeconfig, context)
    deleted = [f"{kind} {obj_name}" for _, kind, obj_name, ns in targets if kc.delete(conn, kind, ns, obj_name)]
    if not deleted:
        typer.echo(f"nothing to delete: no RayCluster {name} in namespace {namespace}")
        return
    typer.echo(f"deleted {', '.join(deleted)} in namespace {namespace}")


# --------------------------------------------------------------------------- cluster status


@cluster_k8s_app.command()
@friendly
def status(
    name: Optional[str] = typer.Argument(None, help="RayCluster name (default: list the namespace's RayClusters)."),
    namespace: str = _opt_namespace(),
    kubeconfig: Optional[str] = _opt_kubeconfig(),
    context: Optional[str] = _opt_context(),
    dry_run: bool = _opt_dry_run("Print the API request that would be made and contact nothing."),
) -> None:
    """Show a RayCluster's state, workers and resources, or list the RayClusters of a namespace."""
    from orchestrator.k8s import client as kc

    _check_namespace(namespace)
    path = f"/apis/{kc.RAY_GROUP}/{kc.RAY_API_VERSION}/namespaces/{namespace}/rayclusters" + (f"/{name}" if name else "")
    if dry_run:
        typer.echo(f"GET {path}")
        return
    conn = kc.connect(kubeconfig, context)
    if name is None:
        items = kc.list_objects(conn, "RayCluster", namespace)
        if not items:
            typer.echo(f"no RayClusters in namespace {namespace}")
            return
        rows = [("NAME", "STATE", "WORKERS (ready/desired)", "CPU", "GPU", "MEMORY")]
        for obj in items:
            st = obj.get("status") or {}
            rows.append(
                (
                    obj["metadata"]["name"],
                    st.get("state") or "pending",
                    f"{st.get('readyWorkerReplicas', 0)}/{st.get('desiredWorkerReplicas', 0)}",
                    str(st.get("desiredCPU", "0")),
                    str(st.get("desiredGPU", "0")),
                    str(st.get("desiredMemory", "0")),
                )
            )
        widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
        for r in rows:
            typer.echo("  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip())
        return
    try:
        obj = kc.get(conn, "RayCluster", namespace, name)
    except kc.NotFound:
        raise kc.K8sError(f"no RayCluster {name} in namespace {namespace}") from None
    for line in cluster_summary(obj) + _hints(name, namespace)[1:]:
        typer.echo(line)


def cluster_summary(obj: dict) -> list[str]:
    meta, spec, st = obj["metadata"], obj.get("spec") or {}, obj.get("status") or {}
    state = st.get("state") or "pending"
    if st.get("reason"):
        state += f" ({' '.join(str(st['reason']).split())})"
    head = st.get("head") or {}
    lines = [
        f"RayCluster {meta['name']} (namespace {meta.get('namespace', '?')}): {state}",
        f"  head: pod {head.get('podName') or '-'} ({head.get('podIP') or '-'}), "
        f"service {head.get('serviceName') or meta['name'] + '-head-svc'} ({head.get('serviceIP') or '-'})",
        f"  workers: {st.get('readyWorkerReplicas', 0)} ready, {st.get('availableWorkerReplicas', 0)} available, "
        f"{st.get('desiredWorkerReplicas', 0)} desired",
        f"  resources: {st.get('desiredCPU', '0')} CPU, {st.get('desiredGPU', '0')} GPU, {st.get('desiredMemory', '0')} memory",
    ]
    for g in spec.get("workerGroupSpecs") or []:
        lines.append(
            f"  group {g.get('groupName')}: replicas {g.get('replicas', 0)} (min {g.get('minReplicas', 0)}, max {g.get('maxReplicas', '-')})"
        )
    auth = (spec.get("authOptions") or {}).get("mode", "disabled")
    lines.append(f"  autoscaling: {'on' if spec.get('enableInTreeAutoscaling') else 'off'}; Ray auth: {auth}")
    return lines


# ---------------------------------------------------------------------------- cluster scale


@cluster_k8s_app.command()
@friendly
def scale(
    name: str = typer.Argument(DEFAULT_CLUSTER_NAME, help="RayCluster name."),
    workers: int = typer.Option(..., "--workers", "-w", min=0, help="Worker pods wanted in the group."),
    group: Optional[str] = typer.Option(None, "--group", help="Worker group (default: the only one)."),
    min_workers: Optional[int] = typer.Option(None, "--min", min=0, help="New minReplicas (default: lowered to --workers if needed)."),
    max_workers: Optional[int] = typer.Option(None, "--max", min=0, help="New maxReplicas (default: raised to --workers if needed)."),
    namespace: str = _opt_namespace(),
    kubeconfig: Optional[str] = _opt_kubeconfig(),
    context: Optional[str] = _opt_context(),
    dry_run: bool = _opt_dry_run("Read the RayCluster, print the JSON patch that would be sent, change nothing."),
) -> None:
    """Set a worker group's replicas (with autoscaling on, the autoscaler keeps adjusting between its min and max)."""
    from orchestrator.k8s import client as kc
    from orchestrator.k8s.render import scale_patch, to_yaml

    _check_namespace(namespace)
    conn = kc.connect(kubeconfig, context)
    try:
        obj = kc.get(conn, "RayCluster", namespace, name)
    except kc.NotFound:
        raise kc.K8sError(f"no RayCluster {name} in namespace {namespace}") from None
    ops = scale_patch(obj, workers, group=group, min_replicas=min_workers, max_replicas=max_workers)
    if dry_run:
        _out(f"# JSON patch (application/json-patch+json) for RayCluster {name} in namespace {namespace}:\n" + to_yaml([ops]))
        return
    kc.patch(conn, "RayCluster", namespace, name, ops, json_patch=True)
    group_name, lo, hi = ops[0]["value"], ops[1]["value"], ops[2]["value"]
    typer.echo(f"scaled RayCluster {name} group {group_name} to {workers} workers (min {lo}, max {hi})")
    if obj.get("spec", {}).get("enableInTreeAutoscaling") and lo < workers:
        typer.echo(f"  note: autoscaling is on; idle workers above --min {lo} are removed again")
