"""User model factories for tests (loaded through model.factory, as a user's would be)."""

from __future__ import annotations

import math

from torch import nn


class _NaN(nn.Module):
    def forward(self, x):
        return x * math.nan


def flaky(input_shape, num_outputs, dropout, mode="ok"):
    """mode ok: a small MLP; raise: fails while building; nan: outputs NaN (the loss diverges)."""
    if mode == "raise":
        raise RuntimeError("boom: this model cannot be built")
    layers = [nn.Flatten(), nn.Linear(int(math.prod(input_shape)), 16), nn.ReLU(), nn.Linear(16, num_outputs)]
    if mode == "nan":
        layers.append(_NaN())
    return nn.Sequential(*layers)
