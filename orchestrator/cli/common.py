"""Shared by every CLI module: the consoles; `friendly`: user errors become one clear line and an
exit code, never a traceback; `command_group`: a typer app made the same way everywhere; `option_group`: options that several commands share, declared once."""

from __future__ import annotations

import dataclasses
import functools
import inspect
import typing
from typing import Callable, Optional

import typer
from rich.text import Text

from orchestrator.errors import OrchestratorError
from orchestrator.ui import make_console  # noqa: F401  (the CLI's consoles are made there, for pipeline too)


console = make_console()
err_console = make_console(stderr=True)


def quiet(verbose: bool):
    """The consoles keep the terminal; everything else written to stdout and stderr goes to a log
    file (cli/output.py). With `verbose`, nothing is redirected."""
    from orchestrator.cli.output import QuietOutput

    return QuietOutput([console, err_console], enabled=not verbose)


def command_group(help: str, name: Optional[str] = None) -> typer.Typer:
    """A typer app for a group of commands: without a command it shows its help; no shell-completion
    options; no pretty tracebacks (`friendly` reports user errors, anything else is a bug to see whole)."""
    return typer.Typer(name=name, help=help, no_args_is_help=True, add_completion=False, pretty_exceptions_enable=False, rich_markup_mode=None)


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


def option_group(name: str, group: type) -> Callable[[Callable], Callable]:
    """Give a command the options that the dataclass `group` declares (each field's default is a
    typer.Option), after its own, and pass them to it as one argument `name`, a `group` instance."""
    fields = dataclasses.fields(group)
    hints = typing.get_type_hints(group)

    def decorate(fn: Callable) -> Callable:
        sig = inspect.signature(fn, eval_str=True)
        own = [p for p in sig.parameters.values() if p.name != name]
        added = [inspect.Parameter(f.name, inspect.Parameter.KEYWORD_ONLY, default=f.default, annotation=hints[f.name]) for f in fields]

        @functools.wraps(fn)
        def wrapper(*args, **kwargs):
            values = {f.name: kwargs.pop(f.name) for f in fields}
            return fn(*args, **kwargs, **{name: group(**values)})

        wrapper.__signature__ = sig.replace(parameters=[*own, *added])  # what typer reads the options from
        return wrapper

    return decorate

