"""Ingest benchmark: rows/s of what a training worker iterates vs a torch DataLoader over the same
rows held in memory.

    .venv/bin/python -m bench.ingest SPEC [--epochs E] [--threads T] --out FILE

Starts Ray as the CLI does (orchestrator.runtime.init_ray), prepares the spec's data with the
pipeline's own prepare_data, and takes the training split the way Ray Train hands it to one
worker (streaming_split(1, equal=True), which DataConfig calls). Each epoch then iterates that
shard with iter_torch_batches at the spec's batch size and the local shuffle buffer and seed the
training loop uses (orchestrator/train/loop.py), and once more without the shuffle buffer. The
baseline is the same rows as two in-memory tensors under the usual torch DataLoader
(TensorDataset, batch_size=B, shuffle=True: one __getitem__ per row and a collate); a DataLoader
with a shuffled BatchSampler (one indexing per batch, the fastest way to batch tensors) is
recorded beside it as a ceiling. Steady state: the
first epoch is skipped, the median of the others kept.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path


def _rate(rows: int, seconds: list[float]) -> float:
    steady = seconds[1:] or seconds
    return rows / statistics.median(steady)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("spec", type=Path)
    ap.add_argument("--epochs", type=int, default=4)
    ap.add_argument("--threads", type=int, default=1, help="torch threads, as one worker on this machine has")
    ap.add_argument("--out", type=Path, required=True)
    args = ap.parse_args()

    import numpy as np
    import torch
    from torch.utils.data import BatchSampler, DataLoader, RandomSampler, TensorDataset

    from orchestrator.data.ingest import prepare_data
    from orchestrator.runtime import init_ray
    from orchestrator.spec import load_spec

    torch.set_num_threads(args.threads)
    spec = load_spec(args.spec)
    bs, seed = spec.train.batch_size, spec.train.seed
    init_ray(code_dirs=[str(spec.base_dir)])
    prepared = prepare_data(spec)
    train = prepared.transformed["train"]
    y_dtype = torch.int64 if prepared.preprocessor.task == "classification" else torch.float32
    dtypes = {"x": torch.float32, "y": y_dtype}
    shard = train.streaming_split(1, equal=True)[0]

    def ray_epoch(epoch: int, shuffle: bool) -> tuple[int, float]:
        kw = dict(local_shuffle_buffer_size=max(4 * bs, 256), local_shuffle_seed=seed * 1000 + epoch) if shuffle else {}
        t0, rows = time.perf_counter(), 0
        for b in shard.iter_torch_batches(batch_size=bs, dtypes=dtypes, device="cpu", **kw):
            rows += len(b["y"])
        return rows, time.perf_counter() - t0

    results: dict[str, dict] = {}
    for name, shuffle in (("ray_data_shard", True), ("ray_data_shard_no_shuffle", False)):
        runs = [ray_epoch(e, shuffle) for e in range(args.epochs)]
        results[name] = {
            "rows": runs[0][0],
            "epoch_s": [round(s, 4) for _, s in runs],
            "rows_per_s": round(_rate(runs[0][0], [s for _, s in runs]), 1),
        }

    parts = list(train.iter_batches(batch_size=None, batch_format="numpy"))
    x = torch.from_numpy(np.concatenate([p["x"] for p in parts])).float()
    y = torch.from_numpy(np.concatenate([p["y"] for p in parts])).to(y_dtype)
    tensors = TensorDataset(x, y)

    def loader_epoch(loader) -> tuple[int, float]:
        t0, rows = time.perf_counter(), 0
        for _, yb in loader:
            rows += len(yb)
        return rows, time.perf_counter() - t0

    g = torch.Generator().manual_seed(seed)
    loaders = {
        "dataloader_in_memory": DataLoader(tensors, batch_size=bs, shuffle=True, generator=g),
        "dataloader_in_memory_batched": DataLoader(
            tensors, sampler=BatchSampler(RandomSampler(tensors, generator=g), bs, drop_last=False), batch_size=None
        ),
    }
    for name, loader in loaders.items():
        runs = [loader_epoch(loader) for _ in range(args.epochs)]
        results[name] = {
            "rows": runs[0][0],
            "epoch_s": [round(s, 4) for _, s in runs],
            "rows_per_s": round(_rate(runs[0][0], [s for _, s in runs]), 1),
        }

    base = results["dataloader_in_memory"]["rows_per_s"]
    out = {
        "batch_size": bs,
        "epochs": args.epochs,
        "torch_threads": args.threads,
        "train_rows": len(y),
        "blocks": train.num_blocks() if hasattr(train, "num_blocks") else None,
        **results,
        "ratio_ray_data_over_dataloader": round(results["ray_data_shard"]["rows_per_s"] / base, 4),
        "ratio_ray_data_no_shuffle_over_dataloader": round(results["ray_data_shard_no_shuffle"]["rows_per_s"] / base, 4),
        "ratio_ray_data_over_batched_dataloader": round(
            results["ray_data_shard"]["rows_per_s"] / results["dataloader_in_memory_batched"]["rows_per_s"], 4
        ),
    }
    args.out.write_text(json.dumps(out, indent=2))
    import ray

    ray.shutdown()


if __name__ == "__main__":
    main()
