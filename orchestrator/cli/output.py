"""A quiet console and a complete log: while a command runs on Ray, everything written to the
process's stdout and stderr (file descriptors 1 and 2: Ray's own warnings, Tune's and Optuna's
output, Ray Data's progress and INFO lines, the node's processes started meanwhile, which inherit
them) goes to a log file, and the orchestrator's consoles alone keep the terminal.

`orchestrator train|run|resume` keep the log in the run directory (LOG_FILE) once it exists;
before that, and for commands without a run directory, it is a temporary file, removed after a
clean exit and named on the console after a failure. `--verbose` leaves everything on the terminal.
"""

from __future__ import annotations

import io
import os
import shutil
import sys
import tempfile
from pathlib import Path
from typing import Any, Optional

from rich.console import Console

LOG_FILE = "logs/ray.log"  # in the run directory


class QuietOutput:
    """Context manager: fds 1 and 2 -> a log file; `consoles` keep writing where they wrote before."""

    def __init__(self, consoles: list[Console], *, enabled: bool = True):
        self.consoles, self.enabled = consoles, enabled
        self.path: Optional[Path] = None
        self.kept = False  # attached to a run directory: stays after the command
        self._saved: dict[int, int] = {}
        self._streams: list[io.TextIOWrapper] = []
        self._files: list[tuple[Console, Any]] = []
        self._copy_to: Optional[Path] = None

    def __enter__(self) -> "QuietOutput":
        if not self.enabled:
            return self
        for s in (sys.stdout, sys.stderr):
            s.flush()
        fd, name = tempfile.mkstemp(prefix="orchestrator-", suffix=".log")
        self.path = Path(name)
        for n in (1, 2):
            self._saved[n] = os.dup(n)
        streams: dict[int, io.TextIOWrapper] = {}
        for c in self.consoles:
            self._files.append((c, c._file))  # None: the console follows sys.stdout/sys.stderr
            current = c.file
            target = _fd_of(current)
            if target not in (1, 2):  # a console that writes elsewhere (a file, a test's buffer) keeps writing there
                c.file = current
                continue
            assert target is not None
            if target not in streams:
                streams[target] = io.TextIOWrapper(
                    io.FileIO(os.dup(self._saved[target]), "w"), encoding="utf-8", errors="replace", line_buffering=True
                )
            c.file = streams[target]
        self._streams = list(streams.values())
        os.dup2(fd, 1)
        os.dup2(fd, 2)
        os.close(fd)
        # Python-level writes (Tune's and Optuna's prints and warnings) go to the log as well. rich's
        # progress displays put a proxy on sys.stdout that shows such writes on their console, unless
        # one is there already: this one writes to the log.
        from rich.file_proxy import FileProxy

        self._sys = (sys.stdout, sys.stderr)
        self._log_stream = io.TextIOWrapper(io.FileIO(os.dup(1), "w"), encoding="utf-8", errors="replace", line_buffering=True)
        log_console = Console(file=self._log_stream, markup=False, emoji=False, highlight=False, force_terminal=False, width=200)
        sys.stdout = FileProxy(log_console, self._sys[0])
        sys.stderr = FileProxy(log_console, self._sys[1])
        return self

    def attach(self, run_dir: Path) -> None:
        """Move the log into the run directory; what is written from now on lands there too (the
        descriptors follow the file). On another file system it is copied at the end instead."""
        if not self.enabled or self.path is None:
            return
        target = Path(run_dir) / LOG_FILE
        target.parent.mkdir(parents=True, exist_ok=True)
        try:
            os.replace(self.path, target)
        except OSError:  # another file system: copied when the command ends
            self._copy_to = target
        else:
            self.path = target
        self.kept = True

    def __exit__(self, exc_type, exc, tb) -> None:
        if not self.enabled:
            return
        for s in (sys.stdout, sys.stderr):
            try:
                s.flush()
            except (OSError, ValueError):
                pass
        sys.stdout, sys.stderr = self._sys
        for s in (*self._sys, self._log_stream):
            try:
                s.flush()
            except (OSError, ValueError):
                pass
        self._log_stream.close()
        for n, fd in self._saved.items():
            os.dup2(fd, n)
            os.close(fd)
        for c, f in self._files:
            c._file = f
        for s in self._streams:
            try:
                s.close()
            except OSError:
                pass
        target = self._copy_to
        if target is not None and self.path is not None:
            shutil.copyfile(self.path, target)
            self.path.unlink(missing_ok=True)
            self.path = target
        if not self.kept and self.path is not None and (exc_type is None or _empty(self.path)):
            self.path.unlink(missing_ok=True)  # a clean exit without a run directory: nothing to keep
            self.path = None
        elif exc_type is not None and not self.kept and self.path is not None:
            # the error itself is reported by the caller; Ray's side of it is in the log
            print(f"Ray's own output: {self.path}", file=sys.stderr)


def _empty(path: Path) -> bool:
    try:
        return path.stat().st_size == 0
    except OSError:
        return True


def _fd_of(stream) -> Optional[int]:
    try:
        return stream.fileno()
    except (AttributeError, OSError, ValueError):  # io.UnsupportedOperation is an OSError and a ValueError
        return None
