"""Where a secret could leak to: files under some folders, and what any process of the same user
can read of another (/proc/<pid>/environ and cmdline)."""

from __future__ import annotations

from pathlib import Path

SERVE_TOKEN_ENV = "ORCHESTRATOR_SECRETS_TEST_SERVE_TOKEN"


def files_holding(tokens: dict[str, str], *roots: Path) -> list[str]:
    found = []
    for root in roots:
        for path in [root] if root.is_file() else root.rglob("*"):
            if not path.is_file() or path.is_symlink():
                continue
            try:
                data = path.read_bytes()
            except OSError:
                continue
            found += [f"{name} in {path}" for name, tok in tokens.items() if tok.encode() in data]
    return found


def processes_holding(tokens: dict[str, str], pids) -> list[str]:
    """Raw /proc/<pid>/environ and cmdline: what any process of the same user can read."""
    found = []
    for pid in pids:
        try:
            program = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")[0][:60].decode(errors="replace")
        except OSError:
            continue
        for part in ("environ", "cmdline"):
            try:
                data = Path(f"/proc/{pid}/{part}").read_bytes()
            except OSError:
                continue
            found += [f"{name} in /proc/{pid}/{part} ({program})" for name, tok in tokens.items() if tok.encode() in data]
    return found
