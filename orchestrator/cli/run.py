"""`orchestrator validate|schema|train|run|resume`. Options live in the job spec; flags are for where and how to run."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Optional

import typer

from orchestrator.cli.common import console, err_console, friendly
from orchestrator.errors import NOT_PROMOTED_EXIT


# ------------------------------------------------------------------------------------ validate


@friendly
def validate(specs: list[Path] = typer.Argument(..., help="Job spec YAML files.", show_default=False)) -> None:
    """Check job specs; print every problem with its field path. Exit 2 if any spec is invalid."""
    from rich.text import Text

    from orchestrator.errors import SpecError
    from orchestrator.spec import load_spec

    bad = 0
    for path in specs:
        try:
            spec = load_spec(path)
        except SpecError as e:
            bad += 1
            err_console.print(Text.assemble(("✗", "red"), f" {e.source}: invalid job spec"), highlight=False)
            for p in e.problems:
                err_console.print(f"    {p}", highlight=False, soft_wrap=True)  # one line per problem, however long
            continue
        console.print(Text.assemble(("✓", "green"), f" {path}: {spec.name} ({spec.model.arch}, {spec.scaling.workers} workers)"), highlight=False)
    if bad:
        raise typer.Exit(2)


def schema() -> None:
    """Print the JSON Schema of job specs (for editors and CI)."""
    from orchestrator.spec import json_schema

    sys.stdout.write(json.dumps(json_schema(), indent=2) + "\n")


# --------------------------------------------------------------------------------------- train


ADDRESS = typer.Option(None, "--address", help="Ray cluster to join (default: RAY_ADDRESS, else an embedded local Ray).")
OUTPUT = typer.Option(None, "--output", "-o", help="Parent folder of the run directory (default: the spec's output.dir).")
VERBOSE = typer.Option(False, "--verbose", "-v", help="Show Ray's own logs.")
SPEC = typer.Argument(..., metavar="SPEC", help="Job spec YAML.")
RUN_NAME = typer.Option(None, "--run-name", show_default=False,
                        help="Name of the run directory inside the output folder (default: <spec name>-<timestamp>); must not exist yet. "
                        "`orchestrator submit` sets it, so it knows where the job's run directory is.")


def _exit_for(result) -> None:
    """130 for an interrupted search, 3 for a winner that failed the promotion gate."""
    if result.interrupted:
        raise typer.Exit(130)
    if not result.promoted:
        raise typer.Exit(NOT_PROMOTED_EXIT)


@friendly
def train(spec_path: Path = SPEC, output: Optional[Path] = OUTPUT, address: Optional[str] = ADDRESS, verbose: bool = VERBOSE,
          run_name: Optional[str] = RUN_NAME) -> None:
    """Train once (no search) on Ray and write a run directory."""
    from orchestrator.pipeline import train_job
    from orchestrator.spec import load_spec

    train_job(load_spec(spec_path), spec_path, output=output, address=address, verbose=verbose, console=console, run_name=run_name)


@friendly
def run(
    spec_path: Path = SPEC,
    output: Optional[Path] = OUTPUT,
    address: Optional[str] = ADDRESS,
    verbose: bool = VERBOSE,
    force: bool = typer.Option(False, "--force", help="Serve the winner even if it failed the promotion gate."),
    no_serve: bool = typer.Option(False, "--no-serve", help="Do not serve, even if the spec has a serve section."),
    run_name: Optional[str] = RUN_NAME,
) -> None:
    """Validate, plan, search (or train once), evaluate the winner on the test split, apply the promotion gate,
    and serve it when the spec has a serve section."""
    from orchestrator.pipeline import run_job
    from orchestrator.spec import load_spec

    spec = load_spec(spec_path)
    result = run_job(spec, spec_path, output=output, address=address, verbose=verbose, console=console, run_name=run_name)
    if spec.serve is not None and not no_serve and not result.interrupted:
        from orchestrator.cli.serve import serve_after_run

        serve_after_run(result, spec, console, force)
        return
    _exit_for(result)


@friendly
def resume(
    run_dir: Path = typer.Argument(..., metavar="RUN_DIR", help="Run directory of an interrupted search."),
    address: Optional[str] = ADDRESS,
    verbose: bool = VERBOSE,
) -> None:
    """Continue an interrupted search without re-running finished trials."""
    from orchestrator.pipeline import resume_job

    _exit_for(resume_job(run_dir, address=address, verbose=verbose, console=console))


def register(app: typer.Typer) -> None:
    """Add validate, schema, train, run and resume to the main app."""
    for command in (validate, schema, train, run, resume):
        app.command()(command)
