"""The embedded Ray node: it dies with the command that started it (even by SIGKILL), and what it
listens on is loopback, apart from the listeners Ray cannot bind to loopback (docs/reliability.md)."""

from __future__ import annotations

import ipaddress
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import psutil
import pytest
import yaml

from tests.conftest import ROOT, spec_dict
from tests.serve_support import free_port, make_checkpoint
from tests.waiting import wait_for

SLEEPER = "import signal, sys, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); f = open(sys.argv[1], 'w') if len(sys.argv) > 1 else None; time.sleep(300)"
FAKE_NODE = """
import os, subprocess, sys, time
from orchestrator import watchdog

marker, _ = watchdog.start()
session, SLEEPER = sys.argv[1:3]
watchdog.watch_session(session)
py = sys.executable
# like the GCS: carries the marker; like the RuntimeEnvAgent: ignores SIGTERM
subprocess.Popen([py, "-c", SLEEPER], env={**os.environ, watchdog.MARKER_ENV: marker})
# like the agents once their raylet is gone: re-parented to PID 1, no marker, writing to the session folder
launcher = "import subprocess, sys; subprocess.Popen(sys.argv[1:], start_new_session=True)"
subprocess.run([py, "-c", launcher, py, "-c", SLEEPER, os.path.join(session, "agent.log")])
print("up", flush=True)
time.sleep(300)
"""


def test_watchdog_ends_the_node_of_a_killed_driver_and_nothing_else(tmp_path):
    """Without Ray: a stand-in driver starts the watchdog and three stand-in node processes; a
    `tail -f` of the session's log and an unmarked process must survive its SIGKILL."""
    session = tmp_path / "session"
    session.mkdir()
    (session / "agent.log").write_text("")
    bystanders = [subprocess.Popen(["tail", "-f", str(session / "agent.log")]), subprocess.Popen(["sleep", "300"])]
    driver = subprocess.Popen([sys.executable, "-c", FAKE_NODE, str(session), SLEEPER], cwd=ROOT, stdout=subprocess.PIPE, text=True)
    try:
        assert driver.stdout.readline() == "up\n"
        others = {driver.pid, *(b.pid for b in bystanders)}
        mine = lambda: [p for p in psutil.process_iter() if p.pid not in others and _in(p, session, driver.pid)]  # noqa: E731
        node = wait_for(lambda: len(mine()) >= 3 and mine(), 30, "the stand-in node")  # watchdog, two children, the orphan
        driver.kill()
        driver.wait()
        try:
            wait_for(lambda: not alive(node), 15, "the stand-in node to be stopped")
        except AssertionError:
            raise AssertionError("still running: " + "; ".join(describe(p) for p in alive(node))) from None
        assert all(b.poll() is None for b in bystanders)
    finally:
        for p in [driver, *bystanders]:
            p.kill()
            p.wait()


def _in(p: psutil.Process, session: Path, driver: int) -> bool:
    try:
        return p.ppid() == driver or str(session) in " ".join(p.cmdline())
    except psutil.Error:
        return False


def small_spec(folder: Path, data_dir: Path, epochs: int) -> Path:
    d = spec_dict("breast-cancer-mlp.yaml", train={"epochs": epochs, "early_stopping": None}, scaling={"workers": 1})
    d["data"]["source"] = str(data_dir / "breast_cancer.parquet")
    d["data"].pop("prepare", None)
    d["model"]["hidden"] = [16]
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "spec.yaml"
    path.write_text(yaml.safe_dump({k: v for k, v in d.items() if v is not None}))
    return path


def alive(procs: list[psutil.Process]) -> list[psutil.Process]:
    """Those still running (is_running also compares the start time: a reused pid is not ours)."""
    out = []
    for p in procs:
        try:
            if p.is_running() and p.status() != psutil.STATUS_ZOMBIE:
                out.append(p)
        except psutil.NoSuchProcess:
            pass
    return out


def listeners(pids: set[int]) -> list[tuple[int, str, int]]:
    return [(c.pid, c.laddr.ip, c.laddr.port) for c in psutil.net_connections("inet") if c.status == psutil.CONN_LISTEN and c.pid in pids]


def describe(p: psutil.Process) -> str:
    try:
        return f"{p.pid} {' '.join(p.cmdline())[:100]}"
    except psutil.Error:
        return str(p.pid)


@pytest.mark.ray
@pytest.mark.slow
def test_sigkill_of_the_command_ends_its_ray_node_and_the_next_command_runs(data_dir, tmp_path):
    spec = small_spec(tmp_path, data_dir, epochs=500)
    cmd = [str(Path(sys.executable).parent / "orchestrator"), "train", str(spec), "-o", str(tmp_path / "runs")]
    proc = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env={**os.environ, "COLUMNS": "200"})
    lines: list[str] = []
    threading.Thread(target=lambda: lines.extend(iter(proc.stdout.readline, "")), daemon=True).start()
    try:
        wait_for(lambda: any(x.startswith("epoch   2") for x in lines) or proc.poll() is not None, 240, "the second epoch")
        assert proc.poll() is None, "".join(lines)
        def node() -> list[psutil.Process] | None:
            tree = psutil.Process(proc.pid).children(recursive=True)
            names = " ".join(describe(p) for p in tree)
            roles = all(r in names for r in ("raylet", "DashboardAgent", "RuntimeEnvAgent", "RayTrainWorker"))
            return tree if roles and listeners({p.pid for p in tree}) else None

        tree = wait_for(node, 60, "the node's processes and listeners")
        ports = {(ip, port) for _, ip, port in listeners({p.pid for p in tree})}
        t0 = time.monotonic()
        proc.kill()
        proc.wait(30)
    finally:
        if proc.poll() is None:
            proc.kill()
    left = lambda: alive(tree)  # noqa: E731
    try:
        wait_for(lambda: not left(), 30, "the node's processes to end")
    except AssertionError:
        raise AssertionError("alive after SIGKILL of the command:\n" + "\n".join(describe(p) for p in left())) from None
    took = time.monotonic() - t0
    still = {(c.laddr.ip, c.laddr.port) for c in psutil.net_connections("inet") if c.status == psutil.CONN_LISTEN} & ports
    assert not still, f"still listening: {sorted(still)}"
    print(f"{len(tree)} processes of the node gone {took:.1f} s after SIGKILL of the command")

    # the next command starts its own node and finishes normally, and leaves nothing behind
    t0 = time.monotonic()
    seen: list[psutil.Process] = []
    second = subprocess.Popen([*cmd[:2], str(small_spec(tmp_path / "second", data_dir, epochs=2)), "-o", str(tmp_path / "runs2")],
                              cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env={**os.environ, "COLUMNS": "200"})
    out: list[str] = []
    reader = threading.Thread(target=lambda: out.extend(iter(second.stdout.readline, "")), daemon=True)
    reader.start()
    while second.poll() is None:
        try:
            seen += [p for p in psutil.Process(second.pid).children(recursive=True) if p not in seen]
        except psutil.NoSuchProcess:
            break
        time.sleep(0.5)
    took = time.monotonic() - t0
    reader.join(10)
    assert second.wait() == 0, "".join(out)[-3000:]
    assert "epoch   2" in "".join(out)
    wait_for(lambda: not alive(seen), 30, "the second command's node to end after its normal exit")
    print(f"second command: {took:.1f} s, its {len(seen)} processes gone after it exited")


# Listeners of the embedded node that Ray 2.60 binds to every interface, whatever the node's
# address: (role, address). Keep in step with docs/reliability.md, "Network exposure".
WILDCARD_ALLOWED = {
    ("serve replica", "::"),  # inter-deployment gRPC server, bound to "[::]:0" in serve/_private/replica.py
}


def is_loopback(ip: str) -> bool:
    addr = ipaddress.ip_address(ip)
    return (getattr(addr, "ipv4_mapped", None) or addr).is_loopback  # ::ffff:127.0.0.1 is what gRPC servers show


def role(pid: int) -> str:
    """What a listening process is, in the words of the allow-list."""
    if pid == os.getpid():
        return "driver"
    p = psutil.Process(pid)
    args = p.cmdline()
    exe = args[0].split()[0] if args else p.name()
    if exe.startswith("ray::ServeReplica:"):
        return "serve replica"
    if exe.startswith("ray::"):
        return exe if exe in ("ray::DashboardAgent", "ray::RuntimeEnvAgent") else "worker"
    if os.path.basename(exe).startswith("python"):
        return os.path.basename(next((a for a in args[1:] if a.endswith(".py")), exe))
    return os.path.basename(exe)


# Everything else is on loopback: the GCS, raylet, workers' and driver's gRPC, the dashboard, both
# agents, the autoscaler's monitor, the Prometheus exporters, and Serve's proxy at the spec's port.
LOOPBACK_EXPECTED = {"driver", "gcs_server", "raylet", "worker", "dashboard.py", "monitor.py", "ray::DashboardAgent", "ray::RuntimeEnvAgent"}


def _expected_listeners(port: int) -> list[tuple[int, str, int]] | None:
    """This node's listening sockets once every expected role listens (None before that)."""
    pids = {os.getpid(), *(p.pid for p in psutil.Process().children(recursive=True))}
    found = []
    for pid, ip, p in listeners(pids):
        try:
            found.append((pid, ip, p, role(pid)))
        except psutil.NoSuchProcess:  # a worker that ended between the two reads
            continue
    roles = {(r, ip) for _, ip, _, r in found if not is_loopback(ip)}
    loopback = {r for _, ip, _, r in found if is_loopback(ip)}
    proxy = any(p == port and is_loopback(ip) for _, ip, p, _ in found)
    return [f[:3] for f in found] if LOOPBACK_EXPECTED <= loopback and WILDCARD_ALLOWED <= roles and proxy else None


@pytest.mark.ray
def test_embedded_node_with_serve_listens_on_loopback_but_for_the_documented_grpc_ports(ray_session, tmp_path):
    from ray import serve

    from orchestrator.serve.deployment import deploy
    from orchestrator.spec import ServeSpec

    ckpt, _ = make_checkpoint(tmp_path / "ckpt")
    port = free_port()
    url = deploy(ckpt, ServeSpec(port=port, cpus_per_replica=0.25), name="listen-test")
    try:
        assert url == f"http://127.0.0.1:{port}"
        # Ray's processes open their listeners on their own schedule (the autoscaler's monitor.py can
        # bind seconds after Serve answers): wait until every expected role listens, then judge them all
        found = wait_for(lambda: _expected_listeners(port), 60, "every role of the node to listen")
        exposed = {(role(pid), ip) for pid, ip, _ in found if not is_loopback(ip)}
        detail = "\n".join(f"{ip}:{p} {describe(psutil.Process(pid))}" for pid, ip, p in found if not is_loopback(ip))
        assert exposed == WILDCARD_ALLOWED, detail
        print(f"{len(found)} listening sockets, {sum(not is_loopback(ip) for _, ip, _ in found)} not on loopback")
    finally:
        serve.delete("listen-test")
        serve.shutdown()
