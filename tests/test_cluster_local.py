"""The local cluster without starting Ray: config validation, which processes belong to a cluster,
state lookup by address, and CLI errors that stop before `ray start`."""

from __future__ import annotations

import json
import socket
from pathlib import Path

import pytest

from orchestrator.errors import OrchestratorError
from orchestrator.processes import Proc, list_processes
from orchestrator.submit import local_cluster as cl
from tests.conftest import ROOT
from tests.jobs_support import invoker


@pytest.fixture(autouse=True)
def _home(monkeypatch, tmp_path):
    monkeypatch.setenv("ORCHESTRATOR_HOME", str(tmp_path / "home"))


@pytest.fixture
def invoke():
    return invoker()


def test_example_config_is_valid():
    cfg = cl.load_config(ROOT / "cluster" / "local.yaml")
    assert (cfg.name, cfg.num_cpus, cfg.port, cfg.dashboard_port) == ("local", 2, 6390, 8275)


@pytest.mark.parametrize(
    "text, problem",
    [
        ("num_cpu: 2", "num_cpu: unknown field"),
        ("port: 12000", "port: 12000 is inside Ray's worker port range"),
        ("storage: runs", "storage: must be an absolute path"),
        ("name: Bad_Name", "name: String should match pattern"),
        ("- a list", "expected a mapping"),
    ],
)
def test_config_errors_name_the_field(tmp_path, text, problem):
    path = tmp_path / "c.yaml"
    path.write_text(text)
    with pytest.raises(OrchestratorError) as e:
        cl.load_config(path)
    assert problem in str(e.value)


def test_up_with_a_bad_config_stops_before_starting_ray(invoke, tmp_path):
    bad = tmp_path / "c.yaml"
    bad.write_text("name: x\nnum_cpu: 2\n")
    res = invoke("cluster", "local", "up", "--config", str(bad))
    assert res.exit_code == 1 and "num_cpu: unknown field" in res.output and "Traceback" not in res.output
    assert not (tmp_path / "home" / "clusters" / "x").exists()


def test_up_refuses_a_busy_port(invoke):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        port = s.getsockname()[1]
        res = invoke("cluster", "local", "up", "--name", "busy", "--port", "0", "--dashboard-port", str(port))
    assert res.exit_code == 1
    assert f"port {port} (dashboard) is in use" in res.output and "--dashboard-port" in res.output
    assert cl.read_state("busy") is None


def test_status_and_down_of_an_unknown_cluster(invoke):
    res = invoke("cluster", "local", "status", "--name", "nope")
    assert res.exit_code == 1 and "down" in res.output
    res = invoke("cluster", "local", "down", "--name", "nope")
    assert res.exit_code == 1 and "no local cluster named 'nope'" in res.output


def _state(name="c1", temp="/tmp/orch-ray-aaa", marker="m1", port=8300) -> cl.ClusterState:
    folder = cl.state_dir(name)
    folder.mkdir(parents=True, exist_ok=True)
    st = cl.ClusterState(
        name=name,
        state_dir=str(folder),
        temp_dir=temp,
        marker=marker,
        dashboard_url=f"http://127.0.0.1:{port}",
        gcs_address="10.0.0.1:6390",
        token_file=str(folder / "auth_token"),
        num_cpus=2,
        storage=None,
        ports={"dashboard": port, "gcs": 6390},
    )
    st.save()
    return st


def test_cluster_processes_are_its_own_and_their_descendants_only():
    st = _state()
    env = {"PATH": "/bin", cl.MARKER_ENV: "m1"}
    procs = {
        p.pid: p
        for p in [
            Proc(10, 1, "/x/ray/core/src/ray/gcs/gcs_server --log_dir=/tmp/orch-ray-aaa/session_1/logs", env, False),
            Proc(11, 1, "/x/raylet/raylet --session_dir=/tmp/orch-ray-aaa/session_1", {}, False),  # env unreadable: temp dir
            Proc(12, 11, "ray::IDLE", {}, False),  # a worker: descendant of the raylet
            Proc(13, 12, "orchestrator run job.yaml", {}, False),  # a job driver below it
            Proc(14, 1, "python -m ray.util.client.server --address=10.0.0.1:6390", env, False),  # marker only
            Proc(15, 11, "ray::IDLE", {}, True),  # zombie
            # another Ray on the same machine: other marker, other temp dir, its own workers
            Proc(20, 1, "/x/raylet/raylet --session_dir=/tmp/ray/session_9", {cl.MARKER_ENV: "m10"}, False),
            Proc(21, 20, "ray::IDLE", {}, False),
            Proc(22, 1, "/x/raylet/raylet --session_dir=/tmp/orch-ray-aaab/session_2", {}, False),  # temp dir prefix only
            Proc(23, 1, "tail -f /tmp/orch-ray-aaa/session_1/logs/raylet.out", {"PATH": "/bin"}, False),  # the user's, not Ray's
        ]
    }
    assert cl.cluster_processes(st, procs) == [10, 11, 12, 13, 14]


def test_cluster_for_address():
    st = _state(port=8301)
    for url in ("http://127.0.0.1:8301", "127.0.0.1:8301", "http://localhost:8301/"):
        assert cl.cluster_for_address(url).name == st.name
    for url in ("http://127.0.0.1:8302", "http://10.0.0.1:8301", "https://example.com:8301"):
        assert cl.cluster_for_address(url) is None


def test_ray_temp_dir_stays_short_enough_for_unix_sockets(tmp_path):
    deep = tmp_path / ("x" * 60) / "clusters" / "c"
    temp = cl._temp_dir(deep)
    assert len(str(temp)) <= cl.MAX_TEMP_DIR_CHARS + 10 and temp == cl._temp_dir(deep)
    assert cl._temp_dir(Path("/s/c")) == Path("/s/c/ray")


def test_token_file_is_private_and_kept(tmp_path):
    path = cl.ensure_token(tmp_path / "st")
    token = path.read_text().strip()
    assert len(token) == 64 and path.stat().st_mode & 0o777 == 0o600
    assert cl.ensure_token(tmp_path / "st").read_text().strip() == token


def test_state_round_trip_and_listing():
    st = _state(name="c2")
    assert cl.read_state("c2") == st
    assert [s.name for s in cl.known_clusters()] == ["c2"]
    (Path(st.state_dir) / "state.json").write_text("{not json")
    with pytest.raises(OrchestratorError, match="unreadable cluster state"):
        cl.read_state("c2")
    assert json.loads(json.dumps(cl.status("missing")))["up"] is False


def test_remote_example_is_a_valid_launcher_config_with_auth_on_and_no_public_dashboard():
    """cluster/remote-example.yaml is not runnable here (AWS); check it against Ray's schema and its security settings."""
    import jsonschema
    import yaml
    from ray.autoscaler._private.util import prepare_config, validate_config

    cfg = yaml.safe_load((ROOT / "cluster" / "remote-example.yaml").read_text())
    try:
        validate_config(prepare_config(cfg))  # what `ray up` does before it contacts the cloud
    except jsonschema.ValidationError as e:
        pytest.fail(f"remote-example.yaml does not match ray-schema.json: {e.message}")
    head, workers = " ".join(cfg["head_start_ray_commands"]), " ".join(cfg["worker_start_ray_commands"])
    assert "RAY_AUTH_MODE=token" in head and "RAY_AUTH_MODE=token" in workers
    assert "--dashboard-host=127.0.0.1" in head and "0.0.0.0" not in head
    rules = cfg["provider"]["security_group"]["IpPermissions"]
    assert [(r["FromPort"], r["ToPort"]) for r in rules] == [(22, 22)]
    assert all(ip["CidrIp"] != "0.0.0.0/0" for r in rules for ip in r["IpRanges"])
    assert any(dest.endswith("auth_token") for dest in cfg["file_mounts"])


def test_processes_of_this_machine_with_their_parent_command_line_and_environment(tmp_path):
    """processes.list_processes reads the real process table (psutil); a marked child is a cluster of its own and stops."""
    import os
    import subprocess
    import sys

    child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"], env={**os.environ, cl.MARKER_ENV: "m-child"})
    try:
        procs = list_processes()
        me, kid = procs[os.getpid()], procs[child.pid]
        assert me.ppid == os.getppid() and not me.zombie
        assert kid.ppid == os.getpid() and "time.sleep(60)" in kid.args and kid.environ[cl.MARKER_ENV] == "m-child"
        st = _state(name="c3", temp=str(tmp_path / "no-such-temp"), marker="m-child", port=8303)
        assert cl.cluster_processes(st) == [child.pid]
        assert cl.stop_cluster_processes(st, grace_s=10) == (1, 0)  # SIGTERM was enough
        assert child.wait(10) == -15
    finally:
        child.kill()
        child.wait()


def test_the_watchdog_counts_files_open_for_writing_only(tmp_path):
    import os

    from orchestrator import watchdog

    session = tmp_path / "session_1"
    (session / "logs").mkdir(parents=True)
    log = session / "logs" / "agent.log"
    log.write_text("x")
    with open(log) as reading:
        assert not watchdog._has_open_file_in(os.getpid(), [str(session)])  # a `tail -f` of a log
        with open(log, "a"):
            assert watchdog._has_open_file_in(os.getpid(), [str(session)])
            assert not watchdog._has_open_file_in(os.getpid(), [str(tmp_path / "session_2")])
        reading.read()
