"""`orchestrator` command line: the one place that assembles the sub-apps (nothing imports this module)."""

from __future__ import annotations

import typer

from orchestrator import extensions
from orchestrator.cli import cluster, jobs, k8s, run, serve
from orchestrator.cli.common import command_group, friendly

app = command_group("Distributed training, hyperparameter search and serving on Ray, from one job spec.", name="orchestrator")


def _print_version(value: bool) -> None:
    if value:
        from importlib.metadata import PackageNotFoundError, version

        from orchestrator import __version__

        def of(dist: str) -> str:
            try:
                return version(dist)
            except PackageNotFoundError:
                return "not installed"

        typer.echo(f"orchestrator {__version__} (Ray {of('ray')}, torch {of('torch')})")
        raise typer.Exit()


@app.callback()
@friendly
def _options(
    version: bool = typer.Option(
        False, "--version", callback=_print_version, is_eager=True, help="Print the version (and Ray's and torch's) and exit."
    ),
) -> None:
    # input kinds and architectures of installed packages or ORCHESTRATOR_EXTENSIONS (docs/extending.md)
    extensions.load_configured()


cluster_app = command_group("Create, inspect and remove Ray clusters.")

run.register(app)  # orchestrator validate, schema, train, run, resume
app.add_typer(cluster_app, name="cluster")
k8s.register(app)  # orchestrator k8s render
cluster.register(cluster_app)  # orchestrator cluster k8s up|down|status|scale, cluster local up|down|status
jobs.register(app)  # orchestrator submit, jobs list|status|logs|stop
serve.register(app)  # orchestrator serve, predict


def main() -> None:
    app()


if __name__ == "__main__":
    main()
