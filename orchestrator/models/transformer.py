"""transformer: an encoder with sinusoidal positions over text ids or numeric steps (model.arch: transformer)."""

from __future__ import annotations

import math
from typing import Optional

import torch
from torch import Tensor, nn

from orchestrator.errors import OrchestratorError
from orchestrator.models.registry import Architecture, ModelInputs, sequence_inputs
from orchestrator.models.sequence import PAD, check_dropout, check_inputs, check_lengths, masked_mean, positive
from orchestrator.spec import TransformerSpec

TRANSFORMER_POOLING = ("cls", "mean")


def sinusoidal_positions(length: int, d_model: int) -> Tensor:
    """The fixed encoding of "Attention Is All You Need": [length, d_model]."""
    pos = torch.arange(length, dtype=torch.float32)[:, None]
    freq = torch.exp(torch.arange(0, d_model, 2, dtype=torch.float32) * (-math.log(10000.0) / d_model))
    pe = torch.zeros(length, d_model)
    pe[:, 0::2] = torch.sin(pos * freq)
    pe[:, 1::2] = torch.cos(pos * freq[: d_model // 2])
    return pe


class TransformerModel(nn.Module):
    """Embedding/projection + sinusoidal positions -> pre-norm TransformerEncoder -> pooling -> head."""

    def __init__(
        self,
        *,
        vocab_size: Optional[int],
        input_dim: Optional[int],
        num_outputs: int,
        d_model: int,
        heads: int,
        layers: int,
        ff: int,
        dropout: float,
        max_length: int,
        pooling: str,
    ):
        super().__init__()
        self.pooling = pooling
        self.max_length = max_length
        self.text = vocab_size is not None
        self.embed = nn.Embedding(vocab_size, d_model, padding_idx=PAD) if self.text else nn.Linear(input_dim, d_model)
        # Text gets CLS from the tokenizer (add_cls=True puts it at position 0, inside max_length);
        # numeric rows have no token for it, so a learned vector is prepended here.
        self.cls = nn.Parameter(torch.randn(1, 1, d_model) * 0.02) if (pooling == "cls" and not self.text) else None
        positions = max_length + (1 if self.cls is not None else 0)
        self.register_buffer("positions", sinusoidal_positions(positions, d_model), persistent=False)
        self.dropout = nn.Dropout(dropout)
        layer = nn.TransformerEncoderLayer(
            d_model, heads, dim_feedforward=ff, dropout=dropout, activation="gelu", batch_first=True, norm_first=True
        )
        # No nested tensors: that fast path returns zeros at padded positions and drifts slightly
        # from the padded computation, which would break padding invariance.
        self.encoder = nn.TransformerEncoder(layer, num_layers=layers, norm=nn.LayerNorm(d_model), enable_nested_tensor=False)
        self.head = nn.Linear(d_model, num_outputs)

    def forward(self, x: Tensor, lengths: Tensor) -> Tensor:
        lengths = check_lengths(x, lengths)
        if x.shape[1] > self.max_length:
            raise ValueError(f"input of {x.shape[1]} steps is longer than max_length {self.max_length}")
        h = self.embed(x)
        if self.cls is not None:
            h = torch.cat([self.cls.expand(h.shape[0], -1, -1).to(h.dtype), h], dim=1)
            lengths = lengths + 1
        h = self.dropout(h + self.positions[: h.shape[1]].to(h.dtype))
        real = torch.arange(h.shape[1], device=h.device)[None, :] < lengths.to(h.device)[:, None]
        h = self.encoder(h, src_key_padding_mask=~real)
        pooled = h[:, 0] if self.pooling == "cls" else masked_mean(h, real)
        return self.head(self.dropout(pooled))


def build_transformer(
    *,
    vocab_size: Optional[int],
    input_dim: Optional[int],
    num_outputs: int,
    d_model: int,
    heads: int,
    layers: int,
    ff: int,
    dropout: float,
    max_length: int,
    pooling: str,
) -> nn.Module:
    """A transformer-encoder classifier/regressor over text ids (`vocab_size`) or numeric steps (`input_dim`).

    `max_length`: the longest input accepted (for text, the tokenizer's max_length, CLS included).
    Positional encoding: fixed sinusoidal, added to the token embedding / input projection.
    `pooling`: "cls" reads position 0 (for text the CLS token that `encode(..., add_cls=True)`
    puts there; for numeric input a learned vector prepended here); "mean" averages real positions.
    Pre-norm layers with GELU, `ff` hidden units in each feed-forward block; `dropout` applies to
    embeddings, attention, feed-forward blocks and before the head.
    """
    check_inputs(vocab_size, input_dim)
    if pooling not in TRANSFORMER_POOLING:
        raise ValueError(f"pooling must be one of {list(TRANSFORMER_POOLING)} for a transformer, got {pooling!r}")
    for name, v in (
        ("num_outputs", num_outputs),
        ("d_model", d_model),
        ("heads", heads),
        ("layers", layers),
        ("ff", ff),
        ("max_length", max_length),
    ):
        positive(name, v)
    if d_model % heads:
        raise ValueError(f"d_model ({d_model}) must be divisible by heads ({heads})")
    if d_model % 2:
        raise ValueError(f"d_model ({d_model}) must be even for the sinusoidal positional encoding")
    return TransformerModel(
        vocab_size=vocab_size,
        input_dim=input_dim,
        num_outputs=num_outputs,
        d_model=d_model,
        heads=heads,
        layers=layers,
        ff=ff,
        dropout=check_dropout(dropout),
        max_length=max_length,
        pooling=pooling,
    )


def build(spec: TransformerSpec, inputs: ModelInputs) -> nn.Module:
    common = sequence_inputs("transformer", inputs)
    longest = int(inputs.max_length or inputs.input_shape[0])
    accepts = int(spec.max_length or longest)
    if accepts < longest:
        raise OrchestratorError(f"model.max_length {accepts} is less than the longest input ({longest} tokens or steps)")
    return build_transformer(
        d_model=int(spec.d_model),
        heads=int(spec.heads),
        layers=int(spec.layers),
        ff=int(spec.ff),
        max_length=accepts,
        pooling=spec.pooling,
        **common,
    )


ARCHITECTURE = Architecture(name="transformer", spec=TransformerSpec, build=build)
