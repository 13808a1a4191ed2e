"""`orchestrator cluster local up|down|status` (a Ray head on this machine) and
`orchestrator cluster k8s up|down|status|scale` (a KubeRay RayCluster). Wired in by `register`.

Every k8s command that would change a cluster has `--dry-run`, which prints the exact objects (or
patch) as multi-document YAML and contacts nothing (`scale --dry-run` reads the RayCluster to find
its worker group, and changes nothing).
"""

from __future__ import annotations

import json
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import typer
from rich.text import Text

from orchestrator.cli.common import (
    check_namespace,
    command_group,
    console,
    echo_out,
    err_console,
    friendly,
    opt_context,
    opt_dry_run,
    opt_gpu_image,
    opt_image,
    opt_kubeconfig,
    opt_namespace,
    opt_storage_pvc,
    option_group,
    warn_each,
)
from orchestrator.cli.k8s import ownership_note, render_options
from orchestrator.errors import OrchestratorError

DEFAULT_CLUSTER_NAME = "orchestrator"

local_app = command_group("A local Ray cluster (`ray start --head` on 127.0.0.1, token authentication on).")
cluster_k8s_app = command_group(
    "Create, inspect, scale and delete a KubeRay RayCluster (kubeconfig or in-cluster credentials).", name="k8s"
)


@cluster_k8s_app.callback()
def _cluster_group() -> None:
    """Create, inspect, scale and delete a KubeRay RayCluster."""


@dataclass(frozen=True)
class KubeAPI:
    """Which namespace, through which kubeconfig and context: the options of every `cluster k8s` command."""

    namespace: str = opt_namespace()
    kubeconfig: Optional[str] = opt_kubeconfig()
    context: Optional[str] = opt_context()

    def connect(self):
        from orchestrator.k8s import client as kc

        return kc.connect(self.kubeconfig, self.context)


kube_options = option_group("kube", KubeAPI)


def register(cluster_app: typer.Typer) -> None:
    """Add `k8s` and `local` to `orchestrator cluster`."""
    cluster_app.add_typer(cluster_k8s_app, name="k8s")
    cluster_app.add_typer(local_app, name="local")


def _print(text: str) -> None:
    sys.stdout.write(text)
    sys.stdout.flush()


# ------------------------------------------------------------------------------ cluster local


def _cluster_name(name: Optional[str], config: Optional[Path]) -> str:
    from orchestrator.submit.local_cluster import load_config

    return name or load_config(config).name


_CONFIG_HELP = "Cluster config YAML (see cluster/local.yaml); flags override it."


@local_app.command("up")
@friendly
def local_up(
    config: Optional[Path] = typer.Option(None, "--config", "-c", help=_CONFIG_HELP, show_default=False),
    name: Optional[str] = typer.Option(None, "--name", help="Cluster name (default: the config's, else 'local').", show_default=False),
    num_cpus: Optional[int] = typer.Option(None, "--num-cpus", help="Logical CPUs of the head node.", show_default=False),
    port: Optional[int] = typer.Option(None, "--port", help="GCS port (0: a free one).", show_default=False),
    dashboard_port: Optional[int] = typer.Option(
        None, "--dashboard-port", help="Dashboard / Jobs API port on 127.0.0.1 (0: a free one).", show_default=False
    ),
    storage: Optional[str] = typer.Option(
        None, "--storage", help="Absolute folder for the run directories of jobs submitted here.", show_default=False
    ),
    as_json: bool = typer.Option(False, "--json", help="Print the cluster's state as JSON."),
) -> None:
    """Start a Ray head on this machine with token authentication on; print its addresses."""
    from pydantic import ValidationError

    from orchestrator.spec import format_validation_error
    from orchestrator.submit import local_cluster as cl

    cfg = cl.load_config(config)
    overrides = {
        k: v
        for k, v in dict(name=name, num_cpus=num_cpus, port=port, dashboard_port=dashboard_port, storage=storage).items()
        if v is not None
    }
    try:
        cfg = cl.LocalClusterConfig.model_validate({**cfg.model_dump(), **overrides})
    except ValidationError as err:
        raise OrchestratorError("invalid option: " + "; ".join(format_validation_error(err))) from None
    with err_console.status(Text(f"starting local Ray cluster {cfg.name!r}")):  # a str status is read as markup
        st = cl.up(cfg)
    if as_json:
        _print(json.dumps(st.__dict__, indent=2) + "\n")
        return
    console.print(
        Text.assemble(
            "local Ray cluster ", (st.name, "bold"), f" is up: {st.num_cpus} CPUs, Ray {st.ray_version}, token authentication on\n"
        ),
        f"  dashboard:  {st.dashboard_url}\n"
        f"  Jobs API:   {st.dashboard_url}    orchestrator submit SPEC --address {st.dashboard_url}\n"
        f"  GCS:        {st.gcs_address}    orchestrator run SPEC --address {st.gcs_address} (with RAY_AUTH_MODE=token, RAY_AUTH_TOKEN_PATH={st.token_file})\n"
        f"  token:      {st.token_file}\n"
        f"  stop it:    orchestrator cluster local down --name {st.name}",
        highlight=False,
        soft_wrap=True,
        sep="",
    )


@local_app.command("down")
@friendly
def local_down(
    name: Optional[str] = typer.Option(None, "--name", help="Cluster name (default: the config's, else 'local').", show_default=False),
    config: Optional[Path] = typer.Option(None, "--config", "-c", help=_CONFIG_HELP, show_default=False),
    grace_period: float = typer.Option(10.0, "--grace-period", help="Seconds the raylet and its workers get to exit before SIGKILL."),
    keep_logs: bool = typer.Option(False, "--keep-logs", help="Keep Ray's temp dir (session logs)."),
) -> None:
    """Stop this cluster's processes only (never other Ray instances on the machine)."""
    from orchestrator.submit import local_cluster as cl

    cluster = _cluster_name(name, config)
    res = cl.down(cluster, grace_s=grace_period, keep_logs=keep_logs)
    if res.found:
        console.print(
            f"local Ray cluster {cluster!r} stopped ({res.found} processes" + (f", {res.killed} with SIGKILL)" if res.killed else ")"),
            highlight=False,
        )
    else:
        console.print(f"local Ray cluster {cluster!r} was not running; state removed", highlight=False)


@local_app.command("status")
@friendly
def local_status(
    name: Optional[str] = typer.Option(None, "--name", help="Cluster name (default: the config's, else 'local').", show_default=False),
    config: Optional[Path] = typer.Option(None, "--config", "-c", help=_CONFIG_HELP, show_default=False),
    as_json: bool = typer.Option(False, "--json", help="Print JSON."),
) -> None:
    """Is the cluster up? Its addresses, nodes, CPUs and jobs. Exit 1 when it is down."""
    from orchestrator.submit import local_cluster as cl

    info = cl.status(_cluster_name(name, config))
    if as_json:
        _print(json.dumps(info, indent=2) + "\n")
    elif info["up"]:
        jobs = ", ".join(f"{v} {k.lower()}" for k, v in info["jobs"].items() if v) or "none"
        console.print(
            Text.assemble(
                "local Ray cluster ",
                (info["name"], "bold"),
                ": ",
                ("up", "green"),
                f" ({info['processes']} processes, {info['nodes']} node(s), {info['cpus']:g} CPUs)\n",
            ),
            f"  dashboard / Jobs API: {info['dashboard_url']}\n  GCS: {info['gcs_address']}\n  token: {info['token_file']}\n  jobs: {jobs}",
            highlight=False,
            soft_wrap=True,
            sep="",
        )
    else:
        console.print(
            Text.assemble("local Ray cluster ", (info["name"], "bold"), ": ", ("down", "red"), f" ({info['reason']})"),
            highlight=False,
            soft_wrap=True,
        )
    if not info["up"]:
        raise typer.Exit(1)


def _targets_yaml(targets: list[tuple[str, str, str, str]]) -> str:
    from orchestrator.k8s.render import to_yaml

    return to_yaml([{"apiVersion": api, "kind": kind, "metadata": {"name": name, "namespace": ns}} for api, kind, name, ns in targets])


# ------------------------------------------------------------------------------- cluster up


@cluster_k8s_app.command()
@friendly
@kube_options
def up(
    spec_path: Optional[Path] = typer.Argument(
        None, metavar="SPEC", help="Size the cluster for this job spec's scaling section (default: 2 CPU workers)."
    ),
    name: Optional[str] = typer.Option(None, "--name", help=f"RayCluster name (default: the spec's name, else {DEFAULT_CLUSTER_NAME!r})."),
    storage_pvc: Optional[str] = opt_storage_pvc(),
    image: Optional[str] = opt_image(),
    gpu_image: Optional[str] = opt_gpu_image(),
    dry_run: bool = opt_dry_run(),
    *,
    kube: KubeAPI,
) -> None:
    """Create an autoscaling RayCluster (and its NetworkPolicy)."""
    from orchestrator.k8s.render import concurrent_trials, render_raycluster
    from orchestrator.spec import ScalingSpec, load_spec

    if spec_path is not None:
        spec = load_spec(spec_path)
        base, scaling, trials = spec.name, spec.scaling, concurrent_trials(spec)
    else:
        base, scaling, trials = DEFAULT_CLUSTER_NAME, ScalingSpec(), 1
    namespace = kube.namespace
    opts = render_options(namespace=namespace, storage_pvc=storage_pvc, image=image, gpu_image=gpu_image, name=name)
    rendered = render_raycluster(base, scaling, opts, trials=trials)
    warn_each(rendered.warnings)
    cluster = rendered.main
    cname = cluster["metadata"]["name"]
    if dry_run:
        echo_out(rendered.yaml() + ownership_note(rendered.objects))
        return

    from orchestrator.k8s import client as kc

    conn = kube.connect()
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
@kube_options
def down(
    name: str = typer.Argument(DEFAULT_CLUSTER_NAME, help="RayCluster name."),
    dry_run: bool = opt_dry_run("Print the objects that would be deleted, as YAML, and contact nothing."),
    *,
    kube: KubeAPI,
) -> None:
    """Delete a RayCluster and its NetworkPolicy."""
    from orchestrator.k8s.render import RAY_API_VERSION

    namespace = kube.namespace
    check_namespace(namespace)
    targets = [
        (RAY_API_VERSION, "RayCluster", name, namespace),
        ("networking.k8s.io/v1", "NetworkPolicy", f"{name}-ray-ingress", namespace),
    ]
    if dry_run:
        echo_out("# would delete:\n" + _targets_yaml(targets))
        return

    from orchestrator.k8s import client as kc

    conn = kube.connect()
    deleted = [f"{kind} {obj_name}" for _, kind, obj_name, ns in targets if kc.delete(conn, kind, ns, obj_name)]
    if not deleted:
        typer.echo(f"nothing to delete: no RayCluster {name} in namespace {namespace}")
        return
    typer.echo(f"deleted {', '.join(deleted)} in namespace {namespace}")


# --------------------------------------------------------------------------- cluster status


@cluster_k8s_app.command()
@friendly
@kube_options
def status(
    name: Optional[str] = typer.Argument(None, help="RayCluster name (default: list the namespace's RayClusters)."),
    dry_run: bool = opt_dry_run("Print the API request that would be made and contact nothing."),
    *,
    kube: KubeAPI,
) -> None:
    """Show a RayCluster's state, workers and resources, or list the RayClusters of a namespace."""
    from orchestrator.k8s import client as kc

    namespace = kube.namespace
    check_namespace(namespace)
    path = f"/apis/{kc.RAY_GROUP}/{kc.RAY_API_VERSION}/namespaces/{namespace}/rayclusters" + (f"/{name}" if name else "")
    if dry_run:
        typer.echo(f"GET {path}")
        return
    conn = kube.connect()
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
@kube_options
def scale(
    name: str = typer.Argument(DEFAULT_CLUSTER_NAME, help="RayCluster name."),
    workers: int = typer.Option(..., "--workers", "-w", min=0, help="Worker pods wanted in the group."),
    group: Optional[str] = typer.Option(None, "--group", help="Worker group (default: the only one)."),
    min_workers: Optional[int] = typer.Option(None, "--min", min=0, help="New minReplicas (default: lowered to --workers if needed)."),
    max_workers: Optional[int] = typer.Option(None, "--max", min=0, help="New maxReplicas (default: raised to --workers if needed)."),
    dry_run: bool = opt_dry_run("Read the RayCluster, print the JSON patch that would be sent, change nothing."),
    *,
    kube: KubeAPI,
) -> None:
    """Set a worker group's replicas (with autoscaling on, the autoscaler keeps adjusting between its min and max)."""
    from orchestrator.k8s import client as kc
    from orchestrator.k8s.render import scale_patch, to_yaml

    namespace = kube.namespace
    check_namespace(namespace)
    conn = kube.connect()
    try:
        obj = kc.get(conn, "RayCluster", namespace, name)
    except kc.NotFound:
        raise kc.K8sError(f"no RayCluster {name} in namespace {namespace}") from None
    ops = scale_patch(obj, workers, group=group, min_replicas=min_workers, max_replicas=max_workers)
    if dry_run:
        echo_out(f"# JSON patch (application/json-patch+json) for RayCluster {name} in namespace {namespace}:\n" + to_yaml([ops]))
        return
    kc.patch(conn, "RayCluster", namespace, name, ops, json_patch=True)
    group_name, lo, hi = ops[0]["value"], ops[1]["value"], ops[2]["value"]
    typer.echo(f"scaled RayCluster {name} group {group_name} to {workers} workers (min {lo}, max {hi})")
    if obj.get("spec", {}).get("enableInTreeAutoscaling") and lo < workers:
        typer.echo(f"  note: autoscaling is on; idle workers above --min {lo} are removed again")
