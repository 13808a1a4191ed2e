"""Serving the new input kinds without Ray: text, sequence, series windows and image files.

Small real checkpoints (tests/serve_inputs_support.py) behind the real FastAPI app: the request schema
follows the input kind, predictions equal the model's own offline predictions, bad inputs get a 422
naming the field, and the `orchestrator predict` client turns file columns into request values.
"""

from __future__ import annotations

import base64
import io
import json
import warnings

import numpy as np
import pandas as pd
import pytest

with warnings.catch_warnings():  # starlette's TestClient warns that it prefers httpx2
    warnings.simplefilter("ignore")
    from fastapi.testclient import TestClient

from orchestrator.errors import OrchestratorError
from orchestrator.serve import client as serve_client
from orchestrator.serve.app import make_api
from orchestrator.serve.runner import ModelRunner
from orchestrator.serve.schemas import example_record
from tests.serve_inputs_support import image_checkpoint, offline, png, sequence_checkpoint, series_checkpoint, text_checkpoint


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    root = tmp_path_factory.mktemp("inputs")
    out = {}
    out["text"] = text_checkpoint(root / "text")
    out["sequence"] = sequence_checkpoint(root / "sequence")
    out["series"] = series_checkpoint(root / "series", horizon=3)
    out["series1"] = series_checkpoint(root / "series1", horizon=1)
    out["image"] = image_checkpoint(root / "image", root / "digits")
    out["image_folder"] = root / "digits"
    return out


@pytest.fixture(scope="module")
def clients(models):
    out = {}
    for kind in ("text", "sequence", "series", "series1", "image"):
        runner = ModelRunner(models[kind][0], max_records=100, max_body_bytes=256 * 1024)

        async def infer(records, runner=runner):
            return runner.predict(records)

        out[kind] = (runner, TestClient(make_api(runner, infer)))
    return out


def _b64(path) -> str:
    return base64.b64encode(path.read_bytes()).decode("ascii")


def _post(client, body):
    if isinstance(body, (bytes, str)):
        return client.post("/predict", content=body, headers={"Content-Type": "application/json"})
    return client.post("/predict", json=body)


def _assert_same(got: dict, expected, probs, classification: bool):
    if classification:
        assert got["predictions"] == list(expected)
        served = np.array([list(p.values()) for p in got["probabilities"]])  # in the classes' order
        np.testing.assert_allclose(served, probs, atol=1e-5)
    else:
        np.testing.assert_allclose(np.array(got["predictions"], dtype=float), np.array(expected, dtype=float), rtol=1e-5, atol=1e-5)


# --------------------------------------------------------------------------- predictions = offline


def test_text_predictions_equal_offline(models, clients):
    ckpt, test = models["text"]
    expected, probs = offline(ckpt, test)
    _, client = clients["text"]
    got = _post(client, {"records": [{"text": t} for t in test["text"]]})
    assert got.status_code == 200, got.text
    _assert_same(got.json(), expected, probs, True)
    assert len(set(expected)) == 2  # the model learnt something: both classes occur
    one = _post(client, {"text": test["text"][3]}).json()  # alone, padded differently: the same answer
    _assert_same(one, expected[3:4], probs[3:4], True)


def test_sequence_predictions_equal_offline(models, clients):
    ckpt, test = models["sequence"]
    expected, _ = offline(ckpt, test)
    _, client = clients["sequence"]
    got = _post(client, [{"readings": r} for r in test["readings"]])
    assert got.status_code == 200, got.text
    _assert_same(got.json(), expected, None, False)
    one = _post(client, {"readings": test["readings"][0]}).json()
    _assert_same(one, expected[:1], None, False)


def test_series_answers_the_forecast_horizon_values_or_one_number(models, clients):
    for name, horizon in (("series", 3), ("series1", 1)):
        ckpt, test = models[name]
        expected, _ = offline(ckpt, test)
        _, client = clients[name]
        got = _post(client, {"records": [{"value": w} for w in test["value"]]})
        assert got.status_code == 200, got.text
        preds = got.json()["predictions"]
        if horizon > 1:
            assert all(isinstance(p, list) and len(p) == horizon for p in preds)
        else:
            assert all(isinstance(p, float) for p in preds)
        _assert_same(got.json(), expected, None, False)


def test_image_file_bytes_predictions_equal_offline_from_paths(models, clients):
    ckpt, test = models["image"]
    folder = models["image_folder"]
    expected, probs = offline(ckpt, test)  # the preprocessor reads the files from their paths
    _, client = clients["image"]
    got = _post(client, {"records": [{"path": _b64(folder / p)} for p in test["path"]]})
    assert got.status_code == 200, got.text
    _assert_same(got.json(), expected, probs, True)
    data_url = "data:image/png;base64," + _b64(folder / test["path"][0])
    assert _post(client, {"path": data_url}).json()["predictions"] == expected[:1]


def test_an_image_of_another_size_is_resized_like_in_training(models, clients):
    _, client = clients["image"]
    big = png(np.kron(np.arange(64).reshape(8, 8) * 4, np.ones((4, 4))))  # 32 x 32
    assert _post(client, {"path": base64.b64encode(big).decode()}).status_code == 200


# ------------------------------------------------------------------------------- bad inputs: 4xx

LONG_TEXT = " ".join(["zqx"] * 20)  # 79 characters: under the character limit, far over 16 tokens


@pytest.mark.parametrize(
    "kind, body, field, fragment",
    [
        ("text", {"text": ""}, "text", "at least 1 character"),
        ("text", {"text": "   \n\t "}, "text", "only whitespace"),
        ("text", {"text": LONG_TEXT}, "text", "more than max_length 16"),
        ("text", {"text": "x" * 5000}, "text", "at most"),
        ("text", {"text": 5}, "text", "valid string"),
        ("text", {"text": ["a", "b"]}, "text", "valid string"),
        ("text", {"text": None}, "text", "valid string"),
        ("text", {"text": "fine", "other": 1}, "other", "unknown field"),
        ("text", {"txt": "fine"}, "text", "missing"),
        ("text", {"records": [{"text": "great day"}, {"text": ""}]}, "records[1].text", "at least 1 character"),
        ("text", {"records": [{"text": "great day"}, {"text": LONG_TEXT}]}, "records[1].text", "max_length 16"),
        ("sequence", {"readings": [[1, 2], [3]]}, "readings", "step 1 has 1 values; every step holds 2"),
        ("sequence", {"readings": [[1, 2]] * 9}, "readings", "9 steps, more than the model's max_length 8"),
        ("sequence", b'{"readings": [[1.0, 2.0], [NaN, 1.0]]}', "readings", "step 1: nan is not a finite number"),
        ("sequence", b'{"readings": [[1.0, Infinity]]}', "readings", "not a finite number"),
        ("sequence", {"readings": []}, "readings", "empty sequence"),
        ("sequence", {"readings": "1,2;3,4"}, "readings", "expected a list of 1 to 8 steps"),
        ("sequence", {"readings": [1.0, 2.0]}, "readings", "step 0: expected a list of 2 numbers"),
        ("sequence", {"readings": [[1.0, 2.0], 3.0]}, "readings", "step 1 mixes numbers and vectors"),
        ("sequence", {"readings": [[1, True]]}, "readings", "expected a number, got bool"),
        ("sequence", {"readings": [["1", 2]]}, "readings", "expected a number, got str"),
        ("sequence", {"readings": [[1e308, 2]]}, "readings", "out of range"),
        ("series", {"value": [1.0, 2.0, 3.0]}, "value", "exactly 6 values (data.series.window), got 3"),
        ("series", {"value": [1.0] * 7}, "value", "got 7"),
        ("series", {"value": [1, 2, 3, 4, 5, "6"]}, "value", "step 5: expected a number"),
        ("series", b'{"value": [1, 2, 3, 4, 5, NaN]}', "value", "not a finite number"),
        ("series", {"value": 20.5}, "value", "expected a window of 6 numbers"),
        ("image", {"path": "!!! not base64 !!!"}, "path", "not valid base64"),
        ("image", {"path": base64.b64encode(b"these bytes are not an image").decode()}, "path", "not an image file"),
        ("image", {"path": [0.0] * 64}, "path", "valid string"),
        ("image", {"path": ""}, "path", "at least 1 character"),
    ],
)
def test_bad_inputs_get_422_naming_the_field(clients, kind, body, field, fragment):
    _, client = clients[kind]
    resp = _post(client, body)
    assert resp.status_code == 422, resp.text
    out = resp.json()
    assert field in [e["field"] for e in out["errors"]], out
    assert fragment in out["detail"], out["detail"]
    assert "Traceback" not in resp.text


def test_a_huge_image_is_refused_before_its_pixels_are_decoded(clients):
    from PIL import Image

    buf = io.BytesIO()
    Image.new("L", (5000, 4000), 0).save(buf, format="PNG")  # 20 megapixels, a few kB compressed
    resp = _post(clients["image"][1], {"path": base64.b64encode(buf.getvalue()).decode()})
    assert resp.status_code == 422 and "5000 x 4000 pixels" in resp.json()["detail"]


def test_the_server_never_opens_a_path_a_request_names(models, clients):
    _, client = clients["image"]
    path = str(models["image_folder"] / "d0000.png")  # exists, and the model was trained on such paths
    resp = _post(client, {"path": path})
    assert resp.status_code == 422 and resp.json()["errors"][0]["field"] == "path"


def test_one_bad_record_fails_only_its_own_request(models, clients):
    """A record the preprocessing refuses (an image whose header reads but whose pixels do not) gets
    a 422 naming it, while the records batched with it are still predicted."""
    runner, client = clients["image"]
    ckpt, test = models["image"]
    good = (models["image_folder"] / test["path"][0]).read_bytes()
    broken = good[: len(good) // 2]  # the header survives (PIL opens it), the pixel data is cut
    out = runner.predict([{"path": good}, {"path": broken}, {"path": good}])
    assert "prediction" in out[0] and "prediction" in out[2] and out[0]["prediction"] == out[2]["prediction"]
    assert out[1]["type"] == "value_error" and out[1]["column"] == "path" and "not a readable image" in out[1]["error"]
    resp = _post(client, {"records": [{"path": base64.b64encode(good).decode()}, {"path": base64.b64encode(broken).decode()}]})
    assert resp.status_code == 422, resp.text
    assert resp.json()["errors"][0]["field"] == "records[1].path" and "not a readable image" in resp.json()["detail"]
    text_runner, _ = clients["text"]
    out = text_runner.predict([{"text": "great day"}, {"text": LONG_TEXT}])  # a batch of two requests' records
    assert "prediction" in out[0] and "max_length 16" in out[1]["error"]


# ----------------------------------------------------------------------- schema, metadata, examples


@pytest.mark.parametrize("kind, expected", [("text", "text"), ("sequence", "sequence"), ("series", "series"), ("image", "image")])
def test_metadata_docs_and_example_describe_the_input_kind(clients, kind, expected):
    runner, client = clients[kind]
    meta = client.get("/metadata").json()
    assert meta["input"]["kind"] == expected and meta["input"]["column"] == runner.columns[0]
    schema = client.get("/openapi.json").json()
    assert "Input: " in schema["info"]["description"] and f"`{runner.columns[0]}`" in schema["info"]["description"]
    field = schema["components"]["schemas"]["Record"]["properties"][runner.columns[0]]
    if kind == "text":
        assert field["type"] == "string" and field["maxLength"] == meta["input"]["max_characters"]
    elif kind == "image":
        assert field["type"] == "string" and field["contentEncoding"] == "base64"
    else:
        assert field["type"] == "array"
    example = example_record(runner.pre)
    assert meta["example"] == example
    assert _post(client, example).status_code == 200  # the documented example is a valid request


# ------------------------------------------------------------------------- the predict client


def test_client_reads_text_columns_as_text(tmp_path):
    path = tmp_path / "texts.csv"
    path.write_text('text,label\n007,pos\nNA,neg\n"a, quoted text",pos\n')
    info = {"kind": "text", "column": "text"}
    df = serve_client.read_records(path, text_columns=("text",))
    recs = list(serve_client.request_records(df[["text"]], info, path))
    assert recs == [{"text": "007"}, {"text": "NA"}, {"text": "a, quoted text"}]


def test_client_reads_sequences_from_json_cells_parquet_lists_and_json(tmp_path):
    info = {"kind": "sequence", "column": "readings"}
    rows = [[[1.0, 2.0], [3.0, 4.0]], [[5.0, 6.0]]]
    csv = tmp_path / "s.csv"
    pd.DataFrame({"readings": [json.dumps(r) for r in rows]}).to_csv(csv, index=False)
    parquet = tmp_path / "s.parquet"
    pd.DataFrame({"readings": rows}).to_parquet(parquet)
    js = tmp_path / "s.json"
    js.write_text(json.dumps([{"readings": r} for r in rows]))
    for path in (csv, parquet, js):
        recs = list(serve_client.request_records(serve_client.read_records(path), info, path))
        assert recs == [{"readings": r} for r in rows], path
    bad = tmp_path / "bad.csv"
    bad.write_text("readings\n1;2;3\n")
    with pytest.raises(OrchestratorError, match=r"bad.csv: row 0, column 'readings': expected a JSON list"):
        list(serve_client.request_records(serve_client.read_records(bad), info, bad))


def test_client_sends_image_files_base64_encoded(tmp_path):
    (tmp_path / "imgs").mkdir()
    data = png(np.full((4, 4), 200))
    (tmp_path / "imgs" / "a.png").write_bytes(data)
    path = tmp_path / "images.csv"
    path.write_text("img\nimgs/a.png\n")
    recs = list(serve_client.request_records(serve_client.read_records(path), {"kind": "image", "column": "img", "source": "path"}, path))
    assert base64.b64decode(recs[0]["img"]) == data
    path.write_text("img\nimgs/missing.png\n")
    with pytest.raises(OrchestratorError, match="row 0: .*missing.png: image file not found"):
        list(serve_client.request_records(serve_client.read_records(path), {"kind": "image", "column": "img", "source": "path"}, path))
    parquet = tmp_path / "bytes.parquet"
    pd.DataFrame({"img": [data]}).to_parquet(parquet)
    recs = list(
        serve_client.request_records(serve_client.read_records(parquet), {"kind": "image", "column": "img", "source": "bytes"}, parquet)
    )
    assert base64.b64decode(recs[0]["img"]) == data


def test_client_chunks_stay_under_the_body_limit(tmp_path):
    recs = [{"img": "x" * 300} for _ in range(10)]
    chunks = list(serve_client._chunks(iter(recs), 100, 1100, tmp_path / "f.csv"))
    assert [start for start, _ in chunks] == [0, 3, 6, 9] and sum(len(c) for _, c in chunks) == 10
    assert all(len(json.dumps({"records": c})) <= 1100 for _, c in chunks)
    assert [start for start, _ in serve_client._chunks(iter(recs), 4, None, tmp_path / "f.csv")] == [0, 4, 8]
    with pytest.raises(OrchestratorError, match="row 0 is .* bytes as JSON"):
        list(serve_client._chunks(iter([{"img": "x" * 2000}]), 100, 1000, tmp_path / "f.csv"))
