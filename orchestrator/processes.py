"""This machine's processes as the package reads and stops them (psutil): one snapshot of the process
table, the descendants of some processes in it, signalling, and waiting until processes are gone.

A leaf: it imports nothing of the package but the polling loop. The local cluster (submit/
local_cluster.py) and the embedded node's watchdog (watchdog.py) find their processes with it.
Descendants come from one snapshot rather than a `children(recursive=True)` per root: each such
call reads the whole table again, and a snapshot is what the marker checks read too.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Iterable

import psutil

from orchestrator.polling import poll_until


@dataclass(frozen=True)
class Proc:
    pid: int
    ppid: int
    args: str  # the command line, arguments joined by spaces
    environ: dict[str, str]  # empty where unreadable (another user's process; macOS hides most)
    zombie: bool


def list_processes() -> dict[int, Proc]:
    """Every process this user can read, by pid."""
    procs: dict[int, Proc] = {}
    for p in psutil.process_iter(["ppid", "cmdline", "environ", "status"], ad_value=None):
        info = p.info
        if info["ppid"] is None:  # unreadable
            continue
        procs[p.pid] = Proc(
            p.pid,
            info["ppid"],
            " ".join(info["cmdline"] or ()),
            info["environ"] or {},
            info["status"] in (psutil.STATUS_ZOMBIE, psutil.STATUS_DEAD),
        )
    return procs


def descendants(roots: Iterable[int], procs: dict[int, Proc]) -> list[int]:
    """`roots` and every process below them in the snapshot `procs`, zombies left out, sorted."""
    children: dict[int, list[int]] = {}
    for p in procs.values():
        children.setdefault(p.ppid, []).append(p.pid)
    found: set[int] = set()
    stack = list(roots)
    while stack:
        pid = stack.pop()
        if pid not in found:
            found.add(pid)
            stack += children.get(pid, [])
    return sorted(pid for pid in found if pid in procs and not procs[pid].zombie)


def alive(pids: Iterable[int]) -> list[int]:
    """Those of `pids` still running (a zombie is not: it waits only for its parent to reap it)."""
    out = []
    for pid in pids:
        try:
            if psutil.Process(pid).status() not in (psutil.STATUS_ZOMBIE, psutil.STATUS_DEAD):
                out.append(pid)
        except psutil.Error:
            pass
    return out


def send(pids: Iterable[int], sig: int) -> None:
    """Send `sig` to each of `pids`; those gone already (or not ours) are skipped."""
    for pid in pids:
        try:
            os.kill(pid, sig)
        except (ProcessLookupError, PermissionError):
            pass


def wait_gone(pids: Iterable[int], timeout: float) -> list[int]:
    """Wait until none of `pids` runs, at most `timeout` s; returns those still running."""
    left = list(pids)  # read once: each poll looks again only at those still running at the last

    def still_running() -> list[int]:
        left[:] = alive(left)
        return left

    return poll_until(still_running, lambda running: not running, timeout=timeout, interval=0.2)
