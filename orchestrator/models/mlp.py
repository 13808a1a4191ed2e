"""mlp: a fully connected network on the flattened input (model.arch: mlp, the default)."""

from __future__ import annotations

import math

from torch import nn

from orchestrator.models.registry import Architecture, ModelInputs
from orchestrator.spec import MLPSpec

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


def build(spec: MLPSpec, inputs: ModelInputs) -> nn.Module:
    return build_mlp(
        int(math.prod(inputs.input_shape)), inputs.num_outputs, list(spec.hidden), inputs.dropout, spec.activation, spec.batch_norm
    )


ARCHITECTURE = Architecture(name="mlp", spec=MLPSpec, build=build, flatten=True, lengths=False)
