"""The embedded Ray node: it dies with the command that started it (even by SIGKILL), and what it
listens on is loopback, apart from the listeners Ray cannot bind to loopback (docs/reliability.md)."""

from __future__ import annotations

import ipaddress
import os
import subprocess
import sys
from pathlib import Path

import psutil
import pytest

from tests.conftest import ROOT
from tests.processes import alive, describe, listeners
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
LOOPBACK_EXPECTED = {
    "driver",
    "gcs_server",
    "raylet",
    "worker",
    "dashboard.py",
    "monitor.py",
    "ray::DashboardAgent",
    "ray::RuntimeEnvAgent",
}


def _node_listeners(port: int) -> tuple[list[tuple[int, str, int]], list[str]]:
    """This node's listening sockets, and what of the expected is not listening yet."""
    pids = {os.getpid(), *(p.pid for p in psutil.Process().children(recursive=True))}
    found = []
    for pid, ip, p in listeners(pids):
        try:
            found.append((pid, ip, p, role(pid)))
        except psutil.NoSuchProcess:  # a worker that ended between the two reads
            continue
    roles = {(r, ip) for _, ip, _, r in found if not is_loopback(ip)}
    loopback = {r for _, ip, _, r in found if is_loopback(ip)}
    missing = sorted(LOOPBACK_EXPECTED - loopback) + [f"{r} on {ip}" for r, ip in sorted(WILDCARD_ALLOWED - roles)]
    if not any(p == port and is_loopback(ip) for _, ip, p, _ in found):
        missing.append(f"Serve's proxy on 127.0.0.1:{port}")
    return [f[:3] for f in found], missing


@pytest.mark.ray
def test_embedded_node_with_serve_listens_on_loopback_but_for_the_documented_grpc_ports(ray_session, tmp_path):
    from ray import serve

    from orchestrator.serve.deployment import deploy
    from orchestrator.spec import ServeSpec

    ckpt, _ = make_checkpoint(tmp_path / "ckpt")
    port = free_port()
    # Serve left running on this session's node by a test before this one keeps its own port (deploy
    # joins a running Serve): start this one's proxy at the spec's port, whatever ran before
    serve.shutdown()
    url = deploy(ckpt, ServeSpec(port=port, cpus_per_replica=0.25), name="listen-test")
    try:
        assert url == f"http://127.0.0.1:{port}"
        # Ray's processes open their listeners on their own schedule (the autoscaler's monitor.py can
        # bind seconds after Serve answers): wait until every expected role listens, then judge them all
        last: dict = {}

        def every_role_listens():
            last["found"], last["missing"] = _node_listeners(port)
            return not last["missing"]

        try:
            wait_for(every_role_listens, 120, "every role of the node to listen")
        except AssertionError:
            seen = "\n".join(f"{ip}:{p} {role(pid)}" for pid, ip, p in last["found"])
            raise AssertionError(f"not listening after 120 s: {last['missing']}; listening:\n{seen}") from None
        found = last["found"]
        exposed = {(role(pid), ip) for pid, ip, _ in found if not is_loopback(ip)}
        detail = "\n".join(f"{ip}:{p} {describe(psutil.Process(pid))}" for pid, ip, p in found if not is_loopback(ip))
        assert exposed == WILDCARD_ALLOWED, detail
        print(f"{len(found)} listening sockets, {sum(not is_loopback(ip) for _, ip, _ in found)} not on loopback")
    finally:
        serve.delete("listen-test")
        serve.shutdown()
