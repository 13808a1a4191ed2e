"""`orchestrator submit` (to a Ray cluster's Jobs API, or with --k8s as a KubeRay RayJob) and
`orchestrator jobs list|status|logs|stop`. Wired into the main app by `register`."""

from __future__ import annotations

import json
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import typer

from orchestrator.cli.backends import Backend, SubmitRequest
from orchestrator.cli.common import (
    command_group,
    err_console,
    friendly,
    opt_context,
    opt_gpu_image,
    opt_image,
    opt_kubeconfig,
    opt_namespace,
    opt_storage_pvc,
    option_group,
)
from orchestrator.errors import INTERRUPTED_EXIT, OrchestratorError

jobs_app = command_group("Jobs on a Ray cluster, through its Jobs API: list, status, logs, stop.")


def register(app: typer.Typer) -> None:
    """Add `submit` and `jobs` to the main app (once)."""
    if any(c.name == "submit" for c in app.registered_commands):
        return
    app.command("submit")(submit)
    app.add_typer(jobs_app, name="jobs")


# ----------------------------------------------------------------------------------- options


@dataclass(frozen=True)
class JobsAPI:
    """Which cluster's Jobs API, and how to reach it: the options of `submit` and every `jobs` command."""

    address: Optional[str] = typer.Option(
        None,
        "--address",
        "-a",
        show_default=False,
        help="Jobs API of the cluster, http(s)://HEAD:8265 (default: RAY_API_SERVER_ADDRESS, an http RAY_ADDRESS, "
        "or the one local cluster that is up).",
    )
    token_env: Optional[str] = typer.Option(
        None,
        "--token-env",
        metavar="VAR",
        show_default=False,
        help="Environment variable holding the cluster's token (default: RAY_AUTH_TOKEN, RAY_AUTH_TOKEN_PATH, "
        "the local cluster's token file, ~/.ray/auth_token).",
    )
    insecure: bool = typer.Option(False, "--insecure", help="Allow plain http to a non-loopback address without a token.")

    def client(self, address: Optional[str] = None):
        """A JobsClient of `address` (default: --address, resolved), after probing it."""
        from orchestrator.submit.client import JobsClient

        return JobsClient(address or self.address, token_env=self.token_env, insecure=self.insecure, warn=lambda m: _info(f"warning: {m}"))


jobs_api_options = option_group("api", JobsAPI)
AS_JSON = typer.Option(False, "--json", help="Print JSON.")
JOB_ID = typer.Argument(..., metavar="ID", help="Submission id.")


def _info(line: str) -> None:
    err_console.print(line, highlight=False, soft_wrap=True, markup=False)


def _out(text: str) -> None:
    sys.stdout.write(text)
    sys.stdout.flush()


def _finish(client, view) -> None:
    """The final lines after following a job, and its exit code."""
    from orchestrator.submit.client import exit_code

    _info(
        f"job {view.submission_id}: {view.status}"
        + (f" (exit code {view.driver_exit_code})" if view.status == "FAILED" and view.driver_exit_code else "")
    )
    if view.run_dir:
        _info(f"run directory: {view.run_dir}")
    code = exit_code(view)
    if code:
        raise typer.Exit(code)


def _follow(client, job_id: str) -> None:
    try:
        view = client.follow(job_id, _out)
    except KeyboardInterrupt:
        _info(f"stopped following; job {job_id} keeps running (`orchestrator jobs stop {job_id} --address {client.address}` stops it)")
        raise typer.Exit(INTERRUPTED_EXIT) from None
    if view.status not in ("SUCCEEDED", "FAILED", "STOPPED"):
        _info(f"the log stream ended while job {job_id} is {view.status}; `orchestrator jobs logs {job_id} --follow` picks it up again")
        raise typer.Exit(1)
    _finish(client, view)


# ------------------------------------------------------------------------------------ submit


@friendly
@jobs_api_options
def submit(
    spec_path: Path = typer.Argument(..., metavar="SPEC", help="Job spec YAML."),
    follow: Optional[bool] = typer.Option(
        None,
        "--follow/--no-follow",
        show_default=False,
        help="Stream the job's logs until it ends and exit with its outcome (default: off; on with --k8s).",
    ),
    storage: Optional[str] = typer.Option(
        None,
        "--storage",
        show_default=False,
        help="Folder on the cluster (shared by its nodes) for the run directory; default: the spec's output.dir "
        "if absolute, else the local cluster's storage or, for a cluster on this machine, output.dir here.",
    ),
    dry_run: bool = typer.Option(False, "--dry-run", help="Print what would be sent and contact nothing."),
    k8s: bool = typer.Option(False, "--k8s", help="Run it as a KubeRay RayJob on Kubernetes instead (docs/kubernetes.md)."),
    namespace: str = opt_namespace(),
    kubeconfig: Optional[str] = opt_kubeconfig(),
    context: Optional[str] = opt_context(),
    storage_pvc: Optional[str] = opt_storage_pvc(),
    image: Optional[str] = opt_image(),
    gpu_image: Optional[str] = opt_gpu_image(),
    *,
    api: JobsAPI,
) -> None:
    """Submit SPEC to a Ray cluster through its Jobs API; prints the submission id.

    The job runs `orchestrator run` on the cluster with the spec and the Python code next to it.
    """
    from orchestrator.cli import backends

    options = dict(
        storage=storage,
        namespace=namespace,
        kubeconfig=kubeconfig,
        context=context,
        storage_pvc=storage_pvc,
        image=image,
        gpu_image=gpu_image,
        address=api.address,
        token_env=api.token_env,
        insecure=api.insecure,
        api=api,
    )
    backend = backends.get("k8s" if k8s else backends.default())
    backend.submit(SubmitRequest(spec_path=spec_path, dry_run=dry_run, follow=follow, options=options))


def submit_jobs_api(request: SubmitRequest) -> None:
    """The `ray-jobs` backend: the spec, its data and code to a Ray cluster's Jobs API (submit/)."""
    from orchestrator.submit.plan import plan_submission, resolve_address

    if request.given("kubeconfig", "context"):
        raise OrchestratorError("--kubeconfig and --context apply to --k8s only")
    api: JobsAPI = request.options["api"]
    target = resolve_address(api.address)
    plan = plan_submission(request.spec_path, address=target, storage=request.options.get("storage"))  # an invalid spec fails first
    if request.dry_run:
        _out(plan.describe() + "\n")
        return
    client = api.client(target)
    for note in plan.notes:
        _info(f"note: {note}")
    job_id = client.submit(plan)
    _out(job_id + "\n")
    _info(f"submitted to {client.address} (Ray {client.ray_version}); run directory {plan.run_dir}")
    if request.follow:
        _follow(client, job_id)
        return
    _info(
        f"follow: orchestrator jobs logs {job_id} --follow --address {client.address}\n"
        f"stop:   orchestrator jobs stop {job_id} --address {client.address}"
    )


# -------------------------------------------------------------------------------------- jobs


def _when(t: Optional[float]) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(t)) if t else "-"


@jobs_app.command("list")
@friendly
@jobs_api_options
def jobs_list(as_json: bool = AS_JSON, *, api: JobsAPI) -> None:
    """Jobs submitted to the cluster, oldest first."""
    client = api.client()
    jobs = [j for j in client.list() if j.submission_id]
    if as_json:
        _out(json.dumps([j.__dict__ for j in jobs], indent=2) + "\n")
        return
    if not jobs:
        _info(f"no jobs at {client.address}")
        return
    # plain columns, never truncated: ids are meant to be copied
    rows = [("SUBMISSION ID", "STATUS", "SPEC", "STARTED", "ENDED")]
    rows += [(j.submission_id, j.status, j.spec_name or "-", _when(j.start_time), _when(j.end_time)) for j in jobs]
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    _out("".join("  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip() + "\n" for r in rows))


@jobs_app.command("status")
@friendly
@jobs_api_options
def jobs_status(job_id: str = JOB_ID, as_json: bool = AS_JSON, *, api: JobsAPI) -> None:
    """Status of one job, and the run directory it was told to create."""
    view = api.client().job(job_id)
    run_dir = view.run_dir or None  # none for a job submitted otherwise than by `orchestrator submit`
    if as_json:
        _out(json.dumps({**view.__dict__, "run_dir": run_dir}, indent=2) + "\n")
        return
    lines = [
        f"{view.submission_id}: {view.status}",
        f"  entrypoint: {view.entrypoint}",
        f"  started:    {_when(view.start_time)}",
        f"  ended:      {_when(view.end_time)}",
    ]
    if view.driver_exit_code is not None:
        lines.append(f"  exit code:  {view.driver_exit_code}")
    if run_dir:
        lines.append(f"  run dir:    {run_dir}")
    if view.message and view.status != "FAILED":
        lines.append(f"  message:    {view.message}")
    elif view.message:
        lines.append("  message:    " + view.message.splitlines()[0])
    _out("\n".join(lines) + "\n")


@jobs_app.command("logs")
@friendly
@jobs_api_options
def jobs_logs(
    job_id: str = JOB_ID,
    follow: bool = typer.Option(False, "--follow", "-f", help="Keep streaming until the job ends; exit with its outcome."),
    *,
    api: JobsAPI,
) -> None:
    """The job's driver output (what `orchestrator run` printed on the cluster)."""
    client = api.client()
    if follow:
        _follow(client, job_id)
    else:
        _out(client.logs(job_id))


@jobs_app.command("stop")
@friendly
@jobs_api_options
def jobs_stop(
    job_id: str = JOB_ID,
    wait: bool = typer.Option(True, "--wait/--no-wait", help="Wait until the job has stopped."),
    *,
    api: JobsAPI,
) -> None:
    """Stop a pending or running job (its driver gets SIGTERM, then SIGKILL)."""
    client = api.client()
    if not client.stop(job_id):
        view = client.job(job_id)
        _out(f"{job_id}: already finished ({view.status})\n")
        return
    if not wait:
        _out(f"{job_id}: stop requested\n")
        return
    view = client.wait(job_id, timeout=60)
    _out(f"{job_id}: {view.status}\n")
    if view.status not in ("STOPPED", "SUCCEEDED", "FAILED"):
        raise OrchestratorError(f"job {job_id} is still {view.status} 60 s after the stop request")


BACKEND = Backend("ray-jobs", submit_jobs_api)  # cli/backends.py
