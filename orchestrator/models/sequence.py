"""Sequence models: recurrent (LSTM/GRU) and transformer encoders for text ids or numeric sequences.

Both take `forward(x, lengths) -> [batch, num_outputs]`:
- text: `x` int64 token ids [batch, T] padded with PAD (orchestrator.data.text), embedded with
  `padding_idx=PAD`;
- numeric: `x` float [batch, T, input_dim] (orchestrator.data.sequences.pad_sequences).
`lengths` int64 [batch] counts each row's real steps (>= 1). Whatever the padding holds, and however
long the batch is padded, a row's output is the same: the RNN packs the batch, the transformer masks
padded keys, and pooling reads real steps only.

State: plain `state_dict()` tensors, saved in checkpoints like every other built-in model; the
builder arguments (from the job spec) rebuild the module. The transformer's positional encoding is
fixed sinusoidal, a non-persistent buffer, so it adds nothing to the state dict.
"""

from __future__ import annotations

import math
from typing import Optional

import torch
from torch import Tensor, nn
from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence

PAD = 0  # orchestrator.data.text.PAD; kept literal so this module imports no data code

RNN_CELLS = {"lstm": nn.LSTM, "gru": nn.GRU}
RNN_POOLING = ("last", "mean", "max")
TRANSFORMER_POOLING = ("cls", "mean")


def _positive(name: str, v) -> int:
    if isinstance(v, bool) or not isinstance(v, int) or v < 1:
        raise ValueError(f"{name} must be a positive integer, got {v!r}")
    return v


def _check_inputs(vocab_size: Optional[int], input_dim: Optional[int]) -> None:
    if (vocab_size is None) == (input_dim is None):
        raise ValueError("give exactly one of vocab_size (text token ids) or input_dim (numeric sequences)")
    _positive("vocab_size" if vocab_size is not None else "input_dim", vocab_size if vocab_size is not None else input_dim)


def _check_dropout(dropout: float) -> float:
    if not isinstance(dropout, (int, float)) or isinstance(dropout, bool) or not 0.0 <= dropout < 1.0:
        raise ValueError(f"dropout must be in [0, 1), got {dropout!r}")
    return float(dropout)


def _check_lengths(x: Tensor, lengths: Tensor) -> Tensor:
    """lengths as a CPU int64 tensor, checked against x (no device sync when they already are,
    as models.build.forward passes them)."""
    lengths = torch.as_tensor(lengths).to("cpu", torch.int64)
    if lengths.dim() != 1 or lengths.shape[0] != x.shape[0]:
        raise ValueError(f"lengths must be a 1-D tensor of {x.shape[0]} entries, got shape {tuple(lengths.shape)}")
    if lengths.numel() and (int(lengths.min()) < 1 or int(lengths.max()) > x.shape[1]):
        raise ValueError(f"lengths must be between 1 and the padded length {x.shape[1]}, got {lengths.tolist()}")
    return lengths


def _masked_mean(h: Tensor, mask: Tensor) -> Tensor:
    """Mean over real steps: h [B, T, D], mask [B, T] True at real steps."""
    m = mask.unsqueeze(-1).to(h.dtype)
    return (h * m).sum(dim=1) / m.sum(dim=1).clamp_min(1.0)


def _masked_max(h: Tensor, mask: Tensor) -> Tensor:
    """Per-unit maximum over real steps: h [B, T, D], mask [B, T] True at real steps (every row has one)."""
    return h.masked_fill(~mask.unsqueeze(-1), float("-inf")).amax(dim=1)


class RNNModel(nn.Module):
    """Embedding (text) -> LSTM/GRU over the packed batch -> pooling -> dropout -> linear head."""

    def __init__(
        self,
        *,
        vocab_size: Optional[int],
        input_dim: Optional[int],
        num_outputs: int,
        cell: str,
        hidden: int,
        layers: int,
        bidirectional: bool,
        embedding: int,
        pooling: str,
        dropout: float,
    ):
        super().__init__()
        self.pooling = pooling
        self.bidirectional = bidirectional
        self.embed = nn.Embedding(vocab_size, embedding, padding_idx=PAD) if vocab_size is not None else None
        self.dropout = nn.Dropout(dropout)
        self.rnn = RNN_CELLS[cell](
            input_size=embedding if vocab_size is not None else input_dim,
            hidden_size=hidden,
            num_layers=layers,
            batch_first=True,
            bidirectional=bidirectional,
            dropout=dropout if layers > 1 else 0.0,  # between layers; torch warns when set with one layer
        )
        self.head = nn.Linear(hidden * (2 if bidirectional else 1), num_outputs)

    def forward(self, x: Tensor, lengths: Tensor) -> Tensor:
        lengths = _check_lengths(x, lengths)
        h = self.dropout(self.embed(x)) if self.embed is not None else x
        packed = pack_padded_sequence(h, lengths, batch_first=True, enforce_sorted=False)
        out, state = self.rnn(packed)
        if self.pooling == "last":
            h_n = state[0] if isinstance(state, tuple) else state  # LSTM returns (h_n, c_n)
            # h_n [layers * directions, B, hidden], already in the batch's own order; the last
            # layer's forward state is at its final real step, its backward state at step 0.
            pooled = torch.cat([h_n[-2], h_n[-1]], dim=-1) if self.bidirectional else h_n[-1]
        else:
            seq, _ = pad_packed_sequence(out, batch_first=True)  # [B, max(lengths), D], zeros after each end
            mask = torch.arange(seq.shape[1], device=seq.device)[None, :] < lengths.to(seq.device)[:, None]
            pooled = _masked_mean(seq, mask) if self.pooling == "mean" else _masked_max(seq, mask)
        return self.head(self.dropout(pooled))


def build_rnn(
    *,
    vocab_size: Optional[int],
    input_dim: Optional[int],
    num_outputs: int,
    cell: str,
    hidden: int,
    layers: int,
    bidirectional: bool,
    embedding: int,
    pooling: str,
    dropout: float,
) -> nn.Module:
    """A recurrent classifier/regressor over text ids (`vocab_size`) or numeric steps (`input_dim`).

    `embedding` is the token embedding width (ignored for numeric input). `pooling`: "last" reads
    the last layer's final state at each row's last real step (forward and backward final states
    concatenated when bidirectional); "mean" averages the outputs over real steps; "max" takes each
    output unit's largest value over real steps (max-over-time pooling). `dropout` applies
    to embeddings, between stacked layers and before the head.
    """
    _check_inputs(vocab_size, input_dim)
    if cell not in RNN_CELLS:
        raise ValueError(f"cell must be one of {sorted(RNN_CELLS)}, got {cell!r}")
    if pooling not in RNN_POOLING:
        raise ValueError(f"pooling must be one of {list(RNN_POOLING)} for an rnn, got {pooling!r}")
    for name, v in (("num_outputs", num_outputs), ("hidden", hidden), ("layers", layers)):
        _positive(name, v)
    if vocab_size is not None:
        _positive("embedding", embedding)
    return RNNModel(
        vocab_size=vocab_size,
        input_dim=input_dim,
        num_outputs=num_outputs,
        cell=cell,
        hidden=hidden,
        layers=layers,
        bidirectional=bool(bidirectional),
        embedding=embedding,
        pooling=pooling,
        dropout=_check_dropout(dropout),
    )


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
        lengths = _check_lengths(x, lengths)
        if x.shape[1] > self.max_length:
            raise ValueError(f"input of {x.shape[1]} steps is longer than max_length {self.max_length}")
        h = self.embed(x)
        if self.cls is not None:
            h = torch.cat([self.cls.expand(h.shape[0], -1, -1).to(h.dtype), h], dim=1)
            lengths = lengths + 1
        h = self.dropout(h + self.positions[: h.shape[1]].to(h.dtype))
        real = torch.arange(h.shape[1], device=h.device)[None, :] < lengths.to(h.device)[:, None]
        h = self.encoder(h, src_key_padding_mask=~real)
        pooled = h[:, 0] if self.pooling == "cls" else _masked_mean(h, real)
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
    _check_inputs(vocab_size, input_dim)
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
        _positive(name, v)
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
        dropout=_check_dropout(dropout),
        max_length=max_length,
        pooling=pooling,
    )
