"""rnn: a recurrent network (LSTM or GRU) over text ids or numeric steps (model.arch: rnn)."""

from __future__ import annotations

from typing import Optional

import torch
from torch import Tensor, nn
from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence

from orchestrator.models.registry import Architecture, ModelInputs, sequence_inputs
from orchestrator.models.sequence import PAD, check_dropout, check_inputs, check_lengths, masked_max, masked_mean, positive
from orchestrator.spec import RNNSpec

RNN_CELLS = {"lstm": nn.LSTM, "gru": nn.GRU}
RNN_POOLING = ("last", "mean", "max")


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
        lengths = check_lengths(x, lengths)
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
            pooled = masked_mean(seq, mask) if self.pooling == "mean" else masked_max(seq, mask)
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
    check_inputs(vocab_size, input_dim)
    if cell not in RNN_CELLS:
        raise ValueError(f"cell must be one of {sorted(RNN_CELLS)}, got {cell!r}")
    if pooling not in RNN_POOLING:
        raise ValueError(f"pooling must be one of {list(RNN_POOLING)} for an rnn, got {pooling!r}")
    for name, v in (("num_outputs", num_outputs), ("hidden", hidden), ("layers", layers)):
        positive(name, v)
    if vocab_size is not None:
        positive("embedding", embedding)
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
        dropout=check_dropout(dropout),
    )


def build(spec: RNNSpec, inputs: ModelInputs) -> nn.Module:
    return build_rnn(
        cell=spec.cell,
        hidden=int(spec.hidden),
        layers=int(spec.layers),
        bidirectional=bool(spec.bidirectional),
        embedding=int(spec.embedding),
        pooling=spec.pooling,
        **sequence_inputs("rnn", inputs),
    )


ARCHITECTURE = Architecture(name="rnn", spec=RNNSpec, build=build)
