"""Ends an embedded Ray node when the command that started it dies, even by SIGKILL.

Ray 2.60 ties the processes the driver starts (GCS, raylet, dashboard, monitors) to it with
PR_SET_PDEATHSIG, but not the raylet's children: after a SIGKILL of the driver the DashboardAgent
and the RuntimeEnvAgent notice their raylet is gone, then hang on the way out (reporting to the
dead GCS) with their ports open, re-parented to PID 1 (measured: still alive 30 s later).

`start()` runs this module as a small process in its own session, reading a pipe whose write end
only the driver holds. The kernel closes that end when the driver exits, however it exits: the
read returns, and every process of the node is stopped (SIGTERM, then SIGKILL after a grace
period; the RuntimeEnvAgent ignores SIGTERM). The node's processes are those that carry a marker
variable in their environment (inherited from the driver while ray.init starts the node, and by
the workers from the raylet), those writing to a file in the node's session folder (the agents:
they rewrite their command line over their environment, and log there), and their descendants.
Another Ray on the machine has neither.

After a normal exit Ray's own shutdown has already stopped the node; the sweep then finds
nothing or a few processes still on their way out, and the driver never waits for it.
"""

from __future__ import annotations

import os
import shutil
import signal
import sys
import uuid
from pathlib import Path
from typing import Sequence

import psutil

from orchestrator.processes import descendants, list_processes, send, wait_gone

MARKER_ENV = "ORCHESTRATOR_RAY_NODE"
GRACE_S = 3.0
_held_write_ends: list[int] = []


def start() -> tuple[str, int]:
    """Start a watchdog for a node about to be started; returns (marker, watchdog pid). The caller
    must put MARKER_ENV=marker into the environment the node's processes are started with."""
    marker = uuid.uuid4().hex
    read_end, write_end = os.pipe()  # both close-on-exec: no Ray process inherits the write end
    # nothing of the driver's environment (it may hold secrets), and no marker: no part of the node
    env = {"PATH": os.environ.get("PATH", os.defpath), "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
    devnull = os.open(os.devnull, os.O_RDWR)
    try:
        # posix_spawn, not subprocess: a Popen object still running at exit warns, and its own
        # session keeps the terminal's Ctrl-C and hangup away from the watchdog
        pid = os.posix_spawn(
            sys.executable,
            [sys.executable, "-m", "orchestrator.watchdog", marker],
            env,
            file_actions=[(os.POSIX_SPAWN_DUP2, read_end, 0), (os.POSIX_SPAWN_DUP2, devnull, 1), (os.POSIX_SPAWN_DUP2, devnull, 2)],
            setsid=True,
        )
    finally:
        os.close(read_end)
        os.close(devnull)
    _held_write_ends.append(write_end)  # held open until this process exits
    return marker, pid


def watch_session(session_dir: str) -> None:
    """Tell the watchdog the node's session folder, once ray.init has made it."""
    _tell("session", session_dir)


def remove_after(path: str) -> None:
    """Have the watchdog remove the folder `path` once the node is stopped."""
    _tell("remove", path)


def _tell(what: str, path: str) -> None:
    for fd in _held_write_ends[-1:]:
        os.write(fd, f"{what}\t{path}\n".encode())


def node_processes(marker: str, session_dirs: Sequence[str] = ()) -> list[int]:
    """Pids of the node started with `marker` and of everything below them, this process left out."""
    procs = list_processes()
    roots = {
        p.pid for p in procs.values() if not p.zombie and (p.environ.get(MARKER_ENV) == marker or _has_open_file_in(p.pid, session_dirs))
    }
    return [pid for pid in descendants(roots, procs) if pid != os.getpid()]


def _has_open_file_in(pid: int, folders: Sequence[str]) -> bool:
    """Whether `pid` has a file under one of `folders` open for writing: a `tail -f` of a log is no part of the node."""
    prefixes = tuple(d.rstrip("/") + "/" for d in folders)
    if not prefixes:
        return False
    try:
        files = psutil.Process(pid).open_files()  # regular files, with the mode they are open in (Linux)
    except psutil.Error:
        return False
    return any(f.mode != "r" and f.path.startswith(prefixes) for f in files)


def stop_node(marker: str, session_dirs: Sequence[str] = (), grace_s: float = GRACE_S) -> int:
    """SIGTERM every process of the node, SIGKILL what is left after `grace_s`; returns how many."""
    pids = node_processes(marker, session_dirs)
    send(pids, signal.SIGTERM)
    left = wait_gone(pids, grace_s)
    # and whatever a dying raylet started meanwhile
    left = sorted(set(left) | set(node_processes(marker, session_dirs)))
    send(left, signal.SIGKILL)
    wait_gone(left, 5.0)
    return len(set(pids) | set(left))


def main(argv: list[str]) -> None:
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    received = b""
    while chunk := os.read(0, 4096):  # b"" once the driver has exited, however it exited
        received += chunk
    told: dict[str, list[str]] = {"session": [], "remove": []}
    for line in received.decode().splitlines():
        what, _, path = line.partition("\t")
        told.setdefault(what, []).append(path)
    stop_node(argv[0], told["session"])
    for path in told["remove"]:
        shutil.rmtree(path, ignore_errors=True)


if __name__ == "__main__":
    main(sys.argv[1:])
