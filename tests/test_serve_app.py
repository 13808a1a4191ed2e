"""Serving without Ray: request schema, validation, auth and limits of the HTTP app, CLI helpers."""

from __future__ import annotations

import json
import os
import shlex
import warnings

import numpy as np
import pytest
import typer
from typer.testing import CliRunner

with warnings.catch_warnings():  # starlette's TestClient warns that it prefers httpx2
    warnings.simplefilter("ignore")
    from fastapi.testclient import TestClient

from orchestrator.cli import serve as serve_cli
from orchestrator.data.kinds.image import ImageInput
from orchestrator.data.kinds.table import TableInput
from orchestrator.data.preprocess import Preprocessor
from orchestrator.errors import OrchestratorError
from orchestrator.serve import client as serve_client
from orchestrator.serve.app import make_api
from orchestrator.serve.guard import token_digest
from orchestrator.serve.runner import ModelRunner
from orchestrator.serve.schemas import record_model
from tests.serve_support import feature_records, free_port, make_checkpoint, make_run_dir, offline_predictions

TOKEN = "test-token-123"
AUTH = {"Authorization": f"Bearer {TOKEN}"}


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    return make_checkpoint(tmp_path_factory.mktemp("ckpt") / "ckpt")


@pytest.fixture(scope="module")
def runner(checkpoint):
    return ModelRunner(checkpoint[0], max_records=100, max_body_bytes=64 * 1024)


@pytest.fixture(scope="module")
def client(runner):
    async def infer(records):
        return runner.predict(records)

    return TestClient(make_api(runner, infer, token_sha256=token_digest(TOKEN)), headers=AUTH)


@pytest.fixture(scope="module")
def records(runner, checkpoint):
    return feature_records(checkpoint[1], runner.columns)


def test_predictions_equal_offline_in_every_body_shape(client, checkpoint, records):
    ckpt, test = checkpoint
    expected = offline_predictions(ckpt, test)
    wrapped = client.post("/predict", json={"records": records[:50]}).json()
    assert wrapped["predictions"] == expected[:50]
    assert client.post("/predict", json=records[50:60]).json()["predictions"] == expected[50:60]
    one = client.post("/predict", json=records[3]).json()
    assert one["predictions"] == [expected[3]]
    assert set(one["probabilities"][0]) == {"benign", "malignant"}
    assert abs(sum(one["probabilities"][0].values()) - 1) < 1e-5
    assert one["model_version"] == wrapped["model_version"] and len(one["model_version"]) == 12


def test_null_numeric_is_imputed_and_unseen_category_allowed(client, records):
    rec = {**records[0], "mean_radius": None, "site": "elsewhere"}
    assert client.post("/predict", json=rec).status_code == 200


@pytest.mark.parametrize(
    "body, status, field",
    [
        (b"{not json", 400, None),
        (b"", 400, None),
        (b"\xff\xfe", 400, None),
        (b"42", 422, None),
        (b'{"records": 5}', 422, "records"),
        (b'{"records": []}', 422, "records"),
    ],
)
def test_malformed_bodies(client, body, status, field):
    resp = client.post("/predict", content=body)
    assert resp.status_code == status, resp.text
    detail = resp.json()["detail"]
    assert detail and (field is None or detail.startswith(field))


def test_field_errors_name_the_field(client, records):
    def errors(body):
        resp = client.post("/predict", json=body)
        assert resp.status_code == 422, resp.text
        return {e["field"]: e for e in resp.json()["errors"]}, resp.json()["detail"]

    wrong, detail = errors({**records[0], "mean_radius": "large"})
    assert wrong["mean_radius"]["type"] == "float_type" and "mean_radius" in detail and "'large'" in detail
    assert "mean_radius" in errors({**records[0], "mean_radius": True})[0]
    assert "site" in errors({**records[0], "site": 3})[0]
    missing = errors({k: v for k, v in records[0].items() if k != "worst_area"})[0]
    assert missing["worst_area"]["type"] == "missing"
    unknown = errors({**records[0], "label": "benign"})[0]
    assert unknown["label"]["type"] == "extra_forbidden"
    batch = errors({"records": [records[0], {**records[1], "mean_texture": []}]})[0]
    assert list(batch) == ["records[1].mean_texture"]
    assert list(errors([records[0], "x"])[0]) == ["[1]"]
    assert "extra" in errors({"records": [records[0]], "extra": 1})[0]


def test_nan_is_refused(client, records):
    body = json.dumps({**records[0], "mean_radius": float("nan")}).encode()  # Python writes NaN
    resp = client.post("/predict", content=body)
    assert resp.status_code == 422 and "mean_radius" in resp.json()["detail"]


def test_limits_give_413(client, records, runner):
    assert client.post("/predict", json=[records[0]] * (runner.max_records + 1)).status_code == 413
    big = b'{"records": [' + b" " * (80 * 1024) + b"]}"
    resp = client.post("/predict", content=big)
    assert resp.status_code == 413 and "max_body_bytes" in resp.json()["detail"]

    def chunked():  # no Content-Length: the body is counted as it arrives
        for _ in range(20):
            yield b" " * 8192

    assert client.post("/predict", content=chunked()).status_code == 413


def test_auth(runner, records):
    async def infer(recs):
        return runner.predict(recs)

    c = TestClient(make_api(runner, infer, token_sha256=token_digest(TOKEN)))
    no = c.post("/predict", json=records[0])
    assert no.status_code == 401 and no.headers["www-authenticate"] == "Bearer"
    assert c.post("/predict", json=records[0], headers={"Authorization": "Basic abc"}).status_code == 401
    assert c.post("/predict", json=records[0], headers={"Authorization": "Bearer wrong"}).status_code == 403
    assert c.get("/metadata").status_code == 401 and c.get("/openapi.json").status_code == 401
    assert c.get("/healthz").status_code == 200
    assert c.post("/predict", json=records[0], headers=AUTH).status_code == 200


def test_metadata_and_docs(client, runner):
    meta = client.get("/metadata").json()
    assert meta["name"] == "test" and meta["task"] == "classification" and meta["classes"] == ["benign", "malignant"]
    schema = meta["input_schema"]
    assert schema["additionalProperties"] is False and len(schema["required"]) == 31
    assert schema["properties"]["site"]["anyOf"][0]["type"] == "string"
    assert meta["model"]["arch"] == "mlp" and meta["model"]["parameters"] > 0
    assert meta["limits"]["max_records"] == 100
    api = client.get("/openapi.json").json()
    assert "Record" in api["components"]["schemas"] and "/predict" in api["paths"]
    assert client.get("/docs").status_code == 200


def test_metrics_hook_sees_every_request(runner, records):
    seen = []

    async def infer(recs):
        return runner.predict(recs)

    c = TestClient(make_api(runner, infer, observe=lambda route, status, s: seen.append((route, status))))
    c.post("/predict", json=records[0])
    c.post("/predict", content=b"{")
    c.get("/nope")
    assert seen == [("/predict", 200), ("/predict", 400), ("other", 404)]


def test_image_and_integer_category_schemas():
    from pydantic import ValidationError

    img = record_model(Preprocessor(task="classification", label="y", input=ImageInput(column="image", shape=[1, 2, 2]), classes=[0, 1]))
    img.model_validate({"image": [0, 1.5, 2, 3]})
    with pytest.raises(ValidationError):
        img.model_validate({"image": [0, 1, 2]})
    cat = record_model(Preprocessor(task="regression", label="y", input=TableInput(categorical={"n": [1, 2, 3]})))
    cat.model_validate({"n": 7})
    with pytest.raises(ValidationError):
        cat.model_validate({"n": "1"})


def test_app_builder_args(checkpoint):
    from orchestrator.serve.deployment import ServeArgs, app_builder
    from orchestrator.serve.plan import serve_args
    from orchestrator.spec import ServeSpec

    with pytest.raises(ValueError, match="max_batch_size"):
        app_builder({"checkpoint_path": "/x", "max_batch_size": 0})
    with pytest.raises(ValueError, match="unknown_arg"):
        app_builder({"checkpoint_path": "/x", "unknown_arg": 1})
    args = serve_args(str(checkpoint[0]), ServeSpec(auth_token_env="SERVE_TOKEN"))
    json.dumps(args)
    assert ServeArgs.model_validate(args).auth_token_env == "SERVE_TOKEN"
    app_builder(args)


def test_app_builder_accepts_the_rayservice_args(checkpoint):
    """The KubeRay manifest renders its args for this builder: they must be accepted as they are."""
    from orchestrator.k8s.render import SERVE_DEPLOYMENT, serve_config
    from orchestrator.serve.deployment import app_builder
    from orchestrator.serve.plan import DEPLOYMENT
    from orchestrator.spec import parse_spec

    spec = parse_spec({"name": "bc", "data": {"source": "x.parquet", "label": "label"}, "serve": {"auth_token_env": "SERVE_TOKEN"}})
    app = serve_config(spec, str(checkpoint[0]))["applications"][0]
    assert DEPLOYMENT == SERVE_DEPLOYMENT
    app_builder(app["args"])


# ---------------------------------------------------------------------------------- CLI helpers


def test_resolve_target(tmp_path, checkpoint):
    ok = make_run_dir(tmp_path / "a", checkpoint[0], serve={"port": 9123, "max_batch_size": 8})
    t = serve_client.resolve_target(ok)
    assert t.checkpoint == ok / "best_checkpoint" and t.serve.port == 9123 and t.serve.max_batch_size == 8
    assert serve_client.resolve_target(ok / "best_checkpoint", port=9200, host="0.0.0.0").serve.port == 9200
    bad = make_run_dir(tmp_path / "b", checkpoint[0], promoted=False)
    with pytest.raises(OrchestratorError, match="not promoted.*--force"):
        serve_client.resolve_target(bad)
    with pytest.raises(OrchestratorError, match="not promoted"):
        serve_client.resolve_target(bad / "best_checkpoint")
    assert serve_client.resolve_target(bad, force=True).serve.port == 8000
    assert serve_client.resolve_target(checkpoint[0]).run_dir is None
    with pytest.raises(OrchestratorError, match="no such"):
        serve_client.resolve_target(tmp_path / "missing")
    with pytest.raises(OrchestratorError, match="neither"):
        serve_client.resolve_target(tmp_path)
    with pytest.raises(OrchestratorError, match="--port"):
        serve_client.resolve_target(ok, port=70000)


def test_serve_after_run_refuses_unpromoted(tmp_path, checkpoint):
    from types import SimpleNamespace

    from orchestrator.spec import parse_spec

    spec = parse_spec({"name": "bc", "data": {"source": "x.parquet", "label": "label"}, "serve": {}})
    result = SimpleNamespace(
        run_dir=tmp_path,
        best_checkpoint=str(checkpoint[0]),
        interrupted=False,
        promoted=False,
        decision={"reason": "test_accuracy = 0.5 does not meet 'accuracy >= 0.9'"},
    )
    with pytest.raises(OrchestratorError, match="not promoted.*--force"):
        serve_cli.serve_after_run(result, spec, serve_cli.console, force=False)


def test_curl_example_is_valid_shell(records):
    rec = {**records[0], "site": "it's"}
    cmd = serve_client.curl_example("http://127.0.0.1:8000", rec, "SERVE_TOKEN")
    argv = shlex.split(cmd)
    assert argv[:3] == ["curl", "-s", "http://127.0.0.1:8000/predict"]
    assert json.loads(argv[argv.index("-d") + 1]) == rec
    assert "Authorization: Bearer $SERVE_TOKEN" in argv


def test_test_row_comes_from_the_test_split(tmp_path):
    from orchestrator.data.preprocess import assign_splits
    from orchestrator.spec import parse_spec
    from tests.serve_support import breast_cancer_frame

    df = breast_cancer_frame()
    df.to_parquet(tmp_path / "bc.parquet", index=False)
    spec = parse_spec({"name": "bc", "data": {"source": "bc.parquet", "label": "label", "categorical": ["site"]}}, base_dir=tmp_path)
    cols = [c for c in df.columns if c != "label"]
    row = serve_client.test_row(spec, cols)
    assert row is not None and list(row) == cols
    codes = assign_splits(df, 0, (0.7, 0.15, 0.15))
    assert row["mean_radius"] == df[codes == 2].iloc[0]["mean_radius"]


@pytest.mark.parametrize("suffix", [".csv", ".json", ".jsonl", ".parquet"])
def test_read_records(tmp_path, checkpoint, suffix):
    rows = checkpoint[1].head(3)
    path = tmp_path / f"rows{suffix}"
    if suffix == ".csv":
        rows.to_csv(path, index=False)
    elif suffix == ".json":
        path.write_text(json.dumps({"records": rows.to_dict("records")}))
    elif suffix == ".jsonl":
        rows.to_json(path, orient="records", lines=True)
    else:
        rows.to_parquet(path)
    df = serve_client.read_records(path)
    assert len(df) == 3 and list(df["mean_radius"]) == list(rows["mean_radius"])


def test_predict_reports_unreachable_server_without_traceback(tmp_path, checkpoint):
    path = tmp_path / "rows.csv"
    checkpoint[1].head(2).to_csv(path, index=False)
    app = typer.Typer()
    serve_cli.register(app)
    result = CliRunner().invoke(app, ["predict", f"http://127.0.0.1:{free_port()}", str(path)])
    assert result.exit_code == 1
    assert "cannot reach" in result.output and "Traceback" not in result.output
    result = CliRunner().invoke(app, ["predict", "http://127.0.0.1:1", str(tmp_path / "nope.txt")])
    assert result.exit_code == 1 and "unsupported file type" in result.output


def test_serve_command_refuses_an_unpromoted_run(tmp_path, checkpoint):
    bad = make_run_dir(tmp_path, checkpoint[0], promoted=False)
    app = typer.Typer()
    serve_cli.register(app)
    result = CliRunner().invoke(app, ["serve", str(bad)])
    assert result.exit_code == 3
    assert "not promoted" in result.output and "--force" in result.output and "Traceback" not in result.output


def test_serve_ingress_env_haproxy_opt_in_private_paths(monkeypatch):
    from orchestrator import runtime

    for k in [k for k in os.environ if k.startswith("RAY_SERVE_")]:
        monkeypatch.delenv(k)
    monkeypatch.setattr(runtime, "haproxy_binary", lambda: "/usr/sbin/haproxy")
    # off by default: Ray's HAProxy template binds its stats and metrics listeners on all interfaces
    assert runtime.serve_ingress_env() == {}
    monkeypatch.setenv("RAY_SERVE_ENABLE_HA_PROXY", "1")
    env = runtime.serve_ingress_env()
    assert env["RAY_SERVE_RUN_USER_CODE_IN_SEPARATE_THREAD"] == "0"
    assert "RAY_SERVE_ENABLE_HA_PROXY" not in env  # already in the environment the node inherits
    # Ray adds a 56-character node-id folder; HAProxy refuses socket paths over 97 characters
    for key in ("RAY_SERVE_HAPROXY_SOCKET_PATH", "RAY_SERVE_HAPROXY_METRICS_SOCKET_PATH"):
        assert len(env[key]) + 57 <= 97, env[key]
    d = env["RAY_SERVE_HAPROXY_SERVER_STATE_BASE"]
    assert env["RAY_SERVE_HAPROXY_SOCKET_PATH"].startswith(d) and oct(os.stat(d).st_mode)[-3:] == "700"
    assert all(20000 <= int(env[f"RAY_SERVE_HAPROXY_{k}_PORT"]) < 30000 for k in ("STATS", "METRICS"))  # not 8404, 9101
    monkeypatch.setenv("RAY_SERVE_HAPROXY_STATS_PORT", "8500")  # what the user set wins
    assert "RAY_SERVE_HAPROXY_STATS_PORT" not in runtime.serve_ingress_env()
    monkeypatch.setenv("RAY_SERVE_ENABLE_HA_PROXY", "0")  # Serve's Python proxy, Ray's defaults
    assert runtime.serve_ingress_env() == {}
    monkeypatch.setenv("RAY_SERVE_ENABLE_HA_PROXY", "1")
    monkeypatch.setattr(runtime, "haproxy_binary", lambda: None)  # no binary (e.g. macOS): Python proxy
    assert runtime.serve_ingress_env() == {}


# ------------------------------------------------------------------------------ hostile input


@pytest.mark.parametrize("value", ["1e40", "1e100", "1e308", "-1e308", "1e400", "-1e400", "NaN", "Infinity", "-Infinity"])
def test_numbers_beyond_the_models_range_get_422_naming_the_field(client, records, value):
    """(x - mean) / std must be finite in float32: 1e40 used to come out of the network as NaN (500)."""
    rec = json.dumps({**records[0], "mean_radius": 12345.5}).replace("12345.5", value)
    resp = client.post("/predict", content=rec.encode())
    assert resp.status_code == 422, resp.text
    assert resp.json()["errors"][0]["field"] == "mean_radius"
    body = json.dumps({"records": [records[0], {**records[1], "mean_smoothness": 12345.5}]}).replace("12345.5", value)
    resp = client.post("/predict", content=body.encode())
    assert resp.status_code == 422 and resp.json()["detail"].startswith("records[1].mean_smoothness:"), resp.text


def test_largest_in_range_value_is_answered(client, records, runner):
    lo, hi = runner._bounds["mean_radius"]
    for v in (hi, lo, 1e39):
        assert client.post("/predict", json={**records[0], "mean_radius": v}).status_code == 200
    assert client.post("/predict", json={**records[0], "mean_radius": hi * 1.01}).status_code == 422


def test_image_values_are_bounded_before_the_float32_cast():
    pre = Preprocessor(
        task="classification", label="y", input=ImageInput(column="image", shape=[1, 2, 2], mean=0.5, std=0.25), classes=[0, 1]
    )
    lo, hi = pre.input.value_bounds()["image"]
    assert hi <= float(np.finfo(np.float32).max) and lo >= -float(np.finfo(np.float32).max)


@pytest.mark.parametrize(
    "body",
    [b"[" * 1000 + b"]" * 1000, b"{" * 5000, b'{"a":' * 2000 + b"1" + b"}" * 2000, b'{"records": ' + b"[" * 30000 + b"]" * 30000 + b"}"],
)
def test_deeply_nested_bodies_get_400_before_parsing(client, body):
    resp = client.post("/predict", content=body)
    assert resp.status_code == 400 and "nested" in resp.json()["detail"], resp.text


def test_brackets_inside_strings_do_not_count_and_the_depth_scan_is_linear():
    import time

    from orchestrator.serve.schemas import json_depth

    assert json_depth(b'{"records": [{"site": "[[[[{{\\"[[["}]}') == 3
    assert json_depth(b'[[["unterminated') == 3 and json_depth(b"") == 0
    t = time.perf_counter()
    for hostile in (b'"' + b'\\"' * 300000, b'"\\' * 300000, b'"a' * 300000):  # quadratic for a naive regex
        json_depth(hostile)
    assert time.perf_counter() - t < 2


@pytest.mark.parametrize(
    "body, headers, status",
    [
        (b"1" + b"0" * 5000, {}, 400),  # int() refuses more than 4300 digits
        (b'{"mean_radius": 1' + b"0" * 5000 + b"}", {}, 400),
        (b'"\\ud800"', {}, 422),
        (b"\xc3\x28", {}, 400),  # invalid UTF-8
        (b"{}", {"content-type": "text/plain"}, 415),
        (b"{}", {"content-type": "application/x-www-form-urlencoded"}, 415),  # curl -d without -H
        (b"null", {}, 422),
        (b"[[]]", {}, 422),
        (b'{"records": [[1, 2]]}', {}, 422),
    ],
)
def test_hostile_bodies_get_4xx(client, body, headers, status):
    resp = client.post("/predict", content=body, headers=headers)
    assert resp.status_code == status, resp.text
    assert resp.json()["detail"]


def test_json_content_types_are_accepted(client, records):
    for ctype in ("application/json", "application/json; charset=utf-8", "application/vnd.api+json"):
        assert client.post("/predict", content=json.dumps(records[0]).encode(), headers={"content-type": ctype}).status_code == 200


def test_lone_surrogate_in_a_category_gets_422(client, records):
    """pandas cannot store it (500 before); the error body escapes it so it always encodes."""
    resp = client.post("/predict", content=json.dumps({**records[0], "site": "\ud800"}).encode())
    assert resp.status_code == 422 and resp.json()["errors"][0]["field"] == "site", resp.text
    resp = client.post("/predict", content=json.dumps({**records[0], "\ud800x": 1}).encode())
    assert resp.status_code == 422, resp.text


def test_non_finite_model_output_gets_422_never_nan_in_json(checkpoint, records):
    """Defence in depth: an in-range input can still overflow inside the network."""
    import torch

    runner = ModelRunner(checkpoint[0])
    with torch.no_grad():
        first = next(p for p in runner.model.parameters() if p.dim() == 2)
        first.mul_(1e30)  # activations of ordinary inputs now overflow float32

    async def infer(recs):
        return runner.predict(recs)

    c = TestClient(make_api(runner, infer))
    far = {**records[0], "mean_area": runner._bounds["mean_area"][1] / 2}
    resp = c.post("/predict", json={"records": [records[0], far]})
    assert resp.status_code == 422, resp.text
    assert any(e["type"] == "output_not_finite" and e["field"].startswith("records[") for e in resp.json()["errors"])
    assert "not finite" in resp.json()["detail"]


# ------------------------------------------------------------------------------ corrupt checkpoints


def _tampered_state(path):
    import pickle

    class Code:  # unpickling it would run code: weights_only=True refuses it
        def __reduce__(self):
            return (print, ("pwned",))

    path.write_bytes(pickle.dumps({"model": Code()}, protocol=2))


CORRUPTIONS = {
    "truncated state.pt": ("state.pt", lambda p: p.write_bytes(p.read_bytes()[: p.stat().st_size // 2])),
    "empty state.pt": ("state.pt", lambda p: p.write_bytes(b"")),
    "tampered state.pt": ("state.pt", _tampered_state),
    "weights of another network": ("state.pt", None),
    "truncated model.json": ("model.json", lambda p: p.write_text(p.read_text()[:40])),
    "model.json without the model": ("model.json", lambda p: p.write_text(json.dumps({"input_shape": [33]}))),
    "broken preprocessing.json": ("preprocessing.json", lambda p: p.write_text('{"task": ')),
    "preprocessing.json of the wrong shape": ("preprocessing.json", lambda p: p.write_text(json.dumps({"colour": 1}))),
    "list in metrics.json": ("metrics.json", lambda p: p.write_text("[]")),
}


def corrupt_copy(src, dest, case: str):
    import shutil

    import torch

    shutil.copytree(src, dest)
    name, damage = CORRUPTIONS[case]
    if damage is None:  # well-formed weights that do not fit model.json's network
        torch.save({"model": {"0.weight": torch.zeros(2, 2)}}, dest / name)
    else:
        damage(dest / name)
    return dest, name


@pytest.mark.parametrize("case", list(CORRUPTIONS))
def test_corrupt_checkpoint_is_refused_naming_the_file(checkpoint, tmp_path, case):
    from orchestrator.errors import CheckpointError
    from orchestrator.serve.deployment import _validate_checkpoint

    d, name = corrupt_copy(checkpoint[0], tmp_path / "ckpt", case)
    with pytest.raises(CheckpointError) as err:
        _validate_checkpoint(str(d))
    assert str(d / name) in str(err.value) and err.value.exit_code == 2
    assert "Traceback" not in str(err.value)


def test_metadata_of_a_diverged_run_answers_with_null_metrics(checkpoint, tmp_path):
    import shutil

    d = tmp_path / "ckpt"
    shutil.copytree(checkpoint[0], d)
    (d / "metrics.json").write_text('{"epoch": 3, "train_loss": NaN, "val_loss": Infinity}')  # as json.dumps writes them
    runner = ModelRunner(d)

    async def infer(recs):
        return runner.predict(recs)

    resp = TestClient(make_api(runner, infer)).get("/metadata")
    assert resp.status_code == 200, resp.text
    assert resp.json()["metrics"]["checkpoint"] == {"epoch": 3, "train_loss": None, "val_loss": None}


def test_predict_client_retries_a_503_after_its_retry_after_then_gives_up():
    """A real HTTP server on 127.0.0.1 that is busy (503) for a while: the client waits as told
    (Retry-After seconds, else a growing pause) and returns the last answer once it stops retrying."""
    import http.server
    import threading
    import time

    from orchestrator.serve.client import RETRIES_ON_503, PredictClient

    busy_for, hits = {"n": 2}, []

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self):
            hits.append(time.monotonic())
            busy = len(hits) <= busy_for["n"]
            body = b"" if busy else b'{"input_schema": {"properties": {}}}'
            self.send_response(503 if busy else 200)
            if busy:
                # the second one unparsable: the client's own pause
                self.send_header("Retry-After", {1: "0.3", 2: "soon"}.get(len(hits), "0.05"))
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args):
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        client = PredictClient(f"http://127.0.0.1:{server.server_address[1]}", None, timeout=5)
        assert client.metadata() == {"input_schema": {"properties": {}}}
        assert len(hits) == 3 and hits[1] - hits[0] >= 0.3 and hits[2] - hits[1] >= 0.4  # 0.2 s x 2 on the second try
        hits.clear()
        busy_for["n"] = 100
        assert client._call("GET", "/metadata").status_code == 503
        assert len(hits) == RETRIES_ON_503 + 1
    finally:
        server.shutdown()
        server.server_close()
