"""The input kinds a job can read, by name: one module each, behind this registry.

The built-in kinds live in data/kinds/table.py, image.py, text.py, sequence.py and series.py and are
imported when first asked for; `register` adds one more, and its section joins the spec's `data`
(docs/extending.md).
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from orchestrator.data.kinds.base import InputKind
from orchestrator.errors import OrchestratorError

if TYPE_CHECKING:
    from orchestrator.spec import DataSpec

BUILTIN = {name: f"orchestrator.data.kinds.{name}" for name in ("table", "image", "text", "sequence", "series")}
_registered: dict[str, type[InputKind]] = {}


def get(name: str) -> type[InputKind]:
    kind = _registered.get(name)
    if kind is None and name in BUILTIN:
        kind = _registered[name] = importlib.import_module(BUILTIN[name]).KIND
    if kind is None:
        raise OrchestratorError(
            f"input kind {name!r} is not registered in this process (known: {', '.join(names())}); "
            "load the extension that defines it (ORCHESTRATOR_EXTENSIONS=module:function, docs/extending.md)"
        )
    return kind


def names() -> list[str]:
    return list(dict.fromkeys([*BUILTIN, *_registered]))


def for_spec(data: DataSpec) -> type[InputKind]:
    """The kind a spec's data section declares (its section's name, or table)."""
    return get(data.input_kind)


def register(kind: type[InputKind]) -> None:
    """Add an input kind: its section becomes data.<name> in the spec (validation, JSON Schema)."""
    from orchestrator.spec import register_input_section

    if not (isinstance(kind, type) and issubclass(kind, InputKind)):
        raise TypeError(f"{kind!r}: an input kind subclasses orchestrator.data.kinds.InputKind")
    if kind.name in BUILTIN:
        raise OrchestratorError(f"input kind {kind.name!r} is built in; choose another name")
    if _registered.get(kind.name) not in (None, kind):
        raise OrchestratorError(f"input kind {kind.name!r} is registered already")
    if kind.section is None:
        raise TypeError(f"input kind {kind.name!r} declares no spec section (section = a pydantic model with a `column` field)")
    register_input_section(kind.name, kind.section, kind.section_description or f"{kind.name} input instead of tabular features.")
    _registered[kind.name] = kind


def unregister(name: str) -> None:
    from orchestrator.spec import unregister_input_section

    if name in BUILTIN:
        raise OrchestratorError(f"input kind {name!r} is built in")
    if _registered.pop(name, None) is not None:
        unregister_input_section(name)


def from_dict(d: dict[str, Any]) -> InputKind:
    """A fitted state saved by InputKind.to_dict()."""
    fields = dict(d)
    kind = get(fields.pop("kind"))
    return kind(**fields)
