"""TCP ports: the package's one free-port helper, a free port outside the ranges Ray hands out, and
why a port cannot be bound. A leaf: the standard library only."""

from __future__ import annotations

import random
import socket


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port that nothing listens on at `host` now (the kernel picks it; "0.0.0.0": on no
    interface). The one free-port helper of the package and its tests."""
    with socket.socket() as s:
        s.bind((host, 0))
        return s.getsockname()[1]


def unassigned_port(low: int = 20000, high: int = 30000) -> int:
    """A free port below the kernel's ephemeral range (32768+ on Linux) and above Ray's worker
    ports (10002-19999), so that no process of the Ray node starting next gets it by chance
    before the caller's server binds it (which happened with free_port())."""
    for port in random.sample(range(low, high), 200):
        if bind_error("0.0.0.0", port) is None:
            return port
    return free_port()


def bind_error(host: str, port: int, *, reuse: bool = False) -> OSError | None:
    """The error binding a TCP socket to `host`:`port` gives now; None if it binds. `reuse`
    sets SO_REUSEADDR, as servers do (a port in TIME_WAIT then counts as free)."""
    with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET, socket.SOCK_STREAM) as s:
        if reuse:
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((host, port))
        except OSError as e:
            return e
        return None
