"""Shared by every CLI module: the consoles; `friendly`: user errors become one clear line and an
exit code, never a traceback; `command_group`: a typer app made the same way everywhere; `option_group`: options that several commands share, declared once."""

from __future__ import annotations

import dataclasses
import functools
import inspect
import re
import typing
from typing import Callable, Optional

import typer
from rich.text import Text

from orchestrator.errors import INTERRUPTED_EXIT, OrchestratorError
from orchestrator.ui import make_console  # noqa: F401  (the CLI's consoles are made there, for pipeline too)

# where the Kubernetes commands (cli/k8s.py, cli/cluster.py, submit --k8s) take their defaults from
ENV_IMAGE = "ORCHESTRATOR_K8S_IMAGE"
ENV_GPU_IMAGE = "ORCHESTRATOR_K8S_GPU_IMAGE"
ENV_STORAGE_PVC = "ORCHESTRATOR_K8S_STORAGE_PVC"
_DNS1123_LABEL = re.compile(r"^[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?$")


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
    return typer.Typer(
        name=name, help=help, no_args_is_help=True, add_completion=False, pretty_exceptions_enable=False, rich_markup_mode=None
    )


def friendly(fn: Callable) -> Callable:
    """OrchestratorError -> `error: <message>` on stderr and its exit code; Ctrl-C -> INTERRUPTED_EXIT (130)."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except OrchestratorError as e:
            err_console.print(Text.assemble(("error:", "bold red"), " ", str(e)), highlight=False, soft_wrap=True)
            raise typer.Exit(e.exit_code) from None
        except KeyboardInterrupt:
            err_console.print("interrupted", style="yellow")
            raise typer.Exit(INTERRUPTED_EXIT) from None

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

        wrapper.__signature__ = sig.replace(parameters=[*own, *added])  # type: ignore[attr-defined]  # what typer reads the options from
        return wrapper

    return decorate


# --------------------------------------------------- options and output shared by command groups

_NS_HELP = "Kubernetes namespace."
_KUBECONFIG_HELP = "kubeconfig file (default: $KUBECONFIG, ~/.kube/config, else in-cluster credentials)."


def opt_namespace(default: Optional[str] = "default"):
    return typer.Option(default, "--namespace", "-n", help=_NS_HELP)


def opt_kubeconfig():
    return typer.Option(None, "--kubeconfig", help=_KUBECONFIG_HELP, show_default=False)


def opt_context():
    return typer.Option(None, "--context", help="kubeconfig context (default: the current one).", show_default=False)


def opt_dry_run(what: str = "Print the objects that would be sent, as YAML, and contact nothing."):
    return typer.Option(False, "--dry-run", help=what)


def opt_storage_pvc():
    return typer.Option(
        None,
        "--storage-pvc",
        envvar=ENV_STORAGE_PVC,
        help="ReadWriteMany PersistentVolumeClaim mounted at /mnt/storage in every Ray pod; relative data.source, "
        "output.dir and --checkpoint paths live there.",
        show_default=False,
    )


def opt_image():
    return typer.Option(None, "--image", envvar=ENV_IMAGE, help="Container image for the head and CPU workers.", show_default=False)


def opt_gpu_image():
    return typer.Option(None, "--gpu-image", envvar=ENV_GPU_IMAGE, help="Container image for GPU workers.", show_default=False)


def echo_out(text: str) -> None:
    typer.echo(text, nl=False)


def echo_err(line: str) -> None:
    typer.echo(line, err=True)


def warn_each(warnings: list[str]) -> None:
    for w in warnings:
        echo_err(f"warning: {w}")


def check_namespace(namespace: Optional[str]) -> None:
    if namespace is not None and not _DNS1123_LABEL.match(namespace):
        raise OrchestratorError(f"--namespace {namespace!r} is not a valid namespace name (lower-case letters, digits, '-')")
