"""Building a model from the spec's `model` section, and the one model call of training, evaluation
and serving. Each architecture is its own module behind models/registry.py."""

from __future__ import annotations

from typing import Any, Optional, Sequence, Union

import torch
from torch import nn

from orchestrator.models import registry
from orchestrator.models.registry import ModelInputs


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
    """Build from the spec's `model` section as a plain dict (so checkpoints can rebuild it too): the
    dict is validated by its architecture's spec section, whose defaults fill what it leaves out.

    `vocab_size` (text input: token ids are below it) and `max_length` (text, sequence and series:
    the longest input in tokens or steps) come from the fitted preprocessing; rnn and transformer
    need them, a custom factory gets them when it takes them by name or has **kwargs. `code_dirs`:
    where a custom factory's module is looked for after Python's path (models/custom.py).
    """
    arch = registry.get(model_spec["arch"])
    section = arch.spec.model_validate(model_spec, strict=False)  # type: ignore[attr-defined]  # a pydantic model
    inputs = ModelInputs(
        input_shape=list(input_shape),
        num_outputs=int(num_outputs),
        dropout=dropout,
        vocab_size=vocab_size,
        max_length=max_length,
        code_dirs=tuple(code_dirs),
    )
    return arch.build(section, inputs)


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def forward(model: nn.Module, inputs: Union[dict[str, torch.Tensor], torch.Tensor], model_spec: dict[str, Any]) -> torch.Tensor:
    """The one model call of training, evaluation and serving: outputs [batch, num_outputs].

    `inputs` is what `Preprocessor.transform_inputs` returns, as tensors: {"x"} for table and image
    input (a bare tensor is taken as "x"), {"x", "len"} for text (int64 ids), sequence and series
    input. With "len" the batch is first trimmed to its longest real row, so padding to the data's
    max_length costs no compute, and the model is called as model(x, lengths) when its architecture
    takes lengths; otherwise as model(x), flattened for an architecture that takes a flat input (mlp).
    """
    arch = registry.get(model_spec["arch"])
    if isinstance(inputs, torch.Tensor):
        inputs = {"x": inputs}
    x, lengths = inputs["x"], inputs.get("len")
    if lengths is not None:
        # the one copy to the host per batch: the trim below, the model's own checks of the
        # lengths and pack_padded_sequence all read this CPU tensor
        lengths = lengths.to("cpu", torch.int64)
        if lengths.numel() and x.dim() >= 2:
            x = x[:, : max(1, int(lengths.max()))]
        if arch.lengths:
            return model(x, lengths)
    if arch.flatten:
        x = x.reshape(x.shape[0], -1)
    return model(x)
