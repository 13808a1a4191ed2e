"""Slow clients against a real Serve deployment: clients that send a body slowly, or never, hold no
slot that work is done in (docs/reliability.md, "Slow clients")."""

from __future__ import annotations

import socket
import time

import httpx
import pytest

from tests.serve_support import feature_records, free_port, make_checkpoint
from tests.waiting import wait_for

pytestmark = pytest.mark.ray

BODY_TIMEOUT_S = 4.0


@pytest.fixture(scope="module")
def server(ray_session, tmp_path_factory):
    from ray import serve

    from orchestrator.serve.deployment import deploy
    from orchestrator.spec import ServeSpec

    ckpt, test = make_checkpoint(tmp_path_factory.mktemp("slow") / "ckpt")
    spec = ServeSpec(port=free_port(), cpus_per_replica=0.25, body_timeout_s=BODY_TIMEOUT_S)
    url = deploy(ckpt, spec, name="slow-clients")
    names = list(httpx.get(f"{url}/metadata", timeout=30).json()["input_schema"]["properties"])
    yield url, spec, feature_records(test.head(1), names)[0]
    serve.delete("slow-clients")


def _stalled(url: str, n: int, *, partial_headers: bool = False) -> list[socket.socket]:
    """`n` connections that send the headers of POST /predict announcing 100000 bytes and then one
    byte of body (or only part of the headers), and then nothing."""
    host, port = url.removeprefix("http://").split(":")
    socks = []
    for _ in range(n):
        s = socket.create_connection((host, int(port)), timeout=30)
        head = b"POST /predict HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: 100000\r\n\r\n{"
        s.sendall(head[:30] if partial_headers else head)
        socks.append(s)
    return socks


def _receiving(url: str) -> int:
    return httpx.get(f"{url}/metadata", timeout=30).json()["serving"]["receiving"]


def test_twice_the_slots_of_stalled_bodies_neither_block_health_nor_predictions(server):
    url, spec, record = server
    n = 2 * spec.max_ongoing_requests  # 128 by default: twice the slots a replica works in
    socks = _stalled(url, n)
    try:
        # every stalled request has reached the replica and is waiting there for its body
        wait_for(lambda: _receiving(url) >= n, 30, f"{n} stalled requests in the replica")
        t0 = time.monotonic()
        health = httpx.get(f"{url}/healthz", timeout=10)
        health_s = time.monotonic() - t0
        t0 = time.monotonic()
        pred = httpx.post(f"{url}/predict", json=record, timeout=10)
        predict_s = time.monotonic() - t0
        assert health.status_code == 200 and health_s < 1.0, (health.status_code, health_s)
        assert pred.status_code == 200 and predict_s < 2.0, (pred.status_code, pred.text, predict_s)
        assert _receiving(url) >= n  # still held open while those answered

        # after body_timeout_s each stalled client gets 408 and its place is freed
        deadline = time.monotonic() + BODY_TIMEOUT_S + 30
        answers = []
        for s in socks:
            s.settimeout(max(0.1, deadline - time.monotonic()))
            answers.append(s.recv(4096).split(b"\r\n", 1)[0])
        assert set(answers) == {b"HTTP/1.1 408 Request Timeout"}, set(answers)
        wait_for(lambda: _receiving(url) == 0, 30, "the replica to free the stalled requests")
    finally:
        for s in socks:
            s.close()
    assert httpx.post(f"{url}/predict", json=record, timeout=10).status_code == 200


def test_clients_stalled_in_their_headers_do_not_block_the_server(server):
    """Headers that never end never reach a replica: they cost the proxy a socket, not a slot."""
    url, spec, record = server
    socks = _stalled(url, 2 * spec.max_ongoing_requests, partial_headers=True)
    try:
        t0 = time.monotonic()
        assert httpx.get(f"{url}/healthz", timeout=10).status_code == 200
        assert httpx.post(f"{url}/predict", json=record, timeout=10).status_code == 200
        assert time.monotonic() - t0 < 3.0
    finally:
        for s in socks:
            s.close()


def test_a_body_that_arrives_slowly_but_in_time_is_answered(server):
    url, _, record = server
    import json

    body = json.dumps(record).encode()
    host, port = url.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=30) as s:
        s.sendall(
            b"POST /predict HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: "
            + str(len(body)).encode()
            + b"\r\n\r\n"
        )
        half = len(body) // 2
        s.sendall(body[:half])
        time.sleep(BODY_TIMEOUT_S / 4)  # the slow part of the client under test, not a wait on the server
        s.sendall(body[half:])
        assert s.recv(4096).startswith(b"HTTP/1.1 200")
