"""Processes and listening sockets of a command's Ray node, as the tests read them with psutil."""

from __future__ import annotations

import subprocess
import threading
import time

import psutil


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


def listening_on(ports: set[tuple[str, int]]) -> set[tuple[str, int]]:
    """Which of these (address, port) pairs something still listens on."""
    return {(c.laddr.ip, c.laddr.port) for c in psutil.net_connections("inet") if c.status == psutil.CONN_LISTEN} & ports


def describe(p: psutil.Process) -> str:
    try:
        return f"{p.pid} {' '.join(p.cmdline())[:100]}"
    except psutil.Error:
        return str(p.pid)


def node_of(pid: int, roles: tuple[str, ...] = ("raylet", "DashboardAgent", "RuntimeEnvAgent")) -> list[psutil.Process] | None:
    """The processes under `pid` once its Ray node has every role in `roles` and listens (None before that)."""
    try:
        tree = psutil.Process(pid).children(recursive=True)
    except psutil.NoSuchProcess:
        return None
    names = " ".join(describe(p) for p in tree)
    return tree if all(r in names for r in roles) and listeners({p.pid for p in tree}) else None


def run_watching(cmd: list[str], **popen) -> tuple[int, str, list[psutil.Process]]:
    """Run a command to its end; return its exit code, its output and every process it started."""
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, **popen)
    out: list[str] = []
    reader = threading.Thread(target=lambda: out.extend(iter(proc.stdout.readline, "")), daemon=True)
    reader.start()
    seen: list[psutil.Process] = []
    while proc.poll() is None:
        try:
            seen += [p for p in psutil.Process(proc.pid).children(recursive=True) if p not in seen]
        except psutil.NoSuchProcess:
            break
        time.sleep(0.5)
    rc = proc.wait()
    reader.join(10)
    return rc, "".join(out), seen
