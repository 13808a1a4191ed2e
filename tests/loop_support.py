"""A stand-in for the worker session the training loop runs in, without Ray.

The loop only asks its session for a device, a model wrapper, a dataset shard, a checkpoint to
resume from and somewhere to report; these two classes answer exactly that, so the loop's own
logic (epochs, metrics, checkpoints, early stopping) is tested in-process.
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Optional

import numpy as np
import torch


class ColumnBatches:
    """Stands for a dataset shard: the loop only calls iter_torch_batches. Columns are numpy
    arrays or tensors of equal length, yielded in order and cast to the dtypes asked for."""

    def __init__(self, columns: dict):
        self.columns = {k: torch.from_numpy(v) if isinstance(v, np.ndarray) else v for k, v in columns.items()}

    def iter_torch_batches(self, *, batch_size, dtypes, device, **shuffle):
        assert set(dtypes) == set(self.columns)
        n = len(self.columns["y"])
        for i in range(0, n, batch_size):
            yield {k: v[i : i + batch_size].to(dtypes[k]) for k, v in self.columns.items()}


class StandInSession:
    """One rank of one; records every report as (metrics, checkpoint file names) and, when
    `keep` is a folder, copies each reported checkpoint to keep/epoch<N>."""

    rank, world_size = 0, 1

    def __init__(self, data: ColumnBatches, keep: Optional[Path] = None, splits: Optional[dict] = None):
        # `splits`: a dataset per name ("train", "validation"); without it every name gets `data`
        self.data, self.keep, self.splits, self.reports = data, keep, splits or {}, []

    def device(self):
        return torch.device("cpu")

    def prepare_model(self, model):
        return model

    def dataset(self, name):
        return self.splits.get(name, self.data)

    def get_checkpoint(self):
        return None

    def report(self, metrics, checkpoint_dir):
        files = sorted(p.name for p in Path(checkpoint_dir).iterdir()) if checkpoint_dir else []
        if checkpoint_dir and self.keep is not None:
            shutil.copytree(checkpoint_dir, Path(self.keep) / f"epoch{metrics['epoch']}")
        self.reports.append((dict(metrics), files))
