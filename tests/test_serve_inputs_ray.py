"""The new input kinds served by a real Ray Serve deployment, over real HTTP: text, sequence, series
windows and image files; predictions equal offline, bad inputs get a 4xx naming the field, and
`orchestrator predict` sends a CSV of texts and a CSV of PNG paths."""

from __future__ import annotations

import base64
import json
from concurrent.futures import ThreadPoolExecutor

import httpx
import numpy as np
import pytest
import typer
from typer.testing import CliRunner

from orchestrator.cli import serve as serve_cli
from orchestrator.spec import ServeSpec
from tests.serve_inputs_support import image_checkpoint, offline, sequence_checkpoint, series_checkpoint, text_checkpoint
from tests.serve_support import free_port

pytestmark = pytest.mark.ray

KINDS = ("text", "sequence", "series", "image")
LONG_TEXT = " ".join(["zqx"] * 20)  # under the character limit, far over max_length 16 tokens


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    root = tmp_path_factory.mktemp("inputs-ray")
    return {
        "text": text_checkpoint(root / "text"),
        "sequence": sequence_checkpoint(root / "sequence"),
        "series": series_checkpoint(root / "series", horizon=3),
        "image": image_checkpoint(root / "image", root / "digits"),
        "root": root,
    }


@pytest.fixture(scope="module")
def servers(ray_session, models):
    from ray import serve

    from orchestrator.serve.deployment import deploy

    port = free_port()
    urls = {}
    for kind in KINDS:
        spec = ServeSpec(port=port, route_prefix=f"/{kind}", cpus_per_replica=0.25, max_batch_size=32, batch_wait_timeout_s=0.05)
        urls[kind] = deploy(models[kind][0], spec, name=f"inputs-{kind}")
    yield urls
    for kind in KINDS:
        serve.delete(f"inputs-{kind}")
    serve.shutdown()


def _b64(path) -> str:
    return base64.b64encode(path.read_bytes()).decode("ascii")


def _requests(kind: str, models) -> list[dict]:
    _, test = models[kind]
    if kind == "image":
        return [{"path": _b64(models["root"] / "digits" / p)} for p in test["path"]]
    column = {"text": "text", "sequence": "readings", "series": "value"}[kind]
    return [{column: v} for v in test[column]]


@pytest.mark.parametrize("kind", KINDS)
def test_served_predictions_equal_offline(servers, models, kind):
    ckpt, test = models[kind]
    expected, probs = offline(ckpt, test)
    records = _requests(kind, models)
    body = httpx.post(f"{servers[kind]}/predict", json={"records": records}, timeout=60)
    assert body.status_code == 200, body.text
    # and one record per request, many at once: Serve batches them together on the replica
    with httpx.Client(timeout=60) as c, ThreadPoolExecutor(8) as pool:
        singles = list(pool.map(lambda r: c.post(f"{servers[kind]}/predict", json=r).json(), records))
    got = body.json()["predictions"]
    one_by_one = [s["predictions"][0] for s in singles]
    if probs is not None:
        assert got == list(expected) and one_by_one == list(expected)
        served = np.array([list(p.values()) for p in body.json()["probabilities"]])
        np.testing.assert_allclose(served, probs, atol=1e-5)
    else:
        np.testing.assert_allclose(np.array(got, float), np.array(expected, float), rtol=1e-5, atol=1e-5)
        np.testing.assert_allclose(np.array(one_by_one, float), np.array(expected, float), rtol=1e-5, atol=1e-5)
    if kind == "series":
        assert all(len(p) == 3 for p in got)  # horizon 3: three values per window
    meta = httpx.get(f"{servers[kind]}/metadata").json()
    assert meta["input"]["kind"] == kind
    assert "Input: " in httpx.get(f"{servers[kind]}/openapi.json").json()["info"]["description"]


BAD = [
    ("text", {"text": ""}, "text", "at least 1 character"),
    ("text", {"text": "  \t "}, "text", "only whitespace"),
    ("text", {"text": LONG_TEXT}, "text", "more than max_length 16"),
    ("text", {"text": 42}, "text", "valid string"),
    ("text", {"text": "fine", "mood": "odd"}, "mood", "unknown field"),
    ("sequence", {"readings": [[1, 2], [3, 4, 5]]}, "readings", "step 1 has 3 values"),
    ("sequence", {"readings": [[1, 2]] * 9}, "readings", "more than the model's max_length 8"),
    ("sequence", b'{"readings": [[1.0, NaN]]}', "readings", "not a finite number"),
    ("sequence", {"readings": "[[1, 2]]"}, "readings", "expected a list"),
    ("series", {"value": [1.0, 2.0]}, "value", "exactly 6 values"),
    ("image", {"path": "%%% not base64"}, "path", "not valid base64"),
    ("image", {"path": base64.b64encode(b"GIF? no, plain bytes").decode()}, "path", "not an image file"),
]


def test_bad_inputs_get_4xx_naming_the_field(servers):
    with httpx.Client(timeout=30) as c:
        for kind, body, field, fragment in BAD:
            kw = {"content": body, "headers": {"Content-Type": "application/json"}} if isinstance(body, bytes) else {"json": body}
            resp = c.post(f"{servers[kind]}/predict", **kw)
            assert 400 <= resp.status_code < 500, (kind, body, resp.text)
            out = resp.json()
            assert field in [e["field"] for e in out.get("errors", [])] and fragment in out["detail"], (kind, body, out)


def test_a_bad_record_batched_with_good_ones_fails_alone(servers, models):
    """Concurrent requests share forward passes on the replica: an over-long text among them is a 422
    for its own request only; every other request is answered."""
    records = _requests("text", models)[:12]
    bodies = records[:6] + [{"text": LONG_TEXT}] + records[6:]
    with httpx.Client(timeout=60) as c, ThreadPoolExecutor(13) as pool:
        answers = list(pool.map(lambda r: c.post(f"{servers['text']}/predict", json=r), bodies))
    codes = [a.status_code for a in answers]
    assert codes == [200] * 6 + [422] + [200] * 6, [a.text for a in answers]
    assert answers[6].json()["errors"][0]["field"] == "text"


def _predict_cli(url: str, path) -> list[dict]:
    app = typer.Typer()
    serve_cli.register(app)
    result = CliRunner().invoke(app, ["predict", url, str(path), "--json", "--chunk", "16"])
    assert result.exit_code == 0, result.output
    return [json.loads(x) for x in result.stdout.splitlines() if x.startswith("{")]


def test_predict_command_on_a_csv_of_texts(servers, models, tmp_path):
    ckpt, test = models["text"]
    path = tmp_path / "texts.csv"
    test.to_csv(path, index=False)  # with the label column too: the client leaves it out
    rows = _predict_cli(servers["text"], path)
    assert [r["prediction"] for r in rows] == offline(ckpt, test)[0] and [r["row"] for r in rows] == list(range(len(test)))


def test_predict_command_on_a_folder_of_png_paths(servers, models):
    ckpt, test = models["image"]
    path = models["root"] / "images.csv"  # paths relative to the CSV's folder
    test.assign(path=["digits/" + p for p in test["path"]]).to_csv(path, index=False)
    rows = _predict_cli(servers["image"], path)
    assert [r["prediction"] for r in rows] == offline(ckpt, test)[0]


def _blank_png_b64(width: int, height: int) -> str:
    import io

    from PIL import Image

    buf = io.BytesIO()
    Image.new("L", (width, height), 0).save(buf, format="PNG")
    return base64.b64encode(buf.getvalue()).decode("ascii")


def test_image_requests_cannot_buy_seconds_of_decoding(servers, models):
    """Before: 45 single-colour 4096 x 4096 PNGs fit in one 1 MB body and took 3.4 s to decode, and
    four such bodies at once delayed a normal request from 15 ms to 11.9 s. Now each image is capped
    from its header (256 x the model's 8 x 8 input, at least 1 Mpixel) and each request at 16.7
    Mpixel together: the large body is refused at once, and four bodies at the request cap leave a
    normal request answered within 2 s."""
    import time

    from orchestrator.data.kinds.image import MAX_REQUEST_PIXELS

    url = servers["image"]
    t0 = time.monotonic()
    big = httpx.post(f"{url}/predict", json={"records": [{"path": _blank_png_b64(4096, 4096)}] * 45}, timeout=60)
    assert big.status_code == 422 and "pixels per image" in big.json()["detail"] and time.monotonic() - t0 < 2, big.text
    too_many = httpx.post(f"{url}/predict", json={"records": [{"path": _blank_png_b64(1024, 1024)}] * 17}, timeout=60)
    assert too_many.status_code == 413 and f"at most {MAX_REQUEST_PIXELS} pixels per request" in too_many.json()["detail"], too_many.text

    at_cap = {"records": [{"path": _blank_png_b64(1024, 1024)}] * (MAX_REQUEST_PIXELS // (1024 * 1024))}
    normal = {"path": _b64(models["root"] / "digits" / models["image"][1]["path"].iloc[0])}
    with ThreadPoolExecutor(5) as pool:
        heavy = [pool.submit(httpx.post, f"{url}/predict", json=at_cap, timeout=120) for _ in range(4)]
        t0 = time.monotonic()
        answer = httpx.post(f"{url}/predict", json=normal, timeout=60)
        took = time.monotonic() - t0
        codes = [f.result().status_code for f in heavy]
    assert answer.status_code == 200 and codes == [200] * 4, (answer.text, codes)
    assert took < 2.0, f"a normal request took {took:.2f} s behind four bodies at the pixel cap"


def test_predict_command_refuses_paths_that_are_no_image_files_and_sends_nothing(servers, models, tmp_path):
    import os
    import time

    os.mkfifo(tmp_path / "fifo")
    (tmp_path / "notes.txt").write_text("password=hunter2\n")
    app = typer.Typer()
    serve_cli.register(app)
    for cell, cause in (
        ("/dev/zero", "a device or special file"),
        ("fifo", "a FIFO"),
        ("notes.txt", "it was not sent"),
        ("../../etc/passwd", "must stay inside the data's folder"),
    ):
        path = tmp_path / "rows.csv"
        path.write_text(f"path\n{cell}\n")
        t0 = time.monotonic()
        result = CliRunner().invoke(app, ["predict", servers["image"], str(path)])
        assert result.exit_code == 1 and cause in " ".join(result.output.split()), (cell, result.output)
        assert "Traceback" not in result.output and time.monotonic() - t0 < 10


# ------------------------------------------------------------------ offline: `orchestrator predict RUN|CHECKPOINT FILE|DIR -o OUT`


def _predict_offline(*args: str):
    app = typer.Typer()
    serve_cli.register(app)
    return CliRunner().invoke(app, ["predict", *args])


def _served(url: str, records: list[dict]) -> dict:
    resp = httpx.post(f"{url}/predict", json={"records": records}, timeout=60)
    assert resp.status_code == 200, resp.text
    return resp.json()


def test_offline_predict_over_a_multi_file_parquet_folder_equals_the_server(servers, models, tmp_path):
    import pandas as pd

    ckpt, test = models["text"]
    folder = tmp_path / "texts"
    (folder / "more").mkdir(parents=True)
    names, parts = ["a.parquet", "b.parquet", "more/c.parquet"], [test.iloc[:15], test.iloc[15:30], test.iloc[30:]]
    for name, part in zip(names, parts):
        part.to_parquet(folder / name, index=False)
    result = _predict_offline(str(ckpt), str(folder), "-o", str(tmp_path / "preds.parquet"), "--batch-size", "8")
    assert result.exit_code == 0, result.output
    assert f"predicted {len(test)} rows" in result.output

    out = pd.read_parquet(tmp_path / "preds.parquet")
    served = _served(servers["text"], [{"text": t} for t in test["text"]])
    assert list(out["prediction"]) == served["predictions"]
    for c in ("neg", "pos"):
        assert np.allclose(out[f"probability_{c}"], [p[c] for p in served["probabilities"]], atol=1e-5)
    assert list(out["source_file"]) == [n for n, p in zip(names, parts) for _ in range(len(p))]
    assert list(out["source_row"]) == [i for p in parts for i in range(len(p))]
    assert list(out["text"]) == list(test["text"]) and list(out["label"]) == list(test["label"])  # the input's columns kept
    assert out["error"].isna().all()


def test_offline_predict_of_image_paths_to_a_folder_fails_a_missing_file_alone(servers, models, tmp_path):
    import pandas as pd

    ckpt, test = models["image"]
    path = models["root"] / "offline-images.csv"  # paths relative to the CSV's folder, as in training
    rows = test.assign(path=["digits/" + p for p in test["path"]], id=range(len(test)))
    rows.loc[3, "path"] = "digits/missing.png"
    rows.to_csv(path, index=False)
    result = _predict_offline(str(ckpt), str(path), "-o", str(tmp_path / "preds"), "--format", "csv")
    assert result.exit_code == 0, result.output
    assert "1 rows could not be predicted" in result.output and "missing.png" in result.output

    out = pd.read_csv(tmp_path / "preds" / "offline-images.csv")
    assert out.loc[3, "error"].startswith("row 3: ") and "missing.png" in out.loc[3, "error"]
    served = _served(servers["image"], [{"path": _b64(models["root"] / "digits" / p)} for p in test["path"]])
    good = [i for i in range(len(test)) if i != 3]
    assert [int(out.loc[i, "prediction"]) for i in good] == [served["predictions"][i] for i in good]
    assert list(out["id"]) == list(range(len(test))) and out["error"].drop(index=3).isna().all()


def test_offline_predict_of_sequences_in_json_lines_fails_a_cell_of_the_wrong_type_alone(servers, models, tmp_path):
    ckpt, test = models["sequence"]
    records = [{"readings": r} for r in test["readings"]]
    lines = [dict(r) for r in records]
    lines[4] = {"readings": "abc"}
    path = tmp_path / "seq.jsonl"
    path.write_text("\n".join(json.dumps(x) for x in lines) + "\n")
    result = _predict_offline(str(ckpt), str(path), "-o", str(tmp_path / "preds.jsonl"))
    assert result.exit_code == 0, result.output

    out = [json.loads(x) for x in (tmp_path / "preds.jsonl").read_text().splitlines()]
    assert out[4]["error"].startswith("row 4, column 'readings': expected a JSON list") and out[4]["prediction"] is None
    served = _served(servers["sequence"], records)
    for i, row in enumerate(out):
        if i != 4:
            assert row["prediction"] == pytest.approx(served["predictions"][i], rel=1e-5) and row["error"] is None
