"""A real Ray Serve deployment: predictions, client mistakes, auth, metrics, backpressure, redeploy."""

from __future__ import annotations

import os
import threading
from concurrent.futures import ThreadPoolExecutor

import httpx
import pytest
import typer
from typer.testing import CliRunner

from orchestrator.cli import serve as serve_cli
from orchestrator.spec import ServeSpec
from tests.serve_support import feature_records, free_port, make_checkpoint, offline_predictions
from tests.waiting import wait_for

pytestmark = pytest.mark.ray

TOKEN_ENV = "ORCHESTRATOR_TEST_SERVE_TOKEN"
TOKEN = "serve-test-token"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
APP = "serve-test"


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    root = tmp_path_factory.mktemp("serve")
    a, test = make_checkpoint(root / "a", seed=0)
    b, _ = make_checkpoint(root / "b", seed=1, hidden=[8])
    return {"a": a, "b": b, "test": test}


@pytest.fixture(scope="module")
def spec():
    return ServeSpec(port=free_port(), auth_token_env=TOKEN_ENV, cpus_per_replica=0.25, max_batch_size=16, batch_wait_timeout_s=0.01)


@pytest.fixture(scope="module")
def server(ray_session, models, spec):
    from ray import serve

    from orchestrator.serve.deployment import deploy

    os.environ[TOKEN_ENV] = TOKEN
    url = deploy(models["a"], spec, name=APP, version="v1")
    yield url
    serve.shutdown()
    os.environ.pop(TOKEN_ENV, None)


@pytest.fixture(scope="module")
def records(server, models):
    columns = list(httpx.get(f"{server}/metadata", headers=AUTH).json()["input_schema"]["properties"])
    return feature_records(models["test"], columns)


def test_deploy_binds_loopback_with_the_spec_port(server, spec):
    assert server == f"http://127.0.0.1:{spec.port}"
    assert httpx.get(f"{server}/healthz").json() == {"status": "ok", "model_version": "v1"}


def test_predictions_equal_offline_model(server, models, records):
    expected = offline_predictions(models["a"], models["test"])
    body = httpx.post(f"{server}/predict", json={"records": records}, headers=AUTH, timeout=60).json()
    assert body["predictions"] == expected and body["model_version"] == "v1"
    # one record per request, many at once: they are batched together on the replica
    with httpx.Client(headers=AUTH, timeout=60) as c, ThreadPoolExecutor(16) as pool:
        answers = list(pool.map(lambda r: c.post(f"{server}/predict", json=r).json()["predictions"][0], records))
    assert answers == expected


def test_client_mistakes_get_4xx_with_a_reason(server, records):
    with httpx.Client(headers=AUTH, timeout=30) as c:

        def post(**kw):
            resp = c.post(f"{server}/predict", **kw)
            assert 400 <= resp.status_code < 500, resp.text
            return resp.status_code, resp.json()["detail"]

        assert post(content=b'{"mean_radius": 1,')[0] == 400
        status, detail = post(json={**records[0], "mean_radius": "big"})
        assert status == 422 and detail.startswith("mean_radius:")
        status, detail = post(json={k: v for k, v in records[0].items() if k != "site"})
        assert status == 422 and detail.startswith("site:") and "missing" in detail
        status, detail = post(json={"records": [records[0], {**records[1], "colour": "red"}]})
        assert status == 422 and detail.startswith("records[1].colour:") and "unknown field" in detail
        status, detail = post(content=b"[" + b" " * (1 << 20) + b"]")
        assert status == 413 and "max_body_bytes" in detail
        assert post(json=[records[0]] * 2000)[0] == 413


def test_auth(server, records):
    no = httpx.post(f"{server}/predict", json=records[0])
    assert no.status_code == 401 and "bearer" in no.json()["detail"]
    assert httpx.post(f"{server}/predict", json=records[0], headers={"Authorization": "Bearer nope"}).status_code == 403
    assert httpx.get(f"{server}/metadata").status_code == 401
    assert httpx.get(f"{server}/healthz").status_code == 200
    assert httpx.get(f"{server}/docs", headers=AUTH).status_code == 200
    meta = httpx.get(f"{server}/metadata", headers=AUTH).json()
    assert meta["serving"]["auth"] is True and meta["serving"]["max_batch_size"] == 16


def test_prometheus_metrics_exposed(server, records):
    from orchestrator.serve.deployment import metrics_url

    httpx.post(f"{server}/predict", json={"records": records[:5]}, headers=AUTH)
    httpx.post(f"{server}/predict", json=records[0])  # 401
    url = metrics_url()
    assert url is not None

    def exported():
        text = httpx.get(url, timeout=10).text
        names = (
            "ray_orchestrator_serve_requests_total{",
            "ray_orchestrator_serve_request_latency_ms_bucket{",
            "ray_orchestrator_serve_batch_size_bucket{",
        )
        return all(n in text for n in names) and 'route="/predict"' in text and 'status="401"' in text and text

    text = wait_for(exported, 60, "serve metrics on Ray's Prometheus endpoint", interval=1)
    assert f'application="{APP}"' in text


def test_backpressure_answers_503(ray_session, server, models, spec):
    """One request in flight and one queued per proxy: the rest are refused at once with 503."""
    from orchestrator.serve.deployment import deploy

    tight = spec.model_copy(
        update={
            "route_prefix": "/tight",
            "auth_token_env": None,
            "max_ongoing_requests": 1,
            "max_queued_requests": 1,
            "max_batch_size": 64,
            "batch_wait_timeout_s": 1.5,
        }
    )
    url = deploy(models["a"], tight, name="serve-test-tight")
    rec = feature_records(models["test"].head(1), list(httpx.get(f"{url}/metadata").json()["input_schema"]["properties"]))[0]
    with ThreadPoolExecutor(6) as pool:
        codes = sorted(pool.map(lambda _: httpx.post(f"{url}/predict", json=rec, timeout=30).status_code, range(6)))
    assert set(codes) == {200, 503} and codes.count(200) >= 1 and codes.count(503) >= 3, codes


def test_predict_command_against_the_server(server, models, tmp_path, monkeypatch):
    path = tmp_path / "rows.parquet"
    models["test"].to_parquet(path)  # has the label column too: the client drops it
    monkeypatch.setenv("MY_TOKEN", TOKEN)
    app = typer.Typer()
    serve_cli.register(app)
    result = CliRunner().invoke(app, ["predict", server, str(path), "--token-env", "MY_TOKEN", "--json", "--chunk", "40"])
    assert result.exit_code == 0, result.output
    import json

    lines = [json.loads(x) for x in result.stdout.splitlines() if x.startswith("{")]
    assert [x["prediction"] for x in lines] == offline_predictions(models["a"], models["test"])
    assert [x["row"] for x in lines] == list(range(len(lines)))
    result = CliRunner().invoke(app, ["predict", server, str(path)])
    assert result.exit_code == 1 and "401" in result.output and "--token-env" in result.output


def test_redeploy_under_steady_traffic_loses_no_request(server, models, spec, records):
    """Rolling over to another checkpoint while requests flow: every request answered 200."""
    from orchestrator.serve.deployment import deploy

    results: list[tuple] = []
    stop = threading.Event()

    def stream():
        with httpx.Client(headers=AUTH, timeout=60) as c:
            i = 0
            while not stop.is_set():
                try:
                    r = c.post(f"{server}/predict", json=records[i % len(records)])
                    results.append((r.status_code, r.json().get("model_version")))
                except Exception as e:  # a dropped connection counts as a lost request
                    results.append((repr(e), None))
                i += 1

    threads = [threading.Thread(target=stream) for _ in range(2)]
    for t in threads:
        t.start()
    try:
        wait_for(lambda: len(results) >= 20, 60, "traffic to flow")
        deploy(models["b"], spec, name=APP, version="v2")
        wait_for(lambda: results[-1][1] == "v2" and results[-2][1] == "v2", 60, "answers from the new version")
        n = len(results)
        wait_for(lambda: len(results) >= n + 20, 60, "traffic after the rollover")
    finally:
        stop.set()
        for t in threads:
            t.join()
    bad = [r for r in results if r[0] != 200]
    assert not bad, f"{len(bad)} of {len(results)} requests failed: {bad[:5]}"
    versions = [v for _, v in results]
    assert versions[0] == "v1" and versions[-1] == "v2"
    body = httpx.post(f"{server}/predict", json={"records": records}, headers=AUTH, timeout=60).json()
    assert body["predictions"] == offline_predictions(models["b"], models["test"])
