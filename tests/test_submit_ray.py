"""Job submission against a real `ray start --head` on 127.0.0.1 with token authentication, all
through the CLI: `cluster local up/status/down`, `submit`, `jobs list/status/logs/stop`."""

from __future__ import annotations

import json
import os
import secrets
import stat
import time
from pathlib import Path

import pytest

from orchestrator.submit.local_cluster import (
    ClusterState,
    cluster_processes,
    list_processes,
)
from tests.jobs_support import custom_spec, orch, small_digits_spec
from tests.leaks import SERVE_TOKEN_ENV, files_holding, processes_holding

pytestmark = pytest.mark.ray


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    """A local cluster started by `orchestrator cluster local up` (2 CPUs, free ports), stopped at the end."""
    home = tmp_path_factory.mktemp("orchestrator-home")
    t0 = time.monotonic()
    r = orch(
        "cluster",
        "local",
        "up",
        "--name",
        "jobs-test",
        "--num-cpus",
        "2",
        "--port",
        "0",
        "--dashboard-port",
        "0",
        "--json",
        home=home,
        timeout=180,
    )
    assert r.returncode == 0, r.stdout + r.stderr
    state = ClusterState(**json.loads(r.stdout))
    print(f"cluster up in {time.monotonic() - t0:.1f} s")
    yield {"home": home, "state": state, "url": state.dashboard_url}
    r = orch("cluster", "local", "down", "--name", "jobs-test", home=home, timeout=120)
    assert r.returncode == 0, r.stdout + r.stderr
    assert not cluster_processes(state), "processes of the cluster survived `down`"


def _wait_status(cluster, job_id: str, wanted: tuple[str, ...], timeout: float) -> dict:
    deadline = time.monotonic() + timeout
    while True:
        r = orch("jobs", "status", job_id, "--address", cluster["url"], "--json", home=cluster["home"])
        assert r.returncode == 0, r.stderr
        info = json.loads(r.stdout)
        if info["status"] in wanted or time.monotonic() > deadline:
            return info
        time.sleep(1)


def test_up_prints_addresses_and_keeps_the_token_private(cluster):
    st: ClusterState = cluster["state"]
    assert st.dashboard_url.startswith("http://127.0.0.1:")
    assert stat.S_IMODE(os.stat(st.token_file).st_mode) == 0o600
    r = orch("cluster", "local", "status", "--name", "jobs-test", "--json", home=cluster["home"])
    assert r.returncode == 0, r.stderr
    info = json.loads(r.stdout)
    assert info["up"] and info["nodes"] == 1 and info["cpus"] == 2
    r = orch("cluster", "local", "status", "--name", "jobs-test", home=cluster["home"])
    assert st.dashboard_url in r.stdout and "up" in r.stdout
    again = orch("cluster", "local", "up", "--name", "jobs-test", "--port", "0", "--dashboard-port", "0", home=cluster["home"])
    assert again.returncode == 1 and "already up" in again.stderr and "Traceback" not in again.stderr


def test_submit_a_custom_model_from_another_folder_and_follow_to_succeeded(cluster, tmp_path):
    """Submit, follow to SUCCEEDED, then read the job back. The spec's model.factory module sits
    beside it, not in the folder we submit from: it travels with the job, and the job's driver
    rebuilds the winner from it. With a serve token in the submitter's environment, neither it nor
    the cluster's Ray token reaches the job's metadata, its logs, its run directory or the
    cluster's processes and files."""
    from ray.job_submission import JobSubmissionClient

    state: ClusterState = cluster["state"]
    tokens = {"serve token": "serve-" + secrets.token_hex(24), "Ray token": state.token()}
    spec = custom_spec(tmp_path / "project", None, "mymodels_job", workers=2)  # data made by data.prepare on the cluster
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    t0 = time.monotonic()
    # relative output.dir ("runs") on a cluster on this machine: under the directory we submit from
    r = orch(
        "submit",
        str(spec),
        "--address",
        cluster["url"],
        "--follow",
        home=cluster["home"],
        cwd=elsewhere,
        timeout=400,
        env={SERVE_TOKEN_ENV: tokens["serve token"]},
    )
    took = time.monotonic() - t0
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    job_id = r.stdout.splitlines()[0]
    assert job_id.startswith("breast-cancer-mlp-")
    assert "epoch   2" in r.stdout  # the driver's output, streamed
    assert f"job {job_id}: SUCCEEDED" in r.stderr
    run_dir = Path(r.stderr.split("run directory: ")[1].splitlines()[0])
    assert run_dir == elsewhere / "runs" / job_id  # named by the submitter (`run --run-name`), read from the job's metadata
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert [m["epoch"] for m in metrics] == [1, 2] and all(m["world_size"] == 2 for m in metrics)
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["status"] == "succeeded" and summary["test"]["test_accuracy"] > 0.5, summary
    assert json.loads((run_dir / "best_checkpoint" / "model.json").read_text())["model"]["arch"] == "custom"
    print(f"custom-model job submitted and followed to SUCCEEDED in {took:.1f} s")

    info = json.loads(orch("jobs", "status", job_id, "--address", cluster["url"], "--json", home=cluster["home"]).stdout)
    assert info["status"] == "SUCCEEDED" and info["run_dir"] == str(run_dir) and info["driver_exit_code"] == 0
    listed = json.loads(orch("jobs", "list", "--address", cluster["url"], "--json", home=cluster["home"]).stdout)
    assert job_id in [j["submission_id"] for j in listed]
    logs = orch("jobs", "logs", job_id, "--address", cluster["url"], home=cluster["home"])
    assert logs.returncode == 0 and f"run {run_dir}" in logs.stdout

    leaks = [f"{name} in the output of submit" for name, tok in tokens.items() if tok in r.stdout + r.stderr]
    client = JobSubmissionClient(state.dashboard_url, headers={"Authorization": f"Bearer {state.token()}"})
    info = client.get_job_info(job_id)
    record = json.dumps(
        {"info": {k: getattr(info, k) for k in ("entrypoint", "metadata", "runtime_env", "message")}, "logs": client.get_job_logs(job_id)},
        default=str,
    )
    leaks += [f"{name} in the job's metadata or logs" for name, tok in tokens.items() if tok in record]
    leaks += processes_holding(tokens, cluster_processes(state))
    leaks += files_holding(tokens, run_dir, Path(state.temp_dir))
    assert not leaks, "\n".join(leaks)


def test_stop_a_running_job(cluster, tmp_path):
    spec = small_digits_spec(tmp_path / "job", train={"epochs": 200})
    r = orch("submit", str(spec), "--address", cluster["url"], "--storage", str(tmp_path / "store"), home=cluster["home"])
    assert r.returncode == 0, r.stderr
    job_id = r.stdout.strip()
    info = _wait_status(cluster, job_id, ("RUNNING", "SUCCEEDED", "FAILED", "STOPPED"), timeout=120)
    assert info["status"] == "RUNNING", info
    r = orch("jobs", "stop", job_id, "--address", cluster["url"], home=cluster["home"])
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == f"{job_id}: STOPPED"
    info = _wait_status(cluster, job_id, ("STOPPED",), timeout=10)
    assert info["status"] == "STOPPED"
    again = orch("jobs", "stop", job_id, "--address", cluster["url"], home=cluster["home"])
    assert "already finished (STOPPED)" in again.stdout


def test_missing_token_gives_the_documented_error(cluster, tmp_path):
    # no RAY_AUTH_TOKEN*, no ~/.ray/auth_token, and a registry without this cluster: nothing to send
    env = {"HOME": str(tmp_path)}
    for args in (["jobs", "list"], ["submit", str(small_digits_spec(tmp_path / "job"))]):
        r = orch(*args, "--address", cluster["url"], home=tmp_path / "other-home", env=env)
        assert r.returncode == 1
        assert r.stderr.strip() == (
            f"error: the cluster at {cluster['url']} requires a token: set RAY_AUTH_TOKEN (or RAY_AUTH_TOKEN_PATH, or pass "
            f"--token-env VAR); a cluster started with `orchestrator cluster local up` keeps it in {tmp_path / 'other-home'}/clusters/<name>/auth_token"
        )


def test_wrong_token_gives_the_documented_error(cluster):
    r = orch("jobs", "list", "--address", cluster["url"], home=cluster["home"], env={"RAY_AUTH_TOKEN": "not-the-token"})
    assert r.returncode == 1
    assert r.stderr.strip() == (
        f"error: the token was rejected by {cluster['url']} (token from $RAY_AUTH_TOKEN); check that it is this cluster's token"
    )
    r = orch(
        "jobs",
        "list",
        "--address",
        cluster["url"],
        "--token-env",
        "MY_TOKEN",
        home=cluster["home"],
        env={"MY_TOKEN": cluster["state"].token()},
    )
    assert r.returncode == 0, r.stderr


def test_down_stops_only_its_own_cluster(cluster, ray_session, tmp_path):
    """A second local cluster goes down; the module's cluster and the test session's embedded Ray live on."""
    other = orch(
        "cluster",
        "local",
        "up",
        "--name",
        "other",
        "--num-cpus",
        "1",
        "--port",
        "0",
        "--dashboard-port",
        "0",
        "--json",
        home=cluster["home"],
        timeout=180,
    )
    assert other.returncode == 0, other.stderr
    other_state = ClusterState(**json.loads(other.stdout))
    other_pids = cluster_processes(other_state)
    mine = cluster_processes(cluster["state"])
    assert other_pids and mine and not set(other_pids) & set(mine)

    r = orch("cluster", "local", "down", "--name", "other", home=cluster["home"], timeout=120)
    assert r.returncode == 0 and "stopped" in r.stdout, r.stderr
    procs = list_processes()
    alive = {pid for pid, p in procs.items() if not p.zombie}
    assert not set(other_pids) & alive
    assert set(mine) <= alive, "down stopped processes of another cluster"
    status = orch("cluster", "local", "status", "--name", "jobs-test", "--json", home=cluster["home"])
    assert json.loads(status.stdout)["up"]

    @ray_session.remote(num_cpus=0)
    def ping():
        return "pong"

    assert ray_session.get(ping.remote(), timeout=60) == "pong"
    down_again = orch("cluster", "local", "status", "--name", "other", home=cluster["home"])
    assert down_again.returncode == 1 and "down" in down_again.stdout
