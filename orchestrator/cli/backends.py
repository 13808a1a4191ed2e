"""Where `orchestrator submit` sends a job: one backend per module, behind this registry.

A backend is a name and a function that takes the submission (`SubmitRequest`: the spec, --dry-run,
--follow, and every other option of `orchestrator submit` by name) and sends it, printing what it
did; it refuses options that do not apply to it with an OrchestratorError naming them, and ends a
followed job's failure with typer.Exit(code). The built-in ones: `ray-jobs`, a Ray cluster's Jobs
API (cli/jobs.py, submit/ plans and sends it), and `k8s`, a KubeRay RayJob (cli/k8s.py, k8s/
renders and applies it), which `--k8s` picks. ORCHESTRATOR_SUBMIT_BACKEND names the default for
the rest, so that a backend an extension registers (docs/extending.md) needs no flag of its own.
"""

from __future__ import annotations

import importlib
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Optional

from orchestrator.errors import OrchestratorError

ENV = "ORCHESTRATOR_SUBMIT_BACKEND"
DEFAULT = "ray-jobs"


@dataclass(frozen=True)
class SubmitRequest:
    spec_path: Path
    dry_run: bool  # print what would be sent and contact nothing
    follow: Optional[bool]  # None: the backend's default
    options: dict[str, Any] = field(default_factory=dict)  # every other option of `orchestrator submit`, by name

    def given(self, *names: str) -> list[str]:
        """Those of `names` whose option was given (not None, not False)."""
        return [n for n in names if self.options.get(n) not in (None, False)]


@dataclass(frozen=True)
class Backend:
    name: str
    submit: Callable[[SubmitRequest], None]


BUILTIN = {"ray-jobs": "orchestrator.cli.jobs", "k8s": "orchestrator.cli.k8s"}
_registered: dict[str, Backend] = {}


def get(name: str) -> Backend:
    backend = _registered.get(name)
    if backend is None and name in BUILTIN:
        backend = _registered[name] = importlib.import_module(BUILTIN[name]).BACKEND
    if backend is None:
        raise OrchestratorError(f"{ENV}={name}: no such submission backend (known: {', '.join(names())})")
    return backend


def names() -> list[str]:
    return list(dict.fromkeys([*BUILTIN, *_registered]))


def default() -> str:
    return os.environ.get(ENV) or DEFAULT


def register(backend: Backend) -> None:
    if backend.name in BUILTIN:
        raise OrchestratorError(f"submission backend {backend.name!r} is built in; choose another name")
    if _registered.get(backend.name) not in (None, backend):
        raise OrchestratorError(f"submission backend {backend.name!r} is registered already")
    _registered[backend.name] = backend


def unregister(name: str) -> None:
    if name not in BUILTIN:
        _registered.pop(name, None)
