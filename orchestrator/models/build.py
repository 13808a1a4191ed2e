"""Built-in architectures and user models loaded by import path."""

from __future__ import annotations

import importlib
import inspect
import math
import os
import sys
from typing import Any, Optional, Sequence, Union

import torch
from torch import nn

from orchestrator.errors import OrchestratorError

ACTIVATIONS = {"relu": nn.ReLU, "gelu": nn.GELU, "tanh": nn.Tanh}


def build_mlp(
    input_dim: int, num_outputs: int, hidden: list[int], dropout: float, activation: str = "relu", batch_norm: bool = False
) -> nn.Module:
    layers: list[nn.Module] = []
    width = input_dim
    for h in hidden:
        layers.append(nn.Linear(width, h))
        if batch_norm:
            layers.append(nn.BatchNorm1d(h))
        layers.append(ACTIVATIONS[activation]())
        if dropout:
            layers.append(nn.Dropout(dropout))
        width = h
    layers.append(nn.Linear(width, num_outputs))
    return nn.Sequential(*layers)


def build_cnn(input_shape: list[int], num_outputs: int, channels: list[int], hidden: int, dropout: float) -> nn.Module:
    c, h, w = input_shape
    layers: list[nn.Module] = []
    for out in channels:
        layers += [nn.Conv2d(c, out, kernel_size=3, padding=1), nn.BatchNorm2d(out), nn.ReLU()]
        if h >= 4 and w >= 4:  # pool while the map is big enough to halve
            layers.append(nn.MaxPool2d(2))
            h, w = h // 2, w // 2
        c = out
    layers += [nn.Flatten(), nn.Linear(c * h * w, hidden), nn.ReLU()]
    if dropout:
        layers.append(nn.Dropout(dropout))
    layers.append(nn.Linear(hidden, num_outputs))
    return nn.Sequential(*layers)


def load_factory(path: str, code_dirs: Sequence[str] = ()):
    """The callable `module:attr` names. The module is imported from Python's path, else from
    `code_dirs`: the spec's folder, recorded in the loop config and in every checkpoint's model.json,
    so that the driver, evaluation, serving replicas and a submitted job's driver resolve it the
    same way, from any working directory."""
    module_name, _, attr = path.partition(":")
    dirs = list(dict.fromkeys(str(d) for d in code_dirs if d))

    def cannot(e: ImportError, where: str = "") -> OrchestratorError:
        return OrchestratorError(f"model.factory {path!r}: cannot import module {module_name!r}: {e}{where}")

    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as e:
        extra = [d for d in dirs if d not in sys.path and os.path.isdir(d)]
        looked = f" (looked in Python's path{' and in ' + ', '.join(dirs) if dirs else ''})"
        if e.name != module_name.split(".")[0] or not extra:
            raise cannot(e, looked) from None
        sys.path.extend(extra)  # after the rest: a folder of the spec's never shadows an installed module
        try:
            module = importlib.import_module(module_name)
        except ImportError as e2:
            raise cannot(e2, looked) from None
    except ImportError as e:
        raise cannot(e) from None
    fn = getattr(module, attr, None)
    if not callable(fn):
        raise OrchestratorError(f"model.factory {path!r}: {module_name} has no callable {attr!r}")
    return fn


SEQUENCE_ARCHS = ("rnn", "transformer")


def _factory_extras(fn, extras: dict[str, Any], given: dict[str, Any]) -> dict[str, Any]:
    """The extras (vocab_size, max_length) a custom factory takes: by name, or all with **kwargs."""
    try:
        params = inspect.signature(fn).parameters
    except (TypeError, ValueError):  # a builtin or C callable without a signature: pass nothing extra
        return {}
    takes_all = any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values())
    return {k: v for k, v in extras.items() if v is not None and k not in given and (takes_all or k in params)}


def build_sequence_model(
    model_spec: dict[str, Any],
    input_shape: list[int],
    num_outputs: int,
    dropout: float,
    vocab_size: Optional[int],
    max_length: Optional[int],
) -> nn.Module:
    """rnn or transformer over text ids (`vocab_size` given) or numeric steps (input_shape [steps, features])."""
    from orchestrator.models.sequence import build_rnn, build_transformer

    arch = model_spec["arch"]
    if vocab_size is None and len(input_shape) != 2:
        raise OrchestratorError(f"model.arch {arch} needs text, sequence or series input (data.text, data.sequence or data.series)")
    inputs = {
        "vocab_size": int(vocab_size) if vocab_size is not None else None,
        "input_dim": None if vocab_size is not None else int(input_shape[-1]),
        "num_outputs": int(num_outputs),
        "dropout": dropout,
    }
    if arch == "rnn":
        return build_rnn(
            cell=model_spec.get("cell", "lstm"),
            hidden=int(model_spec.get("hidden", 128)),
            layers=int(model_spec.get("layers", 1)),
            bidirectional=bool(model_spec.get("bidirectional", False)),
            embedding=int(model_spec.get("embedding", 128)),
            pooling=model_spec.get("pooling", "last"),
            **inputs,
        )
    longest = int(max_length or input_shape[0])
    accepts = int(model_spec.get("max_length") or longest)
    if accepts < longest:
        raise OrchestratorError(f"model.max_length {accepts} is less than the longest input ({longest} tokens or steps)")
    return build_transformer(
        d_model=int(model_spec.get("d_model", 128)),
        heads=int(model_spec.get("heads", 4)),
        layers=int(model_spec.get("layers", 2)),
        ff=int(model_spec.get("ff", 256)),
        max_length=accepts,
        pooling=model_spec.get("pooling", "cls"),
        **inputs,
    )


def build_model(
    model_spec: dict[str, Any],
    input_shape: list[int],
    num_outputs: int,
    dropout: float,
    *,
    vocab_size: Optional[int] = None,
    max_length: Optional[int] = None,
    code_dirs: Sequence[str] = (),
) -> nn.Module:
    """Build from the spec's `model` section as a plain dict (so checkpoints can rebuild it too).

    `vocab_size` (text input: token ids are below it) and `max_length` (text, sequence and series:
    the longest input in tokens or steps) come from the fitted preprocessing; rnn and transformer
    need them, a custom factory gets them when it takes them by name or has **kwargs. `code_dirs`:
    where a custom factory's module is looked for after Python's path (load_factory).
    """
    arch = model_spec["arch"]
    if arch in SEQUENCE_ARCHS:
        return build_sequence_model(model_spec, input_shape, num_outputs, dropout, vocab_size, max_length)
    if arch == "mlp":
        return build_mlp(
            int(math.prod(input_shape)),
            num_outputs,
            list(model_spec["hidden"]),
            dropout,
            model_spec.get("activation", "relu"),
            model_spec.get("batch_norm", False),
        )
    if arch == "cnn":
        if len(input_shape) != 3:
            raise OrchestratorError("model.arch cnn needs image input [channels, height, width] (data.image)")
        return build_cnn(input_shape, num_outputs, list(model_spec["channels"]), int(model_spec["hidden"]), dropout)
    if arch == "custom":
        fn = load_factory(model_spec["factory"], code_dirs)
        kwargs = dict(model_spec.get("kwargs", {}))
        kwargs.update(_factory_extras(fn, {"vocab_size": vocab_size, "max_length": max_length}, kwargs))
        model = fn(input_shape=list(input_shape), num_outputs=num_outputs, dropout=dropout, **kwargs)
        if not isinstance(model, nn.Module):
            raise OrchestratorError(f"model.factory {model_spec['factory']!r} returned {type(model).__name__}, not an nn.Module")
        return model
    raise OrchestratorError(f"unknown model arch {arch!r}")


def flatten_input(model_spec: dict[str, Any]) -> bool:
    """MLPs take image data as a flat vector."""
    return model_spec["arch"] == "mlp"


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def forward(model: nn.Module, inputs: Union[dict[str, torch.Tensor], torch.Tensor], model_spec: dict[str, Any]) -> torch.Tensor:
    """The one model call of training, evaluation and serving: outputs [batch, num_outputs].

    `inputs` is what `Preprocessor.transform_inputs` returns, as tensors: {"x"} for table and image
    input (a bare tensor is taken as "x"), {"x", "len"} for text (int64 ids), sequence and series
    input. With "len" the batch is first trimmed to its longest real row, so padding to the data's
    max_length costs no compute, and the model is called as model(x, lengths); otherwise as
    model(x), an mlp on its input flattened.
    """
    if isinstance(inputs, torch.Tensor):
        inputs = {"x": inputs}
    x, lengths = inputs["x"], inputs.get("len")
    if lengths is not None:
        # the one copy to the host per batch: the trim below, the model's own checks of the
        # lengths and pack_padded_sequence all read this CPU tensor
        lengths = lengths.to("cpu", torch.int64)
        if lengths.numel() and x.dim() >= 2:
            x = x[:, : max(1, int(lengths.max()))]
        if model_spec["arch"] != "mlp":
            return model(x, lengths)
    if flatten_input(model_spec):
        x = x.reshape(x.shape[0], -1)
    return model(x)
