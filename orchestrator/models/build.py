"""Built-in architectures and user models loaded by import path."""

from __future__ import annotations

import importlib
import math
from typing import Any

import torch
from torch import nn

from orchestrator.errors import OrchestratorError

ACTIVATIONS = {"relu": nn.ReLU, "gelu": nn.GELU, "tanh": nn.Tanh}


def build_mlp(input_dim: int, num_outputs: int, hidden: list[int], dropout: float, activation: str = "relu", batch_norm: bool = False) -> nn.Module:
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


def load_factory(path: str):
    module_name, _, attr = path.partition(":")
    try:
        module = importlib.import_module(module_name)
    except ImportError as e:
        raise OrchestratorError(f"model.factory {path!r}: cannot import module {module_name!r}: {e}") from None
    fn = getattr(module, attr, None)
    if not callable(fn):
        raise OrchestratorError(f"model.factory {path!r}: {module_name} has no callable {attr!r}")
    return fn


def build_model(model_spec: dict[str, Any], input_shape: list[int], num_outputs: int, dropout: float) -> nn.Module:
    """Build from the spec's `model` section as a plain dict (so checkpoints can rebuild it too)."""
    arch = model_spec["arch"]
    if arch == "mlp":
        return build_mlp(
            int(math.prod(input_shape)), num_outputs, list(model_spec["hidden"]), dropout,
            model_spec.get("activation", "relu"), model_spec.get("batch_norm", False),
        )
    if arch == "cnn":
        if len(input_shape) != 3:
            raise OrchestratorError("model.arch cnn needs image input [channels, height, width] (data.image)")
        return build_cnn(input_shape, num_outputs, list(model_spec["channels"]), int(model_spec["hidden"]), dropout)
    if arch == "custom":
        fn = load_factory(model_spec["factory"])
        model = fn(input_shape=list(input_shape), num_outputs=num_outputs, dropout=dropout, **model_spec.get("kwargs", {}))
        if not isinstance(model, nn.Module):
            raise OrchestratorError(f"model.factory {model_spec['factory']!r} returned {type(model).__name__}, not an nn.Module")
        return model
    raise OrchestratorError(f"unknown model arch {arch!r}")


def flatten_input(model_spec: dict[str, Any]) -> bool:
    """MLPs take image data as a flat vector."""
    return model_spec["arch"] == "mlp"


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def forward(model: nn.Module, x: torch.Tensor, model_spec: dict[str, Any]) -> torch.Tensor:
    if flatten_input(model_spec):
        x = x.reshape(x.shape[0], -1)
    return model(x)
