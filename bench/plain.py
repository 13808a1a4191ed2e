"""The plain PyTorch side of the epoch benchmark: the job spec's model, optimizer, loss and batch
size trained by a hand-written loop over in-memory tensors, with no Ray anywhere.

    .venv/bin/python -m bench.plain SPEC --workers N --threads T [--epochs E] [--device cpu|cuda] --out FILE

The data are the spec's training and validation splits, computed as the pipeline computes them
(orchestrator.data.preprocess: the same seeded row hash for the split, the same standardisation
fitted on the training rows), so both sides train on the same rows of the same shape. Each epoch
draws a seeded permutation; with N > 1 workers the processes form a torch.distributed group
(gloo on CPU, NCCL on GPU), wrap the model in DistributedDataParallel and each take an equal,
disjoint slice of the permutation. Like the orchestrator's loop, an epoch's time covers the
training pass, the all-reduce of its sums and rank 0 scoring the validation split; each process
uses T torch threads. Rank 0 writes {"epoch_times_s": [...], ...} to FILE.
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import time
from pathlib import Path

import numpy as np
import pandas as pd


def fitted_splits(spec) -> tuple[dict, "object"]:
    """{"train": (x, y), "validation": (x, y)} as numpy arrays, and the fitted Preprocessor, the
    pipeline's way (data/ingest.py: label present, row-hash split, statistics of the train rows)."""
    from orchestrator.data.kinds.image import ImageInput
    from orchestrator.data.kinds.table import TableInput
    from orchestrator.data.preprocess import Preprocessor, assign_splits
    from orchestrator.spec import resolve_source

    d = spec.data
    src = resolve_source(spec)
    if d.prepare and not os.path.exists(src):
        from orchestrator.data.bundled import write_bundled

        write_bundled(d.prepare, src)
    df = pd.read_parquet(src) if d.format == "parquet" else pd.read_csv(src)
    df = df[df[d.label].notna()]
    image = d.image.column if d.image else None
    features = [image] if image else (d.features if d.features is not None else [c for c in df.columns if c != d.label])
    df = df[features + [d.label]]
    codes = assign_splits(df, d.seed, (d.split.train, d.split.validation, d.split.test))
    train = df[codes == 0]
    task = d.task or ("regression" if pd.api.types.is_float_dtype(df[d.label]) else "classification")
    if image:
        flat = np.stack([np.asarray(v, dtype=np.float64).reshape(-1) for v in train[image]])
        state = ImageInput(column=image, shape=list(d.image.shape), mean=float(flat.mean()), std=float(flat.std()) or 1.0)
    else:
        values = train[features].astype(np.float64)
        state = TableInput(
            numeric=list(features),
            means=[float(m) for m in values.mean()],
            stds=[float(s) if s > 0 else 1.0 for s in values.std(ddof=0)],
        )
    pre = Preprocessor(task=task, label=d.label, input=state, train_rows=len(train))
    if task == "classification":
        pre.classes = sorted(train[d.label].unique().tolist())
    else:
        pre.target_mean, pre.target_std = float(train[d.label].mean()), float(train[d.label].std(ddof=0)) or 1.0
    out = {}
    for code, name in ((0, "train"), (1, "validation")):
        t = pre.transform(df[codes == code])
        out[name] = (t["x"], t["y"])
    return out, pre


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def worker(rank: int, world: int, args: argparse.Namespace, port: int) -> None:
    import torch
    import torch.distributed as dist
    from torch import nn

    from orchestrator.models.build import build_model, forward
    from orchestrator.spec import load_spec
    from orchestrator.train.loop import lr_factor, make_loss, make_optimizer

    torch.set_num_threads(args.threads)
    on_gpu = args.device == "cuda"
    device = torch.device(f"cuda:{rank}" if on_gpu else "cpu")
    if on_gpu:
        torch.cuda.set_device(device)
    if world > 1:
        dist.init_process_group("nccl" if on_gpu else "gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world)
    spec = load_spec(args.spec)
    t = spec.train
    epochs = args.epochs or t.epochs
    splits, pre = fitted_splits(spec)
    y_dtype = torch.int64 if pre.task == "classification" else torch.float32
    x_train, y_train = torch.from_numpy(splits["train"][0]).to(device), torch.from_numpy(splits["train"][1]).to(y_dtype).to(device)
    x_val, y_val = torch.from_numpy(splits["validation"][0]).to(device), torch.from_numpy(splits["validation"][1]).to(y_dtype).to(device)
    model_spec = spec.model.model_dump(mode="json")
    torch.manual_seed(t.seed)
    model = build_model(model_spec, pre.input_shape, pre.num_outputs, t.dropout).to(device)
    optimizer = make_optimizer(model.parameters(), t)
    raw = model
    if world > 1:
        model = nn.parallel.DistributedDataParallel(model, device_ids=[rank] if on_gpu else None)
    loss_fn, eval_loss = make_loss(pre.task, t.label_smoothing), make_loss(pre.task, 0.0)
    amp = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(args.amp) if on_gpu else None
    scaler = torch.amp.GradScaler("cuda", enabled=amp == torch.float16)
    classify = pre.task == "classification"
    n = len(x_train)
    per_rank = n // world if world > 1 else n
    times, val_acc, train_loss = [], None, None
    for epoch in range(epochs):
        if world > 1:
            dist.barrier()
        if on_gpu:
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        for g in optimizer.param_groups:
            g["lr"] = t.lr * lr_factor(t, epoch)
        perm = torch.randperm(n, generator=torch.Generator().manual_seed(t.seed * 1000 + epoch)).to(device)
        mine = perm[rank * per_rank : (rank + 1) * per_rank]
        model.train()
        sums = torch.zeros(2, dtype=torch.float64, device=device)
        for i in range(0, per_rank, t.batch_size):
            idx = mine[i : i + t.batch_size]
            x, y = x_train[idx], y_train[idx]
            with torch.autocast(device_type=device.type, dtype=amp or torch.float32, enabled=amp is not None):
                out = forward(model, x, model_spec)
                loss = loss_fn(out.float(), y) if classify else loss_fn(out.float().reshape(-1), y)
            optimizer.zero_grad(set_to_none=True)
            scaler.scale(loss / len(y)).backward()
            if t.grad_clip:
                scaler.unscale_(optimizer)
                nn.utils.clip_grad_norm_(model.parameters(), t.grad_clip)
            scaler.step(optimizer)
            scaler.update()
            sums[0] += loss.detach().double()
            sums[1] += len(y)
        if world > 1:
            dist.all_reduce(sums)
        train_loss = (sums[0] / sums[1]).item()
        if rank == 0:  # the whole validation split on the unwrapped model, as the orchestrator's rank 0 does
            raw.eval()
            correct, total = 0.0, 0.0
            with torch.no_grad():
                for i in range(0, len(x_val), 512):
                    x, y = x_val[i : i + 512], y_val[i : i + 512]
                    out = forward(raw, x, model_spec).float()
                    total += (eval_loss(out, y) if classify else eval_loss(out.reshape(-1), y)).item()
                    if classify:
                        correct += (out.argmax(dim=1) == y).sum().item()
            val_acc = correct / max(len(x_val), 1) if classify else None
        if world > 1:
            dist.barrier()  # where the orchestrator broadcasts its early-stopping decision
        if on_gpu:
            torch.cuda.synchronize()
        times.append(time.perf_counter() - t0)
    if rank == 0:
        Path(args.out).write_text(
            json.dumps(
                {
                    "epoch_times_s": times,
                    "workers": world,
                    "torch_threads": args.threads,
                    "device": args.device,
                    "amp": args.amp if amp else None,
                    "train_rows": n,
                    "rows_per_worker": per_rank,
                    "steps_per_epoch": -(-per_rank // t.batch_size),
                    "train_loss": train_loss,
                    "val_accuracy": val_acc,
                },
                indent=2,
            )
        )
    if world > 1:
        dist.destroy_process_group()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("spec", type=Path)
    ap.add_argument("--workers", type=int, default=1)
    ap.add_argument("--threads", type=int, default=1, help="torch threads in each process")
    ap.add_argument("--epochs", type=int, help="default: the spec's train.epochs")
    ap.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    ap.add_argument("--amp", choices=("off", "bf16", "fp16"), default="off", help="autocast dtype (GPU only)")
    ap.add_argument("--out", type=Path, required=True)
    args = ap.parse_args()
    os.environ.setdefault("OMP_NUM_THREADS", str(args.threads))
    if args.workers == 1:
        worker(0, 1, args, 0)
        return
    import torch.multiprocessing as mp

    mp.spawn(worker, args=(args.workers, args, free_port()), nprocs=args.workers, join=True)


if __name__ == "__main__":
    main()
