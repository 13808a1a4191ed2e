"""Shared by every CLI module: the consoles, and `friendly`: user errors become one clear line and an
exit code, never a traceback."""

from __future__ import annotations

import functools
from typing import Callable

import typer
from rich.text import Text

from orchestrator.errors import OrchestratorError
from orchestrator.ui import make_console  # noqa: F401  (the CLI's consoles are made there, for pipeline too)


console = make_console()
err_console = make_console(stderr=True)


def friendly(fn: Callable) -> Callable:
    """OrchestratorError -> `error: <message>` on stderr and its exit code; Ctrl-C -> exit 130."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except OrchestratorError as e:
            err_console.print(Text.assemble(("error:", "bold red"), " ", str(e)), highlight=False, soft_wrap=True)
            raise typer.Exit(e.exit_code)
        except KeyboardInterrupt:
            err_console.print("interrupted", style="yellow")
            raise typer.Exit(130)

    return wrapper
