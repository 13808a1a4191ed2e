"""cnn: a convolutional network on image input [channels, height, width] (model.arch: cnn)."""

from __future__ import annotations

from torch import nn

from orchestrator.errors import OrchestratorError
from orchestrator.models.registry import Architecture, ModelInputs
from orchestrator.spec import CNNSpec


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


def build(spec: CNNSpec, inputs: ModelInputs) -> nn.Module:
    if len(inputs.input_shape) != 3:
        raise OrchestratorError("model.arch cnn needs image input [channels, height, width] (data.image)")
    return build_cnn(list(inputs.input_shape), inputs.num_outputs, list(spec.channels), int(spec.hidden), inputs.dropout)


ARCHITECTURE = Architecture(name="cnn", spec=CNNSpec, build=build)
