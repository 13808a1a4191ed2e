"""`orchestrator validate|schema|train|run|resume`. Options live in the job spec; flags are for where and how to run."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Optional

import typer

from orchestrator.cli.common import console, err_console, friendly, quiet
from orchestrator.errors import INTERRUPTED_EXIT, NOT_PROMOTED_EXIT, counted

# ------------------------------------------------------------------------------------ validate


@friendly
def validate(
    specs: list[Path] = typer.Argument(..., help="Job spec YAML files.", show_default=False),
    no_data: bool = typer.Option(False, "--no-data", help="Check the specs only, not their data."),
) -> None:
    """Check job specs and their data; print every problem, each with its field path or its file and
    column. Exit 2 if any spec or its data is invalid."""
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
        check = None
        if not no_data:
            from orchestrator.data.preflight import check_data

            check = check_data(spec)
            if check.problems:
                bad += 1
                err_console.print(Text.assemble(("✗", "red"), f" {path}: the data does not fit the spec"), highlight=False)
                for p in check.problems:
                    err_console.print(f"    {p}", highlight=False, soft_wrap=True)
                continue
        rows = f", {check.rows} rows" if check is not None and check.rows is not None else ""
        task = f", {check.columns.task}" if check is not None and check.columns is not None else ""
        console.print(
            Text.assemble(
                ("✓", "green"), f" {path}: {spec.name} ({spec.model.arch}, {counted(spec.scaling.workers, 'worker')}{task}{rows})"
            ),
            highlight=False,
            soft_wrap=True,
        )
        for note in check.notes if check is not None else ():
            console.print(f"    note: {note}", highlight=False, soft_wrap=True)
    if bad:
        raise typer.Exit(2)


@friendly
def init(
    data: Path = typer.Argument(..., metavar="DATA", help="Parquet or CSV file (or folder) to learn from."),
    label: Optional[str] = typer.Option(
        None, "--label", help="Column to predict (default: one named label, target, y, class or outcome, else the last)."
    ),
    output: Optional[Path] = typer.Option(None, "--output", "-o", help="Spec file to write (default: <data file name>.yaml here)."),
    name: Optional[str] = typer.Option(None, "--name", help="The job's name (default: from the data file's name)."),
    force: bool = typer.Option(False, "--force", help="Overwrite the spec file if it exists."),
) -> None:
    """Write a starter job spec for a data file: the label and the task, each column's kind and a
    model that fits them, then check the spec and its data as `validate` does."""
    import os

    import yaml

    from orchestrator.data.preflight import check_data
    from orchestrator.data.starter import plan_starter, read_sample
    from orchestrator.errors import DataError
    from orchestrator.spec import format_from_name, load_spec

    data = data.expanduser()
    if not data.exists():
        raise DataError(f"{data}: no such file or folder")
    fmt = format_from_name(data.name) or (
        "csv" if data.is_dir() and any(format_from_name(f.name) == "csv" for f in data.iterdir()) else "parquet"
    )
    out = (output or Path(f"{data.name.split('.')[0] or 'job'}.yaml")).expanduser()
    if out.exists() and not force:
        raise DataError(f"{out}: already exists; choose another --output, or --force to overwrite it")
    source = os.path.relpath(data.resolve(), out.resolve().parent)
    schema_, sample = read_sample(str(data.resolve()), fmt)
    starter = plan_starter(source, str(out.resolve().parent), schema_, sample, fmt=fmt, label=label, name=name)
    header = ["# Starter spec written by `orchestrator init` from " + str(data), "# What was read from the data:"]
    header += [f"#   {line}" for line in starter.decisions]
    header += [f"#   left out: {line}" for line in starter.left_out]
    header += ["# Check it: orchestrator validate " + str(out), "# Train it: orchestrator train " + str(out), ""]
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text("\n".join(header) + yaml.safe_dump(starter.spec, sort_keys=False))
    console.print(f"wrote {out}", highlight=False, soft_wrap=True)
    for line in starter.decisions:
        console.print(f"  {line}", highlight=False, soft_wrap=True)
    for line in starter.left_out:
        console.print(f"  left out: {line}", highlight=False, soft_wrap=True)
    check = check_data(load_spec(out))
    for p in check.problems:
        err_console.print(f"  problem: {p}", highlight=False, soft_wrap=True)
    if check.problems:
        raise typer.Exit(2)
    console.print(
        f"next: orchestrator train {out}   (or add a tune: section and `orchestrator run {out}`)", highlight=False, soft_wrap=True
    )


def schema() -> None:
    """Print the JSON Schema of job specs (for editors and CI)."""
    from orchestrator.spec import json_schema

    sys.stdout.write(json.dumps(json_schema(), indent=2) + "\n")


# --------------------------------------------------------------------------------------- train


ADDRESS = typer.Option(None, "--address", help="Ray cluster to join (default: RAY_ADDRESS, else an embedded local Ray).")
OUTPUT = typer.Option(None, "--output", "-o", help="Parent folder of the run directory (default: the spec's output.dir).")
VERBOSE = typer.Option(False, "--verbose", "-v", help="Show Ray's own logs.")
SPEC = typer.Argument(..., metavar="SPEC", help="Job spec YAML.")
RUN_NAME = typer.Option(
    None,
    "--run-name",
    show_default=False,
    help="Name of the run directory inside the output folder (default: <spec name>-<timestamp>); must not exist yet. "
    "`orchestrator submit` sets it, so it knows where the job's run directory is.",
)


def _exit_for(result) -> None:
    """INTERRUPTED_EXIT for an interrupted search, 3 for a winner that failed the promotion gate."""
    if result.interrupted:
        raise typer.Exit(INTERRUPTED_EXIT)
    if not result.promoted:
        raise typer.Exit(NOT_PROMOTED_EXIT)


@friendly
def train(
    spec_path: Path = SPEC,
    output: Optional[Path] = OUTPUT,
    address: Optional[str] = ADDRESS,
    verbose: bool = VERBOSE,
    run_name: Optional[str] = RUN_NAME,
) -> None:
    """Train once (no search) on Ray and write a run directory."""
    from orchestrator.pipeline import train_job
    from orchestrator.spec import load_spec

    spec = load_spec(spec_path)
    with quiet(verbose) as log:
        train_job(
            spec, spec_path, output=output, address=address, verbose=verbose, console=console, run_name=run_name, on_run_dir=log.attach
        )


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
    with quiet(verbose) as log:
        result = run_job(
            spec, spec_path, output=output, address=address, verbose=verbose, console=console, run_name=run_name, on_run_dir=log.attach
        )
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

    with quiet(verbose) as log:
        result = resume_job(run_dir, address=address, verbose=verbose, console=console, on_run_dir=log.attach)
    _exit_for(result)


def register(app: typer.Typer) -> None:
    """Add init, validate, schema, train, run and resume to the main app."""
    for command in (init, validate, schema, train, run, resume):
        app.command()(command)
