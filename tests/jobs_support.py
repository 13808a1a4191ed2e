"""Helpers for the cluster and job-submission tests: the CLI in a subprocess with a clean environment."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import yaml

from orchestrator.ports import free_port  # noqa: F401  (the one free-port helper, for the tests too)
from tests.conftest import ROOT, spec_dict

# Variables of the developer's shell that would change which cluster or token a command uses.
AMBIENT = ("RAY_ADDRESS", "RAY_API_SERVER_ADDRESS", "RAY_AUTH_TOKEN", "RAY_AUTH_TOKEN_PATH", "RAY_AUTH_MODE", "ORCHESTRATOR_HOME")


def cli_command() -> list[str]:
    """`orchestrator`, the console script of this environment."""
    return [str(Path(sys.executable).parent / "orchestrator")]


def orch(*args: str, home: Path, cwd: Path | None = None, env: dict | None = None, timeout: float = 300) -> subprocess.CompletedProcess:
    clean = {k: v for k, v in os.environ.items() if k not in AMBIENT}
    clean.update(ORCHESTRATOR_HOME=str(home), COLUMNS="200", **(env or {}))
    return subprocess.run([*cli_command(), *args], cwd=cwd or ROOT, env=clean, capture_output=True, text=True, timeout=timeout)


def invoker():
    """Run these commands in-process through typer's CliRunner (no Ray, no subprocess): invoke(*args) -> Result."""
    import typer
    from typer.testing import CliRunner

    from orchestrator.cli import cluster, jobs

    app, cluster_app = typer.Typer(), typer.Typer()
    app.add_typer(cluster_app, name="cluster")
    jobs.register(app)
    cluster.register(cluster_app)
    runner = CliRunner()
    return lambda *args: runner.invoke(app, list(args))


def small_digits_spec(folder: Path, name: str = "digits-small.yaml", **sections) -> Path:
    """jobs/digits-cnn.yaml with small settings: no search, no promotion gate, 2 epochs, 2 workers."""
    d = spec_dict("digits-cnn.yaml", **{"train": {"epochs": 2}, "scaling": {"workers": 2}, **sections})
    d.pop("tune", None)
    d.pop("promote", None)
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / name
    path.write_text(yaml.safe_dump(d))
    return path


# a user's model module: a factory taking the documented arguments and one of its own (width)
FACTORY = """
from torch import nn

def build(input_shape, num_outputs, dropout, width=8):
    return nn.Sequential(nn.Flatten(), nn.Linear(input_shape[-1], width), nn.ReLU(), nn.Linear(width, num_outputs))
"""


def custom_spec(folder: Path, data_dir: Path | None, module: str, workers: int = 1) -> Path:
    """breast-cancer-mlp with a custom model whose module sits beside the spec (in `folder`)."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / f"{module}.py").write_text(FACTORY)
    d = spec_dict("breast-cancer-mlp.yaml", train={"epochs": 2, "early_stopping": None}, scaling={"workers": workers})
    d["model"] = {"arch": "custom", "factory": f"{module}:build", "kwargs": {"width": 16}}
    if data_dir is not None:
        d["data"]["source"] = str(data_dir / "breast_cancer.parquet")
        d["data"].pop("prepare", None)
    path = folder / "job.yaml"
    path.write_text(yaml.safe_dump(d))
    return path
