"""The architectures a spec's `model.arch` can name: one module each, behind this registry.

An architecture is its typed spec section (a pydantic model in `orchestrator.spec`, or an
extension's own, whose `arch` tag is the name), a build function from that section and the
fitted input's shape to an `nn.Module`, and how the model is called (see `models.build.forward`).
The built-in ones live in models/mlp.py, cnn.py, rnn.py, transformer.py and custom.py and are
imported when first asked for; `register` adds one more (docs/extending.md).
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass, field
from typing import Any, Callable, Optional, Sequence

from torch import nn

from orchestrator.errors import OrchestratorError


@dataclass(frozen=True)
class ModelInputs:
    """What the fitted preprocessing says about the model's input and output."""

    input_shape: list[int]  # one row of "x"
    num_outputs: int
    dropout: float
    vocab_size: Optional[int] = None  # text input: token ids are below it
    max_length: Optional[int] = None  # text, sequence and series: the longest input in tokens or steps
    code_dirs: Sequence[str] = field(default_factory=tuple)  # where a user's module is looked for after Python's path


@dataclass(frozen=True)
class Architecture:
    name: str  # the model.arch tag
    spec: type  # the model section's pydantic class (orchestrator.spec.ArchSpec)
    build: Callable[[Any, ModelInputs], nn.Module]  # (validated section, inputs) -> module
    flatten: bool = False  # called as model(x.reshape(batch, -1)) for every input kind
    lengths: bool = True  # called as model(x, lengths) for inputs with lengths (text, sequence, series)


BUILTIN = {name: f"orchestrator.models.{name}" for name in ("mlp", "cnn", "rnn", "transformer", "custom")}
_registered: dict[str, Architecture] = {}


def get(name: str) -> Architecture:
    arch = _registered.get(name)
    if arch is None and name in BUILTIN:
        arch = _registered[name] = importlib.import_module(BUILTIN[name]).ARCHITECTURE
    if arch is None:
        raise OrchestratorError(f"unknown model arch {name!r} (known: {', '.join(names())})")
    return arch


def names() -> list[str]:
    return list(dict.fromkeys([*BUILTIN, *_registered]))


def register(arch: Architecture) -> None:
    """Add an architecture: its spec section joins the spec's `model` union (validation, JSON Schema)."""
    from orchestrator.spec import register_architecture

    if arch.name in BUILTIN:
        raise OrchestratorError(f"model arch {arch.name!r} is built in; choose another name")
    if _registered.get(arch.name) not in (None, arch):
        raise OrchestratorError(f"model arch {arch.name!r} is registered already")
    register_architecture(arch.spec)
    _registered[arch.name] = arch


def unregister(name: str) -> None:
    from orchestrator.spec import unregister_architecture

    if name in BUILTIN:
        raise OrchestratorError(f"model arch {name!r} is built in")
    if _registered.pop(name, None) is not None:
        unregister_architecture(name)


def sequence_inputs(arch: str, inputs: ModelInputs) -> dict[str, Any]:
    """The keyword arguments rnn and transformer share: token ids (vocab_size) or numeric steps (input_dim)."""
    if inputs.vocab_size is None and len(inputs.input_shape) != 2:
        raise OrchestratorError(f"model.arch {arch} needs text, sequence or series input (data.text, data.sequence or data.series)")
    return {
        "vocab_size": int(inputs.vocab_size) if inputs.vocab_size is not None else None,
        "input_dim": None if inputs.vocab_size is not None else int(inputs.input_shape[-1]),
        "num_outputs": int(inputs.num_outputs),
        "dropout": inputs.dropout,
    }
