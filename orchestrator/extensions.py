"""Extensions: code outside the package that adds input kinds, architectures, serving checks and
submission backends (docs/extending.md).

An extension is named by the import path of a function, `module:function`; calling it registers
what the module defines (`orchestrator.data.kinds.register(MyKind)`,
`orchestrator.models.registry.register(Architecture(...))`, `serve.guard.register_check(fn)`,
`cli.backends.register(Backend(...))`). Registering the same thing twice is a
no-op, so calling an extension twice is harmless.

The CLI calls the extensions named by ORCHESTRATOR_EXTENSIONS (comma-separated) and by the
`orchestrator.extensions` entry-point group of installed packages; Python code calls `use()`. A
run records the extensions its process used, and every other process of the run that needs them
(Ray Train workers and Tune trials, Ray Data tasks, Serve replicas, batch prediction actors) calls
them first (`ensure`): the module must be importable there too, installed or in the driver's
working directory (the CLI looks there after Python's path; Ray puts it on its workers' path).
A checkpoint never names code to run: a served or scored checkpoint of an extension's kind needs
the extension loaded the same way.
"""

from __future__ import annotations

import importlib
import os
import re
import sys
from typing import Iterable

from orchestrator.errors import OrchestratorError

ENV = "ORCHESTRATOR_EXTENSIONS"
ENTRY_POINTS = "orchestrator.extensions"
_PATH = re.compile(r"^[A-Za-z_][\w.]*:[A-Za-z_]\w*$")
_used: list[str] = []  # in the order they were called, in this process


def use(path: str) -> None:
    """Import `module:function` and call it (once per process); the run then records it."""
    path = path.strip()
    if path in _used:
        return
    if not _PATH.match(path):
        raise OrchestratorError(f"extension {path!r}: expected module:function, e.g. my_package.kinds:register")
    module_name, _, attr = path.partition(":")
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as e:
        cwd = os.getcwd()
        if e.name != module_name.split(".")[0] or cwd in sys.path:
            raise OrchestratorError(f"extension {path!r}: cannot import module {module_name!r}: {e}") from None
        # the `orchestrator` console script does not have the working directory on its path, as
        # `python -m` would; an extension beside the user's specs is looked for there, after the rest
        sys.path.append(cwd)
        try:
            module = importlib.import_module(module_name)
        except ImportError as e2:
            raise OrchestratorError(f"extension {path!r}: cannot import module {module_name!r} (nor from {cwd}): {e2}") from None
    except ImportError as e:
        raise OrchestratorError(f"extension {path!r}: cannot import module {module_name!r}: {e}") from None
    fn = getattr(module, attr, None)
    if not callable(fn):
        raise OrchestratorError(f"extension {path!r}: {module_name} has no callable {attr!r}")
    fn()
    _used.append(path)


def used() -> list[str]:
    """The extensions called in this process, for the run's other processes (`ensure`)."""
    return list(_used)


def ensure(paths: Iterable[str]) -> None:
    """Call each extension of `paths` not called in this process yet (a worker's first step)."""
    for path in paths:
        use(path)


def forget(path: str) -> None:
    """No longer record `path` (whoever undoes its registrations calls this)."""
    if path in _used:
        _used.remove(path)


def configured() -> list[str]:
    """The extensions ORCHESTRATOR_EXTENSIONS and installed packages' entry points name."""
    from importlib.metadata import entry_points

    named = [p for p in os.environ.get(ENV, "").split(",") if p.strip()]
    return named + [ep.value for ep in entry_points(group=ENTRY_POINTS)]


def load_configured() -> None:
    """Call every configured extension (the CLI does, before it reads a spec)."""
    ensure(configured())
