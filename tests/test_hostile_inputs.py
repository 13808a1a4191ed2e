"""Hostile and careless inputs without Ray: image files that never end, paths that leave the data's
folder, rows named by their place in the file, 16-bit images, request amplification, slow bodies.
(The same through the CLI and over real HTTP: test_hostile_inputs_ray.py, test_serve_slow_clients_ray.py.)"""

from __future__ import annotations

import asyncio
import base64
import io
import os
import struct
import time
import warnings
import zlib
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow.csv as pacsv
import pyarrow.parquet as pq
import pytest
from PIL import Image

with warnings.catch_warnings():  # starlette's TestClient warns that it prefers httpx2
    warnings.simplefilter("ignore")
    from fastapi.testclient import TestClient

from orchestrator.data.images import decode_image, read_image_file, resolve_image_path
from orchestrator.data.ingest import check_columns
from orchestrator.data.kinds.image import MAX_REQUEST_PIXELS
from orchestrator.data.kinds.sequence import MAX_SEQUENCE_STEPS
from orchestrator.data.rows import scan_rows
from orchestrator.errors import DataError, OrchestratorError
from orchestrator.serve import client as serve_client
from orchestrator.serve.app import make_api
from orchestrator.serve.guard import Intake
from orchestrator.serve.runner import ModelRunner
from orchestrator.serve.schemas import ClientError
from orchestrator.spec import parse_spec
from tests.serve_inputs_support import image_checkpoint, png

# ------------------------------------------------------------------------------- image files


@pytest.mark.parametrize("kind", ["device", "fifo", "folder"])
def test_an_image_path_that_is_not_a_regular_file_is_refused_unread(tmp_path, kind):
    path = {"device": "/dev/zero", "fifo": str(tmp_path / "fifo"), "folder": str(tmp_path)}[kind]
    if kind == "fifo":
        os.mkfifo(path)  # opening it for reading would wait for a writer forever
    t0 = time.monotonic()
    with pytest.raises(ValueError, match=f"{path}: (a device or special file|a FIFO|a folder), not an image file"):
        read_image_file(path, "path")
    assert time.monotonic() - t0 < 2


def test_an_image_file_over_the_size_limit_is_refused_unread(tmp_path):
    big = tmp_path / "big.png"
    with open(big, "wb") as f:
        f.truncate(5000)  # sparse: the size is what counts
    with pytest.raises(ValueError, match=r"big.png: image file of 5000 bytes .*at most 4096 bytes"):
        read_image_file(str(big), "path", limit=4096)
    assert len(read_image_file(str(big), "path", limit=5000)) == 5000


def test_relative_image_paths_stay_inside_the_data_folder(tmp_path):
    data = tmp_path / "data"
    (data / "imgs").mkdir(parents=True)
    (tmp_path / "outside.png").write_bytes(png(np.zeros((4, 4))))
    assert resolve_image_path("imgs/../imgs/a.png", str(data)) == str(data / "imgs" / "a.png")
    for escaping in ("../outside.png", "imgs/../../outside.png"):
        with pytest.raises(ValueError, match="must stay inside the data's folder"):
            resolve_image_path(escaping, str(data))
    # an absolute path and a symbolic link inside the folder are the data author's choice: followed
    assert resolve_image_path(str(tmp_path / "outside.png"), str(data)) == str(tmp_path / "outside.png")
    (data / "imgs" / "link.png").symlink_to(tmp_path / "outside.png")
    assert read_image_file(resolve_image_path("imgs/link.png", str(data)), "path") == (tmp_path / "outside.png").read_bytes()


def test_sixteen_bit_images_are_scaled_not_clipped():
    rng = np.random.default_rng(0)
    a16 = rng.integers(0, 65536, size=(16, 12)).astype(np.uint16)
    buf = io.BytesIO()
    Image.fromarray(a16).save(buf, format="PNG")
    x = decode_image(buf.getvalue(), [1, 16, 12], "t")
    np.testing.assert_allclose(x[0], a16 / 257.0, rtol=1e-5)  # the same 0..255 scale as 8-bit images
    assert x.min() < 5 and x.max() > 250
    rgb = decode_image(buf.getvalue(), [3, 8, 6], "t")
    assert rgb.shape == (3, 8, 6) and np.allclose(rgb[0], rgb[2])
    assert decode_image(buf.getvalue(), [4, 16, 12], "t")[3].min() == 255.0


# ------------------------------------------------------------------------ rows named by the file


def _scan(tmp_path: Path, df: pd.DataFrame, kind: str, name: str, **section):
    path = tmp_path / name
    if name.endswith(".parquet"):
        df.to_parquet(path)
        table = pq.read_table(path)
    else:
        df.to_csv(path, index=False)
        table = pacsv.read_csv(path)
    column = df.columns[0]
    model = {"arch": "cnn"} if kind == "image" else {"arch": "mlp"} if kind == "features" else {"arch": "rnn"}
    data = {"source": str(path), "label": "label"}
    data.update({"features": [column]} if kind == "features" else {kind: {"column": column, **section}})
    spec = parse_spec({"name": "t", "data": data, "model": model})
    cols = check_columns(spec, str(path), table.schema)
    # both ways a source is scanned: the table read on the driver, and file by file from the source
    messages = set()
    for t in (table, None):
        with pytest.raises(DataError) as err:
            scan_rows(spec, str(path), cols, t)
        messages.add(str(err.value))
    assert len(messages) == 1, messages
    (message,) = messages
    assert "\n" not in message
    return message, str(path)


PNG = png(np.full((4, 4), 100))
BAD_ROWS = [
    ("text", pd.DataFrame({"text": ["a b", "c", None, "d", "e", "f", "g", "h"], "label": [0, 1] * 4}), {}, 2, "missing"),
    ("text", pd.DataFrame({"text": ["a b", "c", "d", "e", "f", "g", "  \t", "h"], "label": [0, 1] * 4}), {}, 6, "whitespace-only"),
    (
        "sequence",
        pd.DataFrame({"r": [[[1.0, 2.0]]] * 5 + [[[1.0, 2.0, 3.0]]] + [[[1.0, 2.0]]] * 2, "label": [0, 1] * 4}),
        {},
        5,
        "its steps hold 3 values, those of row 0 hold 2",
    ),
    (
        "sequence",
        pd.DataFrame({"r": [[1.0, 2.0]] * 5 + [[1.0, np.inf]] + [[1.0]] * 2, "label": [0, 1] * 4}),
        {},
        5,
        "step 1: value inf is not finite",
    ),
    (
        "sequence",
        pd.DataFrame({"r": [[1.0, 2.0]] * 5 + [[1.0, np.nan]] + [[1.0]] * 2, "label": [0, 1] * 4}),
        {},
        5,
        "step 1: missing value",
    ),
    ("sequence", pd.DataFrame({"r": [[1.0, 2.0]] * 3 + [None] + [[1.0]] * 4, "label": [0, 1] * 4}), {}, 3, "missing sequence"),
    (
        "sequence",
        pd.DataFrame({"r": [[1.0]] * 4 + [[0.5] * (MAX_SEQUENCE_STEPS + 1)] + [[1.0]] * 3, "label": [0, 1] * 4}),
        {},
        4,
        "set data.sequence.max_length",
    ),
    ("image", pd.DataFrame({"path": ["a.png"] * 7 + [None], "label": [0, 1] * 4}), {"shape": [1, 8, 8]}, 7, "missing image file path"),
    (
        "image",
        pd.DataFrame({"path": ["a.png"] * 3 + ["../../etc/passwd"] + ["a.png"] * 4, "label": [0, 1] * 4}),
        {"shape": [1, 8, 8]},
        3,
        "must stay inside the data's folder",
    ),
    ("image", pd.DataFrame({"png": [PNG] * 5 + [b""] + [PNG] * 2, "label": [0, 1] * 4}), {"shape": [1, 8, 8]}, 5, "empty image bytes"),
    (
        "image",
        pd.DataFrame({"png": [PNG] * 6 + [b"GIF89a but not really"] + [PNG], "label": [0, 1] * 4}),
        {"shape": [1, 8, 8]},
        6,
        "not a readable image",
    ),
]


# every case as Parquet, and as CSV those that have a CSV form (not lists, not bytes)
CASES = [(fmt, *b) for b in BAD_ROWS for fmt in ("parquet", "csv") if fmt == "parquet" or not (b[0] == "sequence" or "png" in b[1].columns)]


@pytest.mark.parametrize("fmt, kind, df, section, row, cause", CASES, ids=[f"{c[0]}-{c[1]}-{c[5][:20]}" for c in CASES])
def test_a_bad_row_is_named_by_file_row_and_column(tmp_path, fmt, kind, df, section, row, cause):
    message, path = _scan(tmp_path, df, kind, f"data.{fmt}", **section)
    assert message.startswith(f"{path}: row {row}, column {df.columns[0]!r}: "), message
    assert cause in message, message


def test_rows_without_a_label_are_counted_and_skip_the_row_checks(tmp_path):
    df = pd.DataFrame({"text": ["a", None, "c", "d"], "label": [0.0, np.nan, 1.0, None]})
    path = tmp_path / "t.parquet"
    df.to_parquet(path)
    spec = parse_spec(
        {
            "name": "t",
            "data": {"source": str(path), "label": "label", "task": "classification", "text": {"column": "text"}},
            "model": {"arch": "rnn"},
        }
    )
    table = pq.read_table(path)
    counts = scan_rows(spec, str(path), check_columns(spec, str(path), table.schema), table)
    assert (counts.rows, counts.missing_labels) == (4, 2)


def test_rows_of_a_folder_are_counted_per_file(tmp_path):
    (tmp_path / "d").mkdir()
    pd.DataFrame({"text": ["a", "b", "c"], "label": [0, 1, 0]}).to_parquet(tmp_path / "d" / "part-0.parquet")
    pd.DataFrame({"text": ["a", "b", None], "label": [0, 1, 0]}).to_parquet(tmp_path / "d" / "part-1.parquet")
    spec = parse_spec(
        {
            "name": "t",
            "data": {"source": str(tmp_path / "d"), "format": "parquet", "label": "label", "text": {"column": "text"}},
            "model": {"arch": "rnn"},
        }
    )
    schema = pq.read_schema(tmp_path / "d" / "part-0.parquet")
    with pytest.raises(DataError, match=r"part-1.parquet: row 2, column 'text': missing text"):
        scan_rows(spec, str(tmp_path / "d"), check_columns(spec, str(tmp_path / "d"), schema))


def test_text_that_is_not_utf8_is_named_with_its_row(tmp_path):
    path = tmp_path / "bad.csv"
    path.write_bytes(b"text,label\nhello,0\nworld,1\n\xff\xfe,0\nok,1\n")
    spec = parse_spec({"name": "t", "data": {"source": str(path), "label": "label", "text": {"column": "text"}}, "model": {"arch": "rnn"}})
    with pytest.raises(DataError, match=r"bad.csv: row 2 .*column 'text' \(data.text.column\) holds bytes that are not UTF-8 text"):
        check_columns(spec, str(path), pacsv.read_csv(path).schema)


def test_string_series_values_are_blamed_on_the_series_column(tmp_path):
    path = tmp_path / "s.csv"
    pd.DataFrame({"t": range(5), "v": ["a", "b", "c", "d", "e"]}).to_csv(path, index=False)
    spec = parse_spec(
        {
            "name": "t",
            "data": {"source": str(path), "label": "v", "series": {"column": "v", "order_by": "t", "window": 2}},
            "model": {"arch": "rnn"},
        }
    )
    with pytest.raises(DataError, match=r"column 'v' \(data.series.column\) has type string; a series must hold numbers"):
        check_columns(spec, str(path), pacsv.read_csv(path).schema)


# ----------------------------------------------------------------------------- serving images


@pytest.fixture(scope="module")
def image_server(tmp_path_factory):
    root = tmp_path_factory.mktemp("hostile")
    ckpt, _ = image_checkpoint(root / "image", root / "digits")
    runner = ModelRunner(ckpt, max_records=100, max_body_bytes=1 << 20)

    async def infer(records):
        return runner.predict(records)

    return runner, TestClient(make_api(runner, infer))


def _png_b64(width: int, height: int, value: int = 0) -> str:
    buf = io.BytesIO()
    Image.new("L", (width, height), value).save(buf, format="PNG")
    return base64.b64encode(buf.getvalue()).decode()


def test_many_large_images_in_one_body_are_refused_before_decoding(image_server):
    """45 single-colour 4096 x 4096 PNGs fit in a 1 MB body; each is over the per-image cap of a model
    of 8 x 8 inputs, and together they are over the per-request cap: 422 at once, naming the limit."""
    runner, client = image_server
    big = _png_b64(4096, 4096)
    t0 = time.monotonic()
    resp = client.post("/predict", json={"records": [{"path": big}] * 45})
    assert time.monotonic() - t0 < 3
    assert resp.status_code == 422 and "this server decodes at most 1048576 pixels per image" in resp.json()["detail"], resp.text
    # images each under the per-image cap, over the request's cap together: 413 naming it
    mid = _png_b64(1024, 1024)
    n = MAX_REQUEST_PIXELS // (1024 * 1024) + 1
    resp = client.post("/predict", json={"records": [{"path": mid}] * n})
    assert resp.status_code == 413 and f"at most {MAX_REQUEST_PIXELS} pixels per request" in resp.json()["detail"], resp.text
    assert runner.metadata()["limits"]["max_request_pixels"] == MAX_REQUEST_PIXELS


def test_an_image_whose_header_claims_a_bomb_is_refused_naming_the_pixels(image_server):
    _, client = image_server

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    header = chunk(b"IHDR", struct.pack(">IIBBBBB", 20000, 20000, 8, 0, 0, 0, 0))  # 20000 x 20000 grey, no pixels sent
    bomb = b"\x89PNG\r\n\x1a\n" + header + chunk(b"IEND", b"")
    resp = client.post("/predict", json={"path": base64.b64encode(bomb).decode()})
    assert resp.status_code == 422 and "pixels" in resp.json()["detail"] and "scale the image down" in resp.json()["detail"], resp.text


def test_sixteen_bit_image_served_as_trained(image_server, tmp_path):
    runner, client = image_server
    a16 = (np.arange(64).reshape(8, 8) * 1000).astype(np.uint16)
    b16 = io.BytesIO()
    Image.fromarray(a16).save(b16, format="PNG")
    b8 = io.BytesIO()
    Image.fromarray(np.round(a16 / 257.0).astype(np.uint8)).save(b8, format="PNG")
    got = [client.post("/predict", json={"path": base64.b64encode(b.getvalue()).decode()}).json()["probabilities"][0] for b in (b16, b8)]
    np.testing.assert_allclose(list(got[0].values()), list(got[1].values()), atol=0.02)


def test_sequence_and_series_errors_say_what_they_got_once(tmp_path):
    from tests.serve_inputs_support import sequence_checkpoint, series_checkpoint

    for ckpt, body in (
        (sequence_checkpoint(tmp_path / "seq")[0], {"readings": "1,2"}),
        (series_checkpoint(tmp_path / "ser")[0], {"value": 3}),
    ):
        runner = ModelRunner(ckpt)
        with pytest.raises(ClientError) as err:
            runner.parse(__import__("json").dumps(body).encode())
        assert str(err.value.detail).count(", got") == 1 and str(err.value.detail).count("got ") == 1, err.value.detail


# ---------------------------------------------------------------------------- predict client


@pytest.mark.parametrize("cell", ["/dev/zero", "fifo", "secret.txt", "../outside.png"])
def test_the_predict_client_sends_only_image_files_from_inside_or_named_absolutely(tmp_path, cell):
    (tmp_path / "data").mkdir()
    os.mkfifo(tmp_path / "data" / "fifo")
    (tmp_path / "data" / "secret.txt").write_text("password=hunter2\n")
    (tmp_path / "outside.png").write_bytes(png(np.zeros((4, 4))))
    path = tmp_path / "data" / "rows.csv"
    path.write_text(f"img\n{cell}\n")
    t0 = time.monotonic()
    with pytest.raises(OrchestratorError) as err:
        list(serve_client.request_records(serve_client.read_records(path), {"kind": "image", "column": "img", "source": "path"}, path))
    assert time.monotonic() - t0 < 2
    message = str(err.value)
    assert message.startswith(f"{path}: row 0: ") and "\n" not in message, message
    assert {"secret.txt": "it was not sent", "../outside.png": "must stay inside", "fifo": "a FIFO", "/dev/zero": "a device"}[
        cell
    ] in message, message


def test_the_predict_client_splits_requests_by_the_servers_pixel_limit(tmp_path):
    recs = [{"img": _png_b64(1000, 1000)} for _ in range(5)]
    chunks = list(serve_client._chunks(iter(recs), 100, None, tmp_path / "f.csv", image_column="img", max_pixels=2_500_000))
    assert [len(c) for _, c in chunks] == [2, 2, 1] and [s for s, _ in chunks] == [0, 2, 4]


# ------------------------------------------------------------------------------ slow bodies


class _Stalled:
    """A request whose body never finishes arriving."""

    async def stream(self):
        yield b"{"
        await asyncio.sleep(3600)


def test_a_body_that_does_not_arrive_in_time_is_408():
    intake = Intake(body_timeout_s=0.2)

    async def go():
        with pytest.raises(ClientError) as err:
            await intake.read_body(_Stalled(), 1000)
        return err.value

    t0 = time.monotonic()
    e = asyncio.run(go())
    assert e.status == 408 and "serve.body_timeout_s" in e.detail and time.monotonic() - t0 < 2
    assert intake.counts() == {"receiving": 0, "working": 0, "waiting": 0}


def test_working_slots_and_the_waiting_queue_answer_503_beyond_them():
    intake = Intake(max_working=1, max_waiting=1)

    async def go():
        release = asyncio.Event()

        async def hold():
            async with intake.slot():
                await release.wait()

        first = asyncio.create_task(hold())
        await asyncio.sleep(0.01)
        second = asyncio.create_task(hold())  # waits for the slot
        await asyncio.sleep(0.01)
        assert intake.counts() == {"receiving": 0, "working": 1, "waiting": 1}
        with pytest.raises(ClientError) as err:
            async with intake.slot():
                pass
        release.set()
        await asyncio.gather(first, second)
        return err.value

    e = asyncio.run(go())
    assert e.status == 503 and e.headers == {"Retry-After": "1"}
    assert intake.counts() == {"receiving": 0, "working": 0, "waiting": 0}
