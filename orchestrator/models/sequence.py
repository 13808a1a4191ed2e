"""What the sequence models share (models/rnn.py, models/transformer.py): input checks and pooling.

Both models take `forward(x, lengths) -> [batch, num_outputs]`:
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

from typing import Optional

import torch
from torch import Tensor

PAD = 0  # orchestrator.data.text.PAD; kept literal so this module imports no data code


def positive(name: str, v) -> int:
    if isinstance(v, bool) or not isinstance(v, int) or v < 1:
        raise ValueError(f"{name} must be a positive integer, got {v!r}")
    return v


def check_inputs(vocab_size: Optional[int], input_dim: Optional[int]) -> None:
    if (vocab_size is None) == (input_dim is None):
        raise ValueError("give exactly one of vocab_size (text token ids) or input_dim (numeric sequences)")
    positive("vocab_size" if vocab_size is not None else "input_dim", vocab_size if vocab_size is not None else input_dim)


def check_dropout(dropout: float) -> float:
    if not isinstance(dropout, (int, float)) or isinstance(dropout, bool) or not 0.0 <= dropout < 1.0:
        raise ValueError(f"dropout must be in [0, 1), got {dropout!r}")
    return float(dropout)


def check_lengths(x: Tensor, lengths: Tensor) -> Tensor:
    """lengths as a CPU int64 tensor, checked against x (no device sync when they already are,
    as models.build.forward passes them)."""
    lengths = torch.as_tensor(lengths).to("cpu", torch.int64)
    if lengths.dim() != 1 or lengths.shape[0] != x.shape[0]:
        raise ValueError(f"lengths must be a 1-D tensor of {x.shape[0]} entries, got shape {tuple(lengths.shape)}")
    if lengths.numel() and (int(lengths.min()) < 1 or int(lengths.max()) > x.shape[1]):
        raise ValueError(f"lengths must be between 1 and the padded length {x.shape[1]}, got {lengths.tolist()}")
    return lengths


def masked_mean(h: Tensor, mask: Tensor) -> Tensor:
    """Mean over real steps: h [B, T, D], mask [B, T] True at real steps."""
    m = mask.unsqueeze(-1).to(h.dtype)
    return (h * m).sum(dim=1) / m.sum(dim=1).clamp_min(1.0)


def masked_max(h: Tensor, mask: Tensor) -> Tensor:
    """Per-unit maximum over real steps: h [B, T, D], mask [B, T] True at real steps (every row has one)."""
    return h.masked_fill(~mask.unsqueeze(-1), float("-inf")).amax(dim=1)
