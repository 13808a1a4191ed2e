"""Shared by every CLI module: user errors become one clear line and an exit code, never a traceback."""

from __future__ import annotations

import functools
from typing import Callable

import typer
from rich.console import Console
from rich.text import Text

from orchestrator.errors import OrchestratorError


def make_console(**kwargs) -> Console:
    """Every console of the CLI. What it prints comes from outside too (worker errors, paths, user
    data; gloo's errors contain `[/...]`), so no string is ever read as rich markup or `:emoji:`
    codes: styles go in through `style=` or `rich.text.Text`."""
    return Console(markup=False, emoji=False, **kwargs)


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
