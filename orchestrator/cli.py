"""`orchestrator` command line. Options live in the job spec; flags are for where and how to run."""

from __future__ import annotations

import functools
import json
import sys
from pathlib import Path
from typing import Callable, Optional

import typer
from rich.console import Console
from rich.table import Table

from orchestrator.errors import OrchestratorError

app = typer.Typer(
    name="orchestrator",
    help="Distributed training, hyperparameter search and serving on Ray, from one job spec.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)
console = Console()
err_console = Console(stderr=True)


def friendly(fn: Callable) -> Callable:
    """User errors become one clear message and an exit code, never a traceback."""

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


# ------------------------------------------------------------------------------------ validate


@app.command()
@friendly
def validate(specs: list[Path] = typer.Argument(..., help="Job spec YAML files.", show_default=False)) -> None:
    """Check job specs; print every problem with its field path. Exit 2 if any spec is invalid."""
    from orchestrator.errors import SpecError
    from orchestrator.spec import load_spec

    bad = 0
    for path in specs:
        try:
            spec = load_spec(path)
        except SpecError as e:
            bad += 1
            err_console.print(f"[red]✗[/] {e.source}: invalid job spec", highlight=False)
            for p in e.problems:
                err_console.print(f"    {p}", highlight=False, markup=False)
            continue
        console.print(f"[green]✓[/] {path}: {spec.name} ({spec.model.arch}, {spec.scaling.workers} workers)", highlight=False)
    if bad:
        raise typer.Exit(2)


@app.command()
def schema() -> None:
    """Print the JSON Schema of job specs (for editors and CI)."""
    from orchestrator.spec import json_schema

    sys.stdout.write(json.dumps(json_schema(), indent=2) + "\n")


# --------------------------------------------------------------------------------------- train


def _address_option() -> Optional[str]:
    return typer.Option(None, "--address", help="Ray cluster to join (default: RAY_ADDRESS, else an embedded local Ray).")


@app.command()
@friendly
def train(
    spec_path: Path = typer.Argument(..., metavar="SPEC", help="Job spec YAML."),
    output: Optional[Path] = typer.Option(None, "--output", "-o", help="Parent folder of the run directory (default: the spec's output.dir)."),
    address: Optional[str] = _address_option(),
    verbose: bool = typer.Option(False, "--verbose", "-v", help="Show Ray's own logs."),
) -> None:
    """Train once (no search) on Ray and write a run directory."""
    from orchestrator.spec import load_spec

    spec = load_spec(spec_path)
    from orchestrator.pipeline import train_job

    train_job(spec, spec_path, output=output, address=address, verbose=verbose, console=console)


@app.command()
@friendly
def run(
    spec_path: Path = typer.Argument(..., metavar="SPEC", help="Job spec YAML."),
    output: Optional[Path] = typer.Option(None, "--output", "-o", help="Parent folder of the run directory (default: the spec's output.dir)."),
    address: Optional[str] = _address_option(),
    verbose: bool = typer.Option(False, "--verbose", "-v", help="Show Ray's own logs."),
) -> None:
    """Validate, plan, search (or train once), evaluate the winner on the test split, apply the promotion gate."""
    from orchestrator.pipeline import run_job
    from orchestrator.spec import load_spec

    spec = load_spec(spec_path)
    result = run_job(spec, spec_path, output=output, address=address, verbose=verbose, console=console)
    if result.interrupted:
        raise typer.Exit(130)


@app.command()
@friendly
def resume(
    run_dir: Path = typer.Argument(..., metavar="RUN_DIR", help="Run directory of an interrupted search."),
    address: Optional[str] = _address_option(),
    verbose: bool = typer.Option(False, "--verbose", "-v", help="Show Ray's own logs."),
) -> None:
    """Continue an interrupted search without re-running finished trials."""
    from orchestrator.pipeline import resume_job

    result = resume_job(run_dir, address=address, verbose=verbose, console=console)
    if result.interrupted:
        raise typer.Exit(130)


def main() -> None:
    app()


if __name__ == "__main__":
    main()
