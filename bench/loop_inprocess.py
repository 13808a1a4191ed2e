"""The orchestrator's training loop run in this process, without Ray, against bench/plain.py's loop.

    .venv/bin/python -m bench.loop_inprocess jobs/digits-cnn.yaml --epochs 10 --repeats 2

Both sides get the same spec (one worker, its tune section dropped), rows, model, optimizer and
one torch thread; the loop (orchestrator/train/loop.py run_loop) runs on the tests' stand-in
session (tests/loop_support.py), which hands it the splits as in-memory tensors, as a worker
holds them when the split is materialised.
The steady epoch (first one skipped, median) of each is printed with their ratio. Set beside the
suite's `epoch` ratio (the same loop inside a Ray Train worker), it tells the loop's own cost per
epoch apart from the cost of running inside Ray.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import statistics
import tempfile
from pathlib import Path
from types import SimpleNamespace

import torch
import yaml

from bench.plain import fitted_splits, worker
from orchestrator.spec import load_spec, resolve_source
from orchestrator.train.loop import run_loop
from orchestrator.train.plan import ClusterResources, build_loop_config, plan_workers
from tests.loop_support import ColumnBatches, StandInSession


def one_worker_spec(path: Path, epochs: int) -> dict:
    """The spec at `path` as one training run: one worker, `epochs` epochs, no search, gate or
    serving, its data source as an absolute path (the spec is rewritten elsewhere)."""
    d = yaml.safe_load(path.read_text())
    for key in ("tune", "promote", "serve"):
        d.pop(key, None)
    d["scaling"] = {"workers": 1}
    d["train"]["epochs"] = epochs
    d["data"]["source"] = resolve_source(load_spec(path))
    return d


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("spec", type=Path)
    ap.add_argument("--epochs", type=int, default=10)
    ap.add_argument("--repeats", type=int, default=2)
    a = ap.parse_args()
    d = one_worker_spec(a.spec, a.epochs)
    torch.set_num_threads(1)
    with tempfile.TemporaryDirectory() as tmp:
        one = Path(tmp) / "one-worker.yaml"
        one.write_text(yaml.safe_dump(d))
        spec = load_spec(one)
        for _ in range(a.repeats):
            out = Path(tmp) / "plain.json"
            worker(0, 1, argparse.Namespace(spec=one, threads=1, epochs=a.epochs, device="cpu", amp="off", out=out), 0)
            plain = statistics.median(json.loads(out.read_text())["epoch_times_s"][1:])
            splits, pre = fitted_splits(spec)
            config = build_loop_config(
                spec, SimpleNamespace(preprocessor=pre), plan_workers(spec.scaling, ClusterResources(cpus=2, gpus=0))
            )
            config = dataclasses.replace(config, in_memory=True, torch_threads=1)
            data = {n: ColumnBatches({"x": torch.from_numpy(x), "y": torch.from_numpy(y)}) for n, (x, y) in splits.items()}
            session = StandInSession(data["train"], splits=data)
            run_loop(config, session)
            loop = statistics.median([m["epoch_time_s"] for m, _ in session.reports][1:])
            print(f"plain PyTorch {plain:.4f} s   orchestrator loop in-process {loop:.4f} s   ratio {loop / plain:.3f}")


if __name__ == "__main__":
    main()
