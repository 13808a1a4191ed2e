"""Serving benchmark: Ray Serve with dynamic batching vs a plain per-request FastAPI + uvicorn server.

    .venv/bin/python bench/bench_serve.py [--hidden 4096 4096 4096] [--rounds 2] [--duration 6] [--threads 1]

One run, one machine, one model (an MLP on the breast-cancer features, hidden 4096x3 by default;
its forward pass is memory-bound, so one pass over 64 rows costs a fraction of 64 one-row passes),
loopback only:
  ceiling   the model's own forward throughput in-process (batch 1 and batch 64), no HTTP
  serve     orchestrator.serve.deployment.deploy() on Ray started as the CLI starts it (orchestrator.runtime.init_ray):
            Serve's HTTP ingress (HAProxy, RAY_SERVE_ENABLE_HA_PROXY=1, unless the environment sets
            it to 0: Serve's default Python proxy), one replica, @serve.batch
  baseline  the same FastAPI app (same validation and preprocessing code) under uvicorn, one
            worker, one forward pass per request in a thread pool as wide as the machine's cores
Both servers use the same torch.set_num_threads. The load generator (aiohttp, in this process)
keeps C requests of one record each in flight for a fixed time, at C = 1, 16 and 64, after a
warm-up; servers and levels are interleaved and repeated (--rounds) so that changes in the
machine's load hit both servers alike. It prints a table and writes bench/results/serve.json.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

RESULTS = ROOT / "bench" / "results" / "serve.json"
CONCURRENCY = (1, 16, 64)


# ---------------------------------------------------------------------------------- baseline


def baseline_server(checkpoint: str, port: int, threads: int, pool: int) -> None:
    """Plain FastAPI + uvicorn (one worker): every request runs its own forward pass."""
    from concurrent.futures import ThreadPoolExecutor

    import torch
    import uvicorn

    from orchestrator.serve.app import make_api
    from orchestrator.serve.runner import ModelRunner

    torch.set_num_threads(threads)
    runner = ModelRunner(checkpoint)
    executor = ThreadPoolExecutor(pool)

    async def infer(records):
        return await asyncio.get_running_loop().run_in_executor(executor, runner.predict, records)

    uvicorn.run(make_api(runner, infer), host="127.0.0.1", port=port, workers=1, log_level="warning", access_log=False)


# ------------------------------------------------------------------------------------- load


async def _load(url: str, bodies: list[bytes], concurrency: int, duration: float, max_requests: int) -> dict:
    """Keep `concurrency` one-record requests in flight for `duration` s; latencies of the 200s."""
    import aiohttp

    latencies: list[float] = []
    errors: dict[str, int] = {}
    sent = 0
    connector = aiohttp.TCPConnector(limit=concurrency)
    async with aiohttp.ClientSession(connector=connector, timeout=aiohttp.ClientTimeout(total=60)) as session:
        t0 = time.perf_counter()
        stop_at = t0 + duration

        async def worker(k: int) -> None:
            nonlocal sent
            i = k
            while time.perf_counter() < stop_at and sent < max_requests:
                sent += 1
                body = bodies[i % len(bodies)]
                i += concurrency
                start = time.perf_counter()
                try:
                    async with session.post(url, data=body, headers={"content-type": "application/json"}) as resp:
                        await resp.read()
                        status = resp.status
                except Exception as e:  # noqa: BLE001 - count every failure
                    status = type(e).__name__
                if status == 200:
                    latencies.append(time.perf_counter() - start)
                else:
                    errors[str(status)] = errors.get(str(status), 0) + 1

        await asyncio.gather(*(worker(k) for k in range(concurrency)))
        elapsed = time.perf_counter() - t0
    return {"latencies": latencies, "errors": errors, "seconds": elapsed}


def summarize(server: str, concurrency: int, runs: list[dict]) -> dict:
    """Pool the rounds: throughput = answered / measured time, percentiles over every latency."""
    lat = sorted(x for r in runs for x in r["latencies"])
    seconds = sum(r["seconds"] for r in runs)
    errors: dict[str, int] = {}
    for r in runs:
        for k, v in r["errors"].items():
            errors[k] = errors.get(k, 0) + v
    q = statistics.quantiles(lat, n=100, method="inclusive") if len(lat) >= 2 else [lat[0] if lat else float("nan")] * 99
    return {
        "server": server,
        "concurrency": concurrency,
        "ok": len(lat),
        "errors": errors,
        "seconds": round(seconds, 2),
        "throughput_rps": round(len(lat) / seconds, 1),
        "p50_ms": round(q[49] * 1000, 2),
        "p99_ms": round(q[98] * 1000, 2),
        "rounds_rps": [round(len(r["latencies"]) / r["seconds"], 1) for r in runs],
    }


def measure(urls: dict[str, str], bodies: list[bytes], *, rounds: int, duration: float, warmup: float, max_requests: int) -> list[dict]:
    """Every server at every concurrency, interleaved and repeated, so that drift in the machine's
    load (other processes) falls on both servers alike."""
    runs: dict[tuple[str, int], list[dict]] = {}
    names = list(urls)
    for rnd in range(rounds):
        for c in CONCURRENCY:
            for name in names if rnd % 2 == 0 else names[::-1]:
                url = f"{urls[name]}/predict"
                asyncio.run(_load(url, bodies, c, warmup, max_requests))
                r = asyncio.run(_load(url, bodies, c, duration, max_requests))
                runs.setdefault((name, c), []).append(r)
                rps = len(r["latencies"]) / r["seconds"]
                print(
                    f"  round {rnd + 1}  {name:8s} C={c:<3d} {rps:8.1f} req/s" + (f"  errors {r['errors']}" if r["errors"] else ""),
                    flush=True,
                )
    return [summarize(name, c, runs[(name, c)]) for name in names for c in CONCURRENCY]


def ceiling(checkpoint: Path, threads: int, seconds: float = 2.0) -> dict:
    """The model alone: forward passes per second at batch 1 and 64 (and with preprocessing)."""
    import torch

    from orchestrator.serve.runner import ModelRunner

    torch.set_num_threads(threads)
    runner = ModelRunner(checkpoint)
    out = {}
    for bs in (1, 64):
        x = torch.randn(bs, *runner.pre.input_shape)
        with torch.inference_mode():
            runner.model(x)
            n, t0 = 0, time.perf_counter()
            while time.perf_counter() - t0 < seconds:
                runner.model(x)
                n += 1
        out[f"forward_batch{bs}_rows_per_s"] = round(bs * n / (time.perf_counter() - t0), 1)
    return out


def wait_ready(url: str, timeout: float = 120) -> None:
    import httpx

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if httpx.get(f"{url}/healthz", timeout=2).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.3)
    raise RuntimeError(f"{url} did not come up within {timeout:g} s")


def check_answers(url: str, records: list[dict], expected: list) -> None:
    import httpx

    got = httpx.post(f"{url}/predict", json={"records": records[:20]}, timeout=60).json()["predictions"]
    if got != expected[:20]:
        raise RuntimeError(f"{url}: predictions differ from the model's own")


# ------------------------------------------------------------------------------------- main


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--hidden", type=int, nargs="+", default=[4096, 4096, 4096], help="MLP hidden layer widths.")
    ap.add_argument("--threads", type=int, default=1, help="torch.set_num_threads in both servers.")
    ap.add_argument("--duration", type=float, default=6.0, help="Seconds measured per server, concurrency level and round.")
    ap.add_argument("--rounds", type=int, default=2, help="Interleaved repetitions, pooled in the results.")
    ap.add_argument("--warmup", type=float, default=2.0, help="Seconds of load before each measurement.")
    ap.add_argument("--max-requests", type=int, default=50_000, help="Cap on requests per measurement.")
    ap.add_argument("--max-batch-size", type=int, default=64)
    ap.add_argument("--batch-wait-ms", type=float, default=5.0)
    ap.add_argument("--baseline-pool", type=int, default=os.cpu_count() or 1, help="Forward threads of the baseline.")
    ap.add_argument("--out", type=Path, default=RESULTS)
    ap.add_argument("--baseline-server", nargs=2, metavar=("CHECKPOINT", "PORT"), help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a.baseline_server:
        baseline_server(a.baseline_server[0], int(a.baseline_server[1]), a.threads, a.baseline_pool)
        return

    import tempfile

    import ray
    import torch

    from orchestrator.cli.serve import _quiet_serve_logs
    from orchestrator.serve.deployment import deploy
    from orchestrator.spec import ServeSpec
    from tests.serve_support import feature_records, free_port, make_checkpoint, offline_predictions

    _quiet_serve_logs(False)
    work = Path(tempfile.mkdtemp(prefix="bench-serve-"))
    print(f"training an MLP {a.hidden} on breast-cancer features ...", flush=True)
    ckpt, test = make_checkpoint(work / "ckpt", hidden=a.hidden, epochs=3, job="bench")
    from orchestrator.train.checkpoint import load_model

    columns = load_model(ckpt).preprocessor.feature_columns
    records = feature_records(test, columns)
    expected = offline_predictions(ckpt, test)
    bodies = [json.dumps(r).encode() for r in records]
    n_params = sum(p.numel() for p in load_model(ckpt).model.parameters())

    print("ceiling (model alone, in-process) ...", flush=True)
    ceil = ceiling(ckpt, a.threads)
    print(
        f"  forward: batch 1 {ceil['forward_batch1_rows_per_s']} rows/s, batch 64 {ceil['forward_batch64_rows_per_s']} rows/s", flush=True
    )

    cores = os.cpu_count() or 1
    load_before = os.getloadavg()
    port = free_port()
    proc = subprocess.Popen(
        [
            sys.executable,
            __file__,
            "--baseline-server",
            str(ckpt),
            str(port),
            "--threads",
            str(a.threads),
            "--baseline-pool",
            str(a.baseline_pool),
        ],
        cwd=ROOT,
    )
    from orchestrator.runtime import init_ray, serve_ingress

    # Serve's HTTP ingress: HAProxy, the opt-in fast path (RAY_SERVE_ENABLE_HA_PROXY=0 on the command
    # line measures Serve's default Python proxy instead)
    os.environ.setdefault("RAY_SERVE_ENABLE_HA_PROXY", "1")
    init_ray(num_cpus=cores)  # as `orchestrator serve` starts it
    ingress = "haproxy" if serve_ingress.get("haproxy") else "python-proxy"
    spec = ServeSpec(
        port=free_port(),
        max_batch_size=a.max_batch_size,
        batch_wait_timeout_s=a.batch_wait_ms / 1000,
        max_ongoing_requests=max(128, 2 * a.max_batch_size),
        max_queued_requests=-1,
        cpus_per_replica=1,
    )
    try:
        urls = {"baseline": f"http://127.0.0.1:{port}"}  # (b) plain FastAPI + uvicorn, its own process
        urls["serve"] = deploy(ckpt, spec, name="bench", torch_threads=a.threads)  # (a) Ray Serve
        for url in urls.values():
            wait_ready(url)
            check_answers(url, records, expected)
        print(
            f"baseline: FastAPI + uvicorn, 1 worker, per-request forward on {a.baseline_pool} threads\n"
            f"serve:    Ray Serve ({ingress} ingress), 1 replica, @serve.batch(max_batch_size={a.max_batch_size}, wait {a.batch_wait_ms:g} ms)",
            flush=True,
        )
        results = measure(urls, bodies, rounds=a.rounds, duration=a.duration, warmup=a.warmup, max_requests=a.max_requests)
    finally:
        proc.terminate()
        proc.wait(30)
        try:
            from ray import serve

            serve.shutdown()
        finally:
            ray.shutdown()

    load_after = os.getloadavg()
    by = {(r["server"], r["concurrency"]): r for r in results}
    speedup = {c: round(by[("serve", c)]["throughput_rps"] / max(by[("baseline", c)]["throughput_rps"], 1e-9), 2) for c in CONCURRENCY}
    report = {
        "command": "bench/bench_serve.py " + " ".join(sys.argv[1:]),
        "machine": {
            "cpus": cores,
            "platform": platform.platform(),
            "python": platform.python_version(),
            "torch": torch.__version__,
            "ray": ray.__version__,
            "load_average_1m_before_after": [round(load_before[0], 2), round(load_after[0], 2)],
        },
        "model": {"arch": "mlp", "hidden": a.hidden, "parameters": n_params, "inputs": len(columns)},
        "settings": {
            "torch_threads": a.threads,
            "duration_s": a.duration,
            "warmup_s": a.warmup,
            "rounds": a.rounds,
            "serve": {
                "ingress": ingress,
                "replicas": 1,
                "cpus_per_replica": 1,
                "max_batch_size": a.max_batch_size,
                "batch_wait_timeout_s": a.batch_wait_ms / 1000,
                "max_ongoing_requests": spec.max_ongoing_requests,
            },
            "baseline": {"uvicorn_workers": 1, "forward_threads": a.baseline_pool},
        },
        "ceiling": ceil,
        "results": results,
        "serve_over_baseline": speedup,
        "goal_2x_at_64_met": speedup[64] >= 2.0,
    }
    a.out.parent.mkdir(parents=True, exist_ok=True)
    a.out.write_text(json.dumps(report, indent=2) + "\n")

    print()
    print(f"{'server':9s} {'C':>3s} {'req/s':>9s} {'p50 ms':>8s} {'p99 ms':>8s} {'errors':>7s}")
    for r in results:
        print(
            f"{r['server']:9s} {r['concurrency']:3d} {r['throughput_rps']:9.1f} {r['p50_ms']:8.2f} {r['p99_ms']:8.2f} {sum(r['errors'].values()):7d}"
        )
    print(
        f"ceiling: forward {ceil['forward_batch1_rows_per_s']} rows/s at batch 1, {ceil['forward_batch64_rows_per_s']} rows/s at batch 64"
    )
    print(
        "serve / baseline throughput: "
        + ", ".join(f"C={c}: {s}x" for c, s in speedup.items())
        + f"  (goal at C=64: 2x -> {'met' if report['goal_2x_at_64_met'] else 'NOT met'})"
    )
    print(f"load average (1 min) before/after: {load_before[0]:.2f} / {load_after[0]:.2f} on {cores} CPUs")
    print(f"wrote {a.out.relative_to(ROOT) if a.out.is_relative_to(ROOT) else a.out}")


if __name__ == "__main__":
    main()
