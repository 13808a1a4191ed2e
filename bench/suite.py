"""The training-speed benchmark suite: `python -m bench` (docs/benchmarks.md).

Every figure is a ratio of two things measured side by side in this one run, on this machine:
the orchestrator (its real CLI, in its own process, as a user runs it) against plain PyTorch on
the same model, data, batch size and threads (bench/plain.py), Ray Data ingest against a
DataLoader (bench/ingest.py), and the start-up phases the pipeline records in each run
directory's timings.json. This process never starts Ray itself: each measurement runs in a child
process, one at a time, so they do not share the CPUs.
"""

from __future__ import annotations

import argparse
import datetime
import json
import math
import os
import platform
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Optional

import yaml

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "bench" / "results"
DATA = ROOT / "bench" / "data"
SECTIONS = ("epoch", "ingest", "startup", "quickstart", "asha", "serve", "gpu")
PY = sys.executable
CLI = str(Path(sys.executable).parent / "orchestrator")

# The goals of issue 14: (key in "figures", label, comparison, goal)
GOALS = (
    ("epoch_ratio_mlp_1w", "epoch time vs plain PyTorch, 1 worker, tabular MLP", "<=", 1.10),
    ("epoch_ratio_cnn_1w", "epoch time vs plain PyTorch, 1 worker, digits CNN", "<=", 1.10),
    ("scaling_mlp_2w_over_1w", "2-worker epoch / 1-worker epoch, tabular MLP", "<=", 0.65),
    ("ingest_ratio", "ingest rows/s vs in-memory DataLoader", ">=", 0.8),
    ("start_to_first_step_2w_s", "`orchestrator train` start to first step, 2 workers (s)", "<=", 10.0),
    ("quickstart_wall_s", "quickstart `orchestrator run jobs/digits-cnn.yaml` (s)", "<=", 90.0),
)


# ------------------------------------------------------------------------------------ helpers


def steady(times: list[float]) -> float:
    """Steady-state epoch time: the first epoch skipped, the median of the rest."""
    rest = times[1:] or times
    return statistics.median(rest)


def run(cmd: list[str], log: Path, timeout: float, ok=(0,)) -> float:
    """Run a child process with its output in `log`; returns its wall time. A failure raises with the log's tail."""
    env = {**os.environ, "COLUMNS": "200", "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))}
    t0 = time.perf_counter()
    with open(log, "w") as f:
        p = subprocess.run(cmd, cwd=ROOT, stdout=f, stderr=subprocess.STDOUT, env=env, timeout=timeout)
    wall = time.perf_counter() - t0
    if p.returncode not in ok:
        tail = "\n".join(log.read_text(errors="replace").splitlines()[-25:])
        raise RuntimeError(f"{' '.join(cmd)} exited with {p.returncode}; the end of {log}:\n{tail}")
    return wall


def git_commit() -> dict:
    def git(*a):
        return subprocess.run(["git", *a], cwd=ROOT, capture_output=True, text=True).stdout.strip()

    return {"commit": git("rev-parse", "--short", "HEAD"), "dirty": bool(git("status", "--porcelain", "--untracked-files=no"))}


def machine() -> dict:
    import ray
    import torch

    return {
        "platform": platform.platform(),
        "python": platform.python_version(),
        "cpus": os.cpu_count(),
        "torch": torch.__version__,
        "ray": ray.__version__,
        "cuda": torch.cuda.is_available(),
        "gpus": torch.cuda.device_count() if torch.cuda.is_available() else 0,
    }


def worker_plan(workers: int, gpus_per_worker: float = 0):
    """The orchestrator's own plan for this machine (as an embedded Ray sees it): CPUs and torch threads per worker."""
    import torch

    from orchestrator.spec import ScalingSpec
    from orchestrator.train.plan import ClusterResources, plan_workers

    gpus = torch.cuda.device_count() if torch.cuda.is_available() else 0
    return plan_workers(
        ScalingSpec(workers=workers, gpus_per_worker=gpus_per_worker), ClusterResources(cpus=float(os.cpu_count() or 1), gpus=float(gpus))
    )


# --------------------------------------------------------------------------------- the specs


def tabular_data(rows: int) -> Path:
    """bench_asha's seeded 120k x 40, 5-class table (the issue's), or its first `rows` rows."""
    full = DATA / "asha-tabular.parquet"
    if not full.exists():
        sys.path.insert(0, str(ROOT / "bench"))
        from bench_asha import make_tabular

        make_tabular(full)
    if rows >= 120_000:
        return full
    part = DATA / f"speed-tabular-{rows}.parquet"
    if not part.exists():
        import pandas as pd

        pd.read_parquet(full).head(rows).to_parquet(part, index=False)
    return part


def write_spec(work: Path, model: str, workers: int, epochs: int, rows: int, gpu: bool = False) -> Path:
    """A train-only spec: the tabular MLP (bench/specs/asha-tabular.yaml's model and training settings)
    or the digits CNN (jobs/digits-cnn.yaml's), without their tune sections."""
    if model == "mlp":
        d = yaml.safe_load((ROOT / "bench" / "specs" / "asha-tabular.yaml").read_text())
        d["data"]["source"] = str(tabular_data(rows))
    else:
        d = yaml.safe_load((ROOT / "jobs" / "digits-cnn.yaml").read_text())
        d["data"]["source"] = str(ROOT / "jobs" / d["data"]["source"])
        d.pop("promote", None)
    d.pop("tune", None)
    d["name"] = f"speed-{model}-{workers}w" + ("-gpu" if gpu else "")
    d["train"]["epochs"] = epochs
    d["scaling"] = {"workers": workers, **({"gpus_per_worker": 1} if gpu else {})}
    if gpu:
        d["train"]["mixed_precision"] = "bf16"
    d["checkpoint"] = {"keep": 1, "metric": "val_accuracy"}
    path = work / f"{d['name']}.yaml"
    path.write_text(yaml.safe_dump(d, sort_keys=False))
    return path


def orchestrator_train(work: Path, spec: Path, timeout: float) -> dict:
    """`orchestrator train SPEC` in its own process; its epoch times and phases from the run directory's files."""
    name = spec.stem
    wall = run([CLI, "train", str(spec), "-o", str(work / "runs"), "--run-name", name], work / f"{name}.log", timeout)
    run_dir = work / "runs" / name
    epochs = json.loads((run_dir / "metrics.json").read_text())
    timings = json.loads((run_dir / "timings.json").read_text())
    times = [e["epoch_time_s"] for e in epochs]
    return {
        "epoch_times_s": [round(t, 4) for t in times],
        "steady_epoch_s": round(steady(times), 4),
        "wall_s": round(wall, 2),
        "val_accuracy": epochs[-1].get("val_accuracy"),
        "world_size": epochs[-1].get("world_size"),
        "timings": timings,
        "run_dir": str(run_dir),
    }


def plain_train(work: Path, spec: Path, workers: int, threads: int, timeout: float, device: str = "cpu", amp: str = "off") -> dict:
    out = work / f"{spec.stem}-plain.json"
    wall = run(
        [
            PY,
            "-m",
            "bench.plain",
            str(spec),
            "--workers",
            str(workers),
            "--threads",
            str(threads),
            "--device",
            device,
            "--amp",
            amp,
            "--out",
            str(out),
        ],
        work / f"{spec.stem}-plain.log",
        timeout,
    )
    r = json.loads(out.read_text())
    r["epoch_times_s"] = [round(t, 4) for t in r["epoch_times_s"]]
    r["steady_epoch_s"] = round(steady(r["epoch_times_s"]), 4)
    r["wall_s"] = round(wall, 2)
    return r


# ---------------------------------------------------------------------------------- sections


MODELS = ("mlp", "cnn")


def section_epoch(work: Path, quick: bool, say, models: tuple[str, ...] = MODELS, worker_counts: tuple[int, ...] = (1, 2)) -> dict:
    sizes = {"mlp": (3 if quick else 6, 12_000 if quick else 120_000), "cnn": (3 if quick else 10, 0)}
    sizes = {m: sizes[m] for m in models}
    out: dict[str, Any] = {"steady_state": "first epoch skipped, median of the rest", "runs": {}}
    for model, (epochs, rows) in sizes.items():
        for workers in worker_counts:
            plan = worker_plan(workers)
            spec = write_spec(work, model, workers, epochs, rows)
            say(f"epoch: {model}, {workers} worker(s) x {plan.torch_threads} thread(s): plain PyTorch, then orchestrator train")
            plain = plain_train(work, spec, workers, plan.torch_threads, 900)
            orch = orchestrator_train(work, spec, 1200)
            key = f"{model}_{workers}w"
            out["runs"][key] = {
                "model": model,
                "workers": workers,
                "epochs": epochs,
                "train_rows": plain["train_rows"],
                "cpus_per_worker": plan.cpus_per_worker,
                "torch_threads_per_worker": plan.torch_threads,
                "orchestrator": orch,
                "plain": plain,
                "ratio_orchestrator_over_plain": round(orch["steady_epoch_s"] / plain["steady_epoch_s"], 4),
            }
    if set(worker_counts) == {1, 2}:  # the scaling figure compares the two
        for model in sizes:
            one, two = out["runs"][f"{model}_1w"], out["runs"][f"{model}_2w"]
            out[f"scaling_{model}"] = {
                "orchestrator_2w_over_1w": round(two["orchestrator"]["steady_epoch_s"] / one["orchestrator"]["steady_epoch_s"], 4),
                "plain_2w_over_1w": round(two["plain"]["steady_epoch_s"] / one["plain"]["steady_epoch_s"], 4),
            }
    return out


def section_ingest(work: Path, quick: bool, say) -> dict:
    spec = write_spec(work, "mlp", 1, 1, 12_000 if quick else 120_000)
    threads = worker_plan(1).torch_threads
    say(f"ingest: Ray Data shard vs in-memory DataLoader ({'12k' if quick else '120k'} rows, batch 256)")
    out = work / "ingest.json"
    run(
        [PY, "-m", "bench.ingest", str(spec), "--epochs", "2" if quick else "4", "--threads", str(threads), "--out", str(out)],
        work / "ingest.log",
        900,
    )
    return json.loads(out.read_text())


def import_times(work: Path, repeats: int) -> dict:
    """Wall time of a fresh interpreter importing the CLI, and the training driver (median of `repeats`);
    the heaviest top-level imports of the driver from -X importtime."""
    res = {}
    for label, module in (("python_only", None), ("cli", "orchestrator.cli.main"), ("train_driver", "orchestrator.train.driver")):
        walls = []
        for _ in range(repeats):
            t0 = time.perf_counter()
            subprocess.run([PY, "-c", f"import {module}" if module else "pass"], cwd=ROOT, check=True, capture_output=True)
            walls.append(time.perf_counter() - t0)
        res[f"{label}_s"] = round(statistics.median(walls), 3)
    p = subprocess.run(
        [PY, "-X", "importtime", "-c", "import orchestrator.train.driver"], cwd=ROOT, capture_output=True, text=True, check=True
    )
    direct = []  # the driver's own imports: one level (two spaces) below it in -X importtime's tree
    for line in p.stderr.splitlines():
        m = re.match(r"import time:\s+\d+ \|\s+(\d+) \| {3}(\S+)$", line)
        if m:
            direct.append((int(m.group(1)) / 1e6, m.group(2)))
    res["train_driver_heaviest_direct_imports_s"] = {name: round(s, 3) for s, name in sorted(direct, reverse=True)[:8]}
    return res


def section_startup(work: Path, quick: bool, say, epoch: Optional[dict]) -> dict:
    if epoch and "mlp_2w" in epoch["runs"]:
        orch = epoch["runs"]["mlp_2w"]["orchestrator"]
        source = "the epoch section's 2-worker tabular MLP run"
    else:
        say("startup: orchestrator train, tabular MLP, 2 workers, 2 epochs")
        orch = orchestrator_train(work, write_spec(work, "mlp", 2, 2, 12_000 if quick else 120_000), 900)
        source = "a 2-epoch, 2-worker tabular MLP run"
    say("startup: import times")
    t = orch["timings"]
    after = t["total_s"] + t["process_start_s"]
    return {
        "source": source,
        "timings": t,
        "command_wall_s": orch["wall_s"],
        "start_to_first_step_s": t.get("start_to_first_step_s"),
        "last_epoch_to_exit_s": round(t["last_epoch_to_end_s"] + max(0.0, orch["wall_s"] - after), 3)
        if "last_epoch_to_end_s" in t
        else None,
        "after_pipeline_to_exit_s": round(max(0.0, orch["wall_s"] - after), 3),
        "imports": import_times(work, 1 if quick else 3),
    }


def section_quickstart(work: Path, quick: bool, say) -> dict:
    spec = ROOT / "jobs" / "digits-cnn.yaml"
    if quick:  # the same job, small: 2 trials of 2 epochs
        d = yaml.safe_load(spec.read_text())
        d["data"]["source"] = str(ROOT / "jobs" / d["data"]["source"])
        d["train"]["epochs"], d["tune"]["num_samples"] = 2, 2
        spec = work / "quickstart-small.yaml"
        spec.write_text(yaml.safe_dump(d, sort_keys=False))
    say(f"quickstart: orchestrator run {spec.relative_to(ROOT) if spec.is_relative_to(ROOT) else spec}")
    from orchestrator.errors import NOT_PROMOTED_EXIT

    wall = run(
        [CLI, "run", str(spec), "-o", str(work / "runs"), "--run-name", "quickstart", "--no-serve"],
        work / "quickstart.log",
        1800,
        ok=(0, NOT_PROMOTED_EXIT),
    )
    run_dir = work / "runs" / "quickstart"
    summary = json.loads((run_dir / "summary.json").read_text())
    return {
        "spec": str(spec.relative_to(ROOT) if spec.is_relative_to(ROOT) else spec),
        "wall_s": round(wall, 2),
        "test_accuracy": summary["test"].get("test_accuracy"),
        "promoted": summary["promoted"],
        "trials": summary.get("trials"),
        "epochs_run": summary.get("epochs_run"),
        "timings": json.loads((run_dir / "timings.json").read_text()),
    }


def section_asha(work: Path, quick: bool, say) -> dict:
    epochs = 2 if quick else 3
    tabular_data(120_000)
    say(f"asha: bench/bench_asha.py --epochs {epochs} (27 trials with ASHA, then without early stopping)")
    out = work / "asha.json"
    run([PY, str(ROOT / "bench" / "bench_asha.py"), "--epochs", str(epochs), "--out", str(out)], work / "asha.log", 3600)
    return json.loads(out.read_text())


def section_serve(work: Path, quick: bool, say) -> dict:
    args = ["--hidden", "256", "256", "--duration", "1", "--rounds", "1", "--warmup", "0.5"] if quick else []
    say("serve: bench/bench_serve.py " + " ".join(args))
    out = work / "serve.json"
    run([PY, str(ROOT / "bench" / "bench_serve.py"), *args, "--out", str(out)], work / "serve.log", 1800)
    return json.loads(out.read_text())


def section_gpu(work: Path, quick: bool, say) -> dict:
    """bf16 autocast on the GPU: the orchestrator vs plain PyTorch (DDP over NCCL with 2 GPUs)."""
    import torch

    if not torch.cuda.is_available():
        say("gpu: no GPU: skipped")
        return {"skipped": "no GPU"}
    epochs, rows = (3, 12_000) if quick else (6, 120_000)
    out: dict[str, Any] = {"device": torch.cuda.get_device_name(0), "amp": "bf16", "runs": {}}
    for workers in (1, 2):
        if workers > torch.cuda.device_count():
            out["runs"][f"mlp_{workers}w"] = {"skipped": f"{workers} GPUs needed, {torch.cuda.device_count()} present"}
            continue
        plan = worker_plan(workers, gpus_per_worker=1)
        spec = write_spec(work, "mlp", workers, epochs, rows, gpu=True)
        say(f"gpu: mlp, {workers} worker(s), bf16: plain PyTorch, then orchestrator train")
        plain = plain_train(work, spec, workers, plan.torch_threads, 900, device="cuda", amp="bf16")
        orch = orchestrator_train(work, spec, 1200)
        out["runs"][f"mlp_{workers}w"] = {
            "orchestrator": orch,
            "plain": plain,
            "ratio_orchestrator_over_plain": round(orch["steady_epoch_s"] / plain["steady_epoch_s"], 4),
        }
    return out


# ------------------------------------------------------------------------------------ summary


def figures(res: dict) -> dict:
    """The headline figures (the goals' keys and a few more), from whatever sections ran."""
    f: dict[str, float] = {}
    ep = res.get("epoch")
    if ep:
        for key, r in ep["runs"].items():
            f[f"epoch_ratio_{key}"] = r["ratio_orchestrator_over_plain"]
        for m in MODELS:
            if f"scaling_{m}" in ep:
                f[f"scaling_{m}_2w_over_1w"] = ep[f"scaling_{m}"]["orchestrator_2w_over_1w"]
        if "scaling_mlp" in ep:
            f["plain_scaling_mlp_2w_over_1w"] = ep["scaling_mlp"]["plain_2w_over_1w"]
    if res.get("ingest"):
        f["ingest_ratio"] = res["ingest"]["ratio_ray_data_over_dataloader"]
    st = res.get("startup")
    if st and st.get("start_to_first_step_s") is not None:
        f["start_to_first_step_2w_s"] = st["start_to_first_step_s"]
        f["last_epoch_to_exit_2w_s"] = st["last_epoch_to_exit_s"]
    if res.get("quickstart"):
        f["quickstart_wall_s"] = res["quickstart"]["wall_s"]
        f["quickstart_test_accuracy"] = res["quickstart"]["test_accuracy"]
    if res.get("asha"):
        f["asha_time_ratio_asha_over_none"] = res["asha"]["time_ratio_asha_over_none"]
    if res.get("serve"):
        f["serve_over_baseline_c64"] = res["serve"]["serve_over_baseline"]["64"]
    return f


def goals(f: dict) -> list[dict]:
    rows = []
    for key, label, op, goal in GOALS:
        v = f.get(key)
        rows.append(
            {
                "key": key,
                "measure": label,
                "value": v,
                "goal": f"{op} {goal:g}",
                "met": None if v is None else (v <= goal if op == "<=" else v >= goal),
            }
        )
    return rows


def print_tables(res: dict, console) -> None:
    from rich.table import Table
    from rich.text import Text

    ep = res.get("epoch")
    if ep:
        t = Table(title="steady-state epoch time (first epoch skipped, median of the rest)", title_justify="left")
        for c in ("model", "workers x threads", "rows", "orchestrator s", "plain PyTorch s", "ratio"):
            t.add_column(c, justify="right" if c != "model" else "left")
        for r in ep["runs"].values():
            t.add_row(
                r["model"],
                f"{r['workers']} x {r['torch_threads_per_worker']}",
                str(r["train_rows"]),
                f"{r['orchestrator']['steady_epoch_s']:.3f}",
                f"{r['plain']['steady_epoch_s']:.3f}",
                f"{r['ratio_orchestrator_over_plain']:.2f}",
            )
        console.print(t)
        for m in (m for m in MODELS if f"scaling_{m}" in ep):
            s = ep[f"scaling_{m}"]
            console.print(
                f"2-worker / 1-worker epoch, {m}: orchestrator {s['orchestrator_2w_over_1w']:.2f}, plain PyTorch {s['plain_2w_over_1w']:.2f}",
                highlight=False,
            )
    ing = res.get("ingest")
    if ing:
        t = Table(title=f"ingest, rows/s (batch {ing['batch_size']}, {ing['train_rows']} rows)", title_justify="left")
        t.add_column("iterator")
        t.add_column("rows/s", justify="right")
        for k in ("ray_data_shard", "ray_data_shard_no_shuffle", "dataloader_in_memory", "dataloader_in_memory_batched"):
            t.add_row(k, f"{ing[k]['rows_per_s']:,.0f}")
        console.print(t)
    st = res.get("startup")
    if st:
        t = Table(title=f"start-up phases, s ({st['source']})", title_justify="left")
        t.add_column("phase")
        t.add_column("s", justify="right")
        t.add_row("process start to pipeline (interpreter, imports, spec)", f"{st['timings']['process_start_s']:.2f}")
        for k, v in st["timings"]["phases_s"].items():
            t.add_row(k, f"{v:.2f}")
        t.add_row("after the pipeline to exit (Ray shutdown)", f"{st['after_pipeline_to_exit_s']:.2f}")
        t.add_row(
            Text("start to first step", style="bold"),
            f"{st['start_to_first_step_s']:.2f}" if st["start_to_first_step_s"] is not None else "-",
        )
        t.add_row(
            Text("last epoch to exit", style="bold"), f"{st['last_epoch_to_exit_s']:.2f}" if st["last_epoch_to_exit_s"] is not None else "-"
        )
        console.print(t)
        im = st["imports"]
        console.print(
            f"imports in a fresh interpreter: python alone {im['python_only_s']:.2f} s, CLI {im['cli_s']:.2f} s, training driver {im['train_driver_s']:.2f} s",
            highlight=False,
        )
    if res.get("gpu", {}).get("skipped"):
        console.print(f"gpu: {res['gpu']['skipped']}: skipped", highlight=False)
    t = Table(title="goals (issue 14)", title_justify="left")
    for c in ("measure", "measured", "goal", "met"):
        t.add_column(c)
    for g in res["goals"]:
        v = g["value"]
        met = "-" if g["met"] is None else ("yes" if g["met"] else "no")
        t.add_row(
            Text(g["measure"]),
            "not run" if v is None else f"{v:.2f}",
            g["goal"],
            Text(met, style={"yes": "green", "no": "red"}.get(met, "")),
        )
    console.print(t)


def check_finite(obj, path="") -> None:
    """Every number in the results is finite (NaN would not survive JSON, and would mean a broken measurement)."""
    if isinstance(obj, dict):
        for k, v in obj.items():
            check_finite(v, f"{path}.{k}")
    elif isinstance(obj, list):
        for i, v in enumerate(obj):
            check_finite(v, f"{path}[{i}]")
    elif isinstance(obj, float) and not math.isfinite(obj):
        raise ValueError(f"{path}: {obj}")


def main(argv: Optional[list[str]] = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m bench", description="Training-speed benchmark suite (docs/benchmarks.md).")
    ap.add_argument("--only", default=",".join(SECTIONS), help=f"comma-separated sections to run, of: {','.join(SECTIONS)} (default: all)")
    ap.add_argument("--quick", action="store_true", help="small sizes and few epochs: a smoke test of the suite, not a measurement")
    ap.add_argument("--out", type=Path, help="result file (default bench/results/speed[-quick]-<date>-<commit>.json)")
    ap.add_argument(
        "--models", default=",".join(MODELS), help=f"comma-separated models of the epoch section, of: {','.join(MODELS)} (default: all)"
    )
    ap.add_argument(
        "--workers",
        default="1,2",
        help="comma-separated worker counts of the epoch section, of: 1,2 (default: both; the scaling figure needs both)",
    )
    ap.add_argument("--keep", action="store_true", help="keep the runs' folders and logs (their path is printed)")
    a = ap.parse_args(argv)
    only = [s.strip() for s in a.only.split(",") if s.strip()]
    unknown = [s for s in only if s not in SECTIONS]
    if unknown:
        ap.error(f"--only: unknown section(s) {', '.join(unknown)}; choose from {', '.join(SECTIONS)}")
    models = tuple(m.strip() for m in a.models.split(",") if m.strip())
    if not models or any(m not in MODELS for m in models):
        ap.error(f"--models: choose from {', '.join(MODELS)}")
    counts = [w.strip() for w in a.workers.split(",") if w.strip()]
    if not counts or any(w not in ("1", "2") for w in counts) or len(set(counts)) != len(counts):
        ap.error("--workers: choose from 1,2")
    worker_counts = tuple(sorted(map(int, counts)))

    from rich.console import Console

    console = Console()

    def say(msg: str) -> None:
        console.print(f"[{time.strftime('%H:%M:%S')}] {msg}", highlight=False, markup=False, soft_wrap=True)

    work = Path(tempfile.mkdtemp(prefix="bench-speed-"))
    git = git_commit()
    res: dict[str, Any] = {
        "command": "python -m bench " + " ".join(argv if argv is not None else sys.argv[1:]),
        **git,
        "date": datetime.datetime.now().isoformat(timespec="seconds"),
        "quick": a.quick,
        "sections": only,
        "models": list(models),
        "worker_counts": list(worker_counts),
        "machine": machine(),
        "load_average_before": [round(x, 2) for x in os.getloadavg()],
    }
    say(
        f"suite: {', '.join(only)}{' (quick)' if a.quick else ''}; load average {res['load_average_before']} on {os.cpu_count()} CPUs; work in {work}"
    )
    t0 = time.perf_counter()
    try:
        for name in only:
            if name == "startup":
                res["startup"] = section_startup(work, a.quick, say, res.get("epoch"))
            elif name == "epoch":
                res["epoch"] = section_epoch(work, a.quick, say, models, worker_counts)
            else:
                res[name] = globals()[f"section_{name}"](work, a.quick, say)
    except BaseException:
        console.print(f"runs and logs kept in {work}", highlight=False, markup=False)
        raise
    if not a.keep:
        shutil.rmtree(work, ignore_errors=True)
    res["wall_s"] = round(time.perf_counter() - t0, 1)
    res["load_average_after"] = [round(x, 2) for x in os.getloadavg()]
    res["figures"] = figures(res)
    res["goals"] = goals(res["figures"])
    check_finite(res)
    out = a.out or RESULTS / f"speed{'-quick' if a.quick else ''}-{datetime.date.today():%Y%m%d}-{git['commit']}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(res, indent=2) + "\n")
    print_tables(res, console)
    console.print(
        f"load average before/after: {res['load_average_before']} / {res['load_average_after']} on {os.cpu_count()} CPUs; "
        f"commit {git['commit']}{' (uncommitted changes)' if git['dirty'] else ''}; wrote {out}",
        highlight=False,
    )
    if a.keep:
        console.print(f"runs and logs kept in {work}", highlight=False)
    return 0
