"""CPU that one Ray Train run costs, by process: what every search trial pays before it trains.

    .venv/bin/python bench/trial_cpu.py [SPEC] [--epochs 1]   (default: jobs/digits-cnn.yaml)

Starts embedded Ray as the CLI does, prepares the data, then samples every process's CPU time
(psutil, every 0.2 s) while one TorchTrainer run of the spec goes, and prints the CPU-seconds each
process used during the run (processes the run started are marked NEW) and the wall time.
"""

from __future__ import annotations

import sys
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from orchestrator.data.ingest import prepare_data  # noqa: E402
from orchestrator.runtime import cluster_resources, init_ray  # noqa: E402
from orchestrator.spec import load_spec  # noqa: E402
from orchestrator.train.driver import build_trainer  # noqa: E402
from orchestrator.train.plan import plan_workers  # noqa: E402
from orchestrator.tune.plan import plan_search  # noqa: E402


def cpu_by_process() -> dict[int, tuple[str, float]]:
    import psutil  # shipped with Ray (ray/thirdparty_files) once ray is imported

    out = {}
    for p in psutil.process_iter(["pid", "cmdline", "cpu_times"]):
        try:
            t = p.info["cpu_times"]
            out[p.info["pid"]] = (" ".join(p.info["cmdline"] or [])[:60], t.user + t.system)
        except (TypeError, AttributeError):
            continue  # gone or unreadable
    return out


def main() -> None:
    import argparse

    ap = argparse.ArgumentParser()
    ap.add_argument("spec", nargs="?", default=str(ROOT / "jobs" / "digits-cnn.yaml"))
    ap.add_argument("--epochs", type=int, default=1)
    args = ap.parse_args()
    spec = load_spec(Path(args.spec))
    spec.train.epochs = args.epochs
    init_ray(code_dirs=[str(spec.base_dir)])
    prepared = prepare_data(spec)
    # the worker CPU shares of a search trial (several trials at once), else of a single training
    plan = plan_search(spec, cluster_resources())[1] if spec.tune else plan_workers(spec.scaling, cluster_resources())
    before, seen, stop = cpu_by_process(), {}, threading.Event()

    def sample() -> None:
        while not stop.is_set():
            seen.update(cpu_by_process())
            time.sleep(0.2)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    t0 = time.perf_counter()
    build_trainer(
        spec,
        prepared,
        plan,
        storage_path=str(ROOT / "bench" / "results" / "asha-runs" / "trial-cpu"),
        name=f"trial-cpu-{int(time.time())}",
        callbacks=[],
    ).fit()
    wall = time.perf_counter() - t0
    stop.set()
    sampler.join()
    total = 0.0
    for pid, (cmd, cpu) in sorted(seen.items(), key=lambda kv: kv[1][1] - before.get(kv[0], ("", 0.0))[1], reverse=True):
        used = cpu - before.get(pid, ("", 0.0))[1]
        if used >= 0.05:
            total += used
            print(f"{used:6.2f} CPU-s  {'NEW' if pid not in before else '   '}  {cmd}")
    print(f"total {total:.1f} CPU-s for {wall:.1f} s of wall time ({args.epochs} epoch(s), {plan.workers} workers)")


if __name__ == "__main__":
    main()
