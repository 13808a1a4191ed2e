"""Serving faults through the real CLI and a real Serve: corrupt checkpoints, failed deployments, the token."""

from __future__ import annotations

import os
import sys
import time

import httpx
import psutil
import pytest

from tests.conftest import run_cli
from tests.serve_support import free_port, make_checkpoint, make_run_dir, serving_until_ctrl_c
from tests.test_serve_app import corrupt_copy
from tests.waiting import wait_for

TOKEN_ENV = "ORCHESTRATOR_FAULTS_TOKEN"
TOKEN = "faults-token-8d41c2e9b7"  # unique enough to find anywhere it leaks


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    return make_checkpoint(tmp_path_factory.mktemp("faults") / "ckpt")[0]


@pytest.mark.parametrize("case", ["truncated state.pt", "tampered state.pt", "truncated model.json", "broken preprocessing.json"])
def test_serve_refuses_a_corrupt_checkpoint_before_deploying(checkpoint, tmp_path, case):
    """`orchestrator serve` names the file and the cause and exits 2; no Ray is started for it."""
    d, name = corrupt_copy(checkpoint, tmp_path / "ckpt", case)
    t0 = time.monotonic()
    result = run_cli("serve", str(d), "--port", str(free_port()), timeout=120)
    assert result.returncode == 2, result.stdout + result.stderr
    assert str(d / name) in " ".join(result.stderr.split()), result.stderr  # rich may wrap the path
    assert "Traceback" not in result.stdout + result.stderr
    assert time.monotonic() - t0 < 60  # it failed in the driver, without starting Ray and Serve


@pytest.mark.ray
def test_a_failed_deployment_is_named_and_removed(ray_session, checkpoint, tmp_path, monkeypatch):
    """Should a replica fail where the driver's check passed (a URI checkpoint, a file changed meanwhile):
    the replica's own error is reported and no failed application is left running."""
    from ray import serve

    from orchestrator.errors import OrchestratorError
    from orchestrator.serve import deployment as serving
    from orchestrator.spec import ServeSpec

    d, _ = corrupt_copy(checkpoint, tmp_path / "ckpt", "truncated state.pt")
    monkeypatch.setattr(serving, "_validate_checkpoint", lambda path: None)  # as for a URI: only the replicas load it
    with pytest.raises(OrchestratorError) as err:
        serving.deploy(d, ServeSpec(port=free_port(), cpus_per_replica=0.25), name="faults-broken")
    assert str(d / "state.pt") in str(err.value) and "Failed to update the deployments" not in str(err.value), str(err.value)
    try:
        apps = serve.status().applications
    except Exception:  # Serve was shut down: nothing left either
        apps = {}
    assert "faults-broken" not in apps


def _ray_processes(root: psutil.Process) -> list[psutil.Process]:
    return [p for p in root.children(recursive=True) if p.is_running()]


def _title(p: psutil.Process) -> str:
    try:
        return " ".join(p.cmdline())
    except psutil.Error:  # ended meanwhile
        return ""


@pytest.mark.ray
def test_the_serve_token_is_in_no_ray_process_environment(checkpoint, tmp_path):
    """The token stays in the CLI's own process: every Ray process it starts (GCS, raylet, dashboard,
    agents, Serve controller, proxy, replica) has an environment without it; auth still works."""
    port = free_port()
    run = make_run_dir(tmp_path, checkpoint, serve={"port": port, "auth_token_env": TOKEN_ENV, "cpus_per_replica": 0.25})
    exe = os.path.join(os.path.dirname(sys.executable), "orchestrator")
    with serving_until_ctrl_c([exe, "serve", str(run)], port, 240, env={**os.environ, TOKEN_ENV: TOKEN}) as (proc, lines):
        url = f"http://127.0.0.1:{port}"
        assert httpx.get(f"{url}/metadata").status_code == 401
        assert httpx.get(f"{url}/metadata", headers={"Authorization": f"Bearer {TOKEN}"}).status_code == 200
        parts = ("gcs_server", "raylet", "dashboard", "ServeController", "ProxyActor", "ServeReplica")

        def every_part():
            children = _ray_processes(psutil.Process(proc.pid))
            titles = " ".join(_title(p) for p in children)
            return children if all(part in titles for part in parts) else None

        children = wait_for(every_part, 30, f"the server's processes: {', '.join(parts)}")
        leaks = []
        for p in children:
            try:
                env = p.environ()
            except psutil.NoSuchProcess:
                continue
            if TOKEN_ENV in env or any(TOKEN in v for v in env.values()) or TOKEN in " ".join(p.cmdline()):
                leaks.append(" ".join(p.cmdline())[:120])
        assert not leaks, f"the token is in the environment of {len(leaks)} of {len(children)} Ray processes: {leaks}"
        assert TOKEN not in "".join(lines)
