"""Load on a real Serve deployment: thousands of requests without an error, and a replica killed under load.

Bounded benchmarks, not timed tests: each prints its throughput and error counts (pytest -s) and
records them as properties (--junitxml), but asserts only errors and recovery.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import threading
import time
from collections import Counter
from typing import Optional

import httpx
import psutil
import pytest

from orchestrator.spec import ServeSpec
from tests.serve_support import feature_records, free_port, make_checkpoint
from tests.waiting import wait_for

pytestmark = [pytest.mark.ray, pytest.mark.slow]

JSON = {"content-type": "application/json"}


@pytest.fixture(scope="module")
def model(ray_session, tmp_path_factory):
    from ray import serve

    ckpt, test = make_checkpoint(tmp_path_factory.mktemp("load") / "ckpt")
    yield ckpt, test
    serve.shutdown()  # the next module starts Serve on its own port


def _bodies(url: str, test) -> list[bytes]:
    columns = list(httpx.get(f"{url}/metadata", timeout=30).json()["input_schema"]["properties"])
    return [json.dumps(r).encode() for r in feature_records(test, columns)]


def run_load(
    url: str,
    bodies: list[bytes],
    *,
    concurrency: int,
    total: Optional[int] = None,
    stop: Optional[threading.Event] = None,
    limit_s: float = 400,
    outcomes: Optional[Counter] = None,
) -> tuple[Counter, int, float]:
    """POST /predict from `concurrency` connections until `total` requests, `stop`, or `limit_s`.
    Returns (outcomes: status code or exception name -> count, filled in as answers come; requests sent; seconds)."""
    outcomes = Counter() if outcomes is None else outcomes
    sent = 0

    async def main():
        nonlocal sent
        limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
        end = time.monotonic() + limit_s
        async with httpx.AsyncClient(timeout=60, limits=limits) as client:

            async def worker():
                nonlocal sent
                while (total is None or sent < total) and not (stop is not None and stop.is_set()) and time.monotonic() < end:
                    i = sent
                    sent += 1
                    try:
                        r = await client.post(f"{url}/predict", content=bodies[i % len(bodies)], headers=JSON)
                        outcomes[r.status_code] += 1
                    except httpx.HTTPError as e:  # a dropped connection or a timeout is an error too
                        outcomes[type(e).__name__] += 1

            await asyncio.gather(*(worker() for _ in range(concurrency)))

    t0 = time.perf_counter()
    asyncio.run(main())
    return outcomes, sent, time.perf_counter() - t0


def _errors(outcomes: Counter) -> int:
    return sum(n for k, n in outcomes.items() if k != 200)


# 2,000 in CI; ORCHESTRATOR_LOAD_REQUESTS=10000 for the documented figure
REQUESTS = int(os.environ.get("ORCHESTRATOR_LOAD_REQUESTS", "2000"))


def test_thousands_of_requests_at_concurrency_64_without_an_error(ray_session, model, record_property):
    from ray import serve

    from orchestrator.serve.deployment import deploy

    ckpt, test = model
    url = deploy(ckpt, ServeSpec(port=free_port(), cpus_per_replica=0.25), name="serve-load")
    try:
        outcomes, sent, seconds = run_load(url, _bodies(url, test), concurrency=64, total=REQUESTS, limit_s=480)
    finally:
        serve.delete("serve-load")
    done = sum(outcomes.values())
    print(
        f"\n{REQUESTS:,} requests at concurrency 64: {done} answered in {seconds:.1f} s ({done / seconds:.0f} requests/s), "
        f"outcomes {dict(outcomes)}"
    )
    record_property("requests_per_s", round(done / seconds, 1))
    assert done == REQUESTS, f"only {done} requests within the time limit: {dict(outcomes)}"
    assert _errors(outcomes) == 0, dict(outcomes)


def _replicas(app: str) -> list:
    import ray
    from ray.util.state import list_actors

    # this test's own cluster: with no address the State API scans the machine, which may run others
    return list_actors(
        address=ray.get_runtime_context().gcs_address,
        raise_on_missing_output=False,
        filters=[("class_name", "=", f"ServeReplica:{app}:Predictor"), ("state", "=", "ALIVE")],
    )


def _running_replicas(app: str) -> int:
    from ray import serve

    status = serve.status().applications.get(app)
    if status is None or "Predictor" not in status.deployments:
        return 0
    return status.deployments["Predictor"].replica_states.get("RUNNING", 0)


def test_one_of_two_replicas_killed_under_load(ray_session, model, record_property):
    """SIGKILL one replica while 32 connections send requests: no more fail than the connections had
    in flight (32), and Serve brings the deployment back to two replicas."""
    from ray import serve

    from orchestrator.serve.deployment import deploy
    from orchestrator.spec import Autoscaling

    ckpt, test = model
    app = "serve-load-kill"
    spec = ServeSpec(port=free_port(), cpus_per_replica=0.25, autoscaling=Autoscaling(min_replicas=2, max_replicas=2))
    url = deploy(ckpt, spec, name=app)
    bodies = _bodies(url, test)
    stop = threading.Event()
    result: dict = {}
    outcomes: Counter = Counter()
    load = threading.Thread(
        target=lambda: result.update(
            zip(("outcomes", "sent", "seconds"), run_load(url, bodies, concurrency=32, stop=stop, limit_s=300, outcomes=outcomes))
        )
    )
    try:
        wait_for(lambda: len(_replicas(app)) == 2, 60, "two replica actors")
        load.start()
        wait_for(lambda: sum(outcomes.values()) >= 300, 120, "the load to flow")
        victim = _replicas(app)[0]
        ours = {p.pid for p in psutil.Process(os.getpid()).children(recursive=True)}
        assert victim.pid in ours, f"replica pid {victim.pid} is not a process of this test's Ray node"
        killed_at = time.monotonic()
        os.kill(victim.pid, signal.SIGKILL)
        wait_for(lambda: victim.actor_id not in {a.actor_id for a in _replicas(app)}, 60, "Ray to see the replica die")
        wait_for(lambda: _running_replicas(app) == 2 and len(_replicas(app)) == 2, 120, "the deployment to recover two replicas")
        recovered_s = time.monotonic() - killed_at
        n = sum(outcomes.values())
        wait_for(lambda: sum(outcomes.values()) >= n + 300, 120, "traffic on the recovered deployment")
    finally:
        stop.set()
        if load.ident is not None:
            load.join(120)
        serve.delete(app)
    done = sum(outcomes.values())
    rate = _errors(outcomes) / max(done, 1)
    print(
        f"\nreplica killed under load: {done} requests in {result['seconds']:.1f} s, errors {_errors(outcomes)} "
        f"({rate:.2%}), outcomes {dict(outcomes)}, two replicas again {recovered_s:.1f} s after the kill"
    )
    record_property("error_rate", round(rate, 5))
    record_property("recovery_s", round(recovered_s, 1))
    assert done > 200, dict(outcomes)
    # What fails is what was in flight on the dying replica: at most one request per connection.
    # A rate (once "at most 1%") depends on how many requests the machine finished meanwhile: 16 of
    # 1,560 (1.03%) failed one CI run where 7 of 3,138 had failed before.
    assert _errors(outcomes) <= 32, (
        f"{_errors(outcomes)} of {done} requests failed, more than the 32 connections had in flight: {dict(outcomes)}"
    )
