"""Shared by every CLI module: user errors become one clear line and an exit code, never a traceback."""

from __future__ import annotations

import functools
from typing import Callable

import typer
from rich.console import Console

from orchestrator.errors import OrchestratorError

console = Console()
err_console = Console(stderr=True)


def friendly(fn: Callable) -> Callable:
    """OrchestratorError -> `error: <message>` on stderr and its exit code; Ctrl-C -> exit 130."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except OrchestratorError as e:
            err_console.print(f"[bold red]error:[/] {e}", highlight=False, soft_wrap=True)
            raise typer.Exit(e.exit_code)
        except KeyboardInterrupt:
            err_console.print("[yellow]interrupted[/]")
            raise typer.Exit(130)

    return wrapper
