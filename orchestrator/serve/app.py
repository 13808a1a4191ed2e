"""The HTTP surface of a served model: request schema, validation, inference, FastAPI app.

Nothing here imports Ray. `orchestrator.serve.deployment` wraps it in a Ray Serve deployment with dynamic
batching; the benchmark runs the very same app under plain uvicorn with a per-request forward
pass, so the two differ only in how requests reach the model.

Request body of `POST /predict` (JSON), one of:
  {"mean_radius": 17.9, ...}               one record
  [{"mean_radius": 17.9, ...}, ...]        a list of records
  {"records": [{...}, {...}]}              the same list, wrapped
Every record must hold exactly the model's input columns (unknown ones are refused). What a column
holds follows the checkpoint's input kind (`Preprocessor.kind`, shown by GET /metadata under "input"):
  table     one value per feature column; a numeric value may be null (imputed with the training mean)
  text      a string (not empty, not only whitespace, at most max_length tokens: served texts are
            never truncated)
  sequence  a list of 1..max_length numbers, or of vectors of `features` numbers each
  series    the window: exactly `window` numbers, the last observed point last
  image     trained on arrays: a flat list of channels*height*width numbers; trained on image files
            (paths or bytes): the file itself, base64-encoded (PNG, JPEG, ...), decoded to the
            trained shape; the server never reads a path a request names
The answer always holds lists, one entry per record: {"predictions": [...], "probabilities":
[{class: p, ...}, ...], "model_version": "..."} (probabilities for classification only; a series
forecast of horizon > 1 is a list of `horizon` values per record).
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import dataclasses
import hashlib
import hmac
import io
import json
import logging
import math
import re
import time
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Annotated, Any, AsyncIterator, Awaitable, Callable, Optional, Union

import numpy as np
import pandas as pd
import torch
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.openapi.utils import get_openapi
from fastapi.responses import JSONResponse
from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    PlainValidator,
    TypeAdapter,
    ValidationError,
    WithJsonSchema,
    create_model,
)
from pydantic_core import PydanticCustomError

from orchestrator.data.preprocess import Preprocessor
from orchestrator.errors import shown_value
from orchestrator.models.build import count_parameters, forward
from orchestrator.train.checkpoint import STATE_FILE, load_model

logger = logging.getLogger("orchestrator.serve")

DEFAULT_MAX_RECORDS = 1024
OPEN_PATHS = frozenset({"/healthz"})  # reachable without a token (liveness probes)
ROUTES = ("/predict", "/healthz", "/metadata", "/docs", "/docs/oauth2-redirect", "/redoc", "/openapi.json")
MAX_LISTED_ERRORS = 5
# Bodies nest 5 levels at most ({"records": [{"readings": [[...]]}]}); up to this depth a wrong shape is
# a 422 naming the field, beyond it the body is refused unparsed (json.loads recurses per level)
MAX_JSON_DEPTH = 32
# Image files in requests are measured from their headers before any pixel is decoded. Decoding
# cost about 75 ms per 4096 x 4096 PNG in issue 20's report (45 of them: 3.4 s), and a highly compressible PNG of that
# size fits in 16 KB, so without a bound per request one 1 MB body could ask for seconds of decoding
# (45 such images: 3.4 s) and delay every request batched behind it (docs/reliability.md).
MAX_IMAGE_PIXELS = 4096 * 4096  # one image, whatever the model's input size
MIN_IMAGE_PIXELS_CAP = 1024 * 1024  # the per-image cap is never below this...
IMAGE_PIXELS_PER_INPUT_PIXEL = 256  # ...and otherwise 256 x the model's input pixels (16 x its width and height)
MAX_REQUEST_PIXELS = 4096 * 4096  # all images of one request together
FLOAT32_MAX = float(np.finfo(np.float32).max)
JSON_TYPES = ("application/json",)  # and any application/*+json; no Content-Type at all is taken as JSON
# a JSON string, or an unterminated one up to the end: every match succeeds where it starts, so a
# scan is linear time (a failing match would be retried at every later quote: quadratic)
_JSON_STRING = re.compile(rb'"[^"\\]*(?:\\.[^"\\]*)*\\?(?:"|\Z)', re.S)
_OPEN, _CLOSE = np.frombuffer(b"[{", np.uint8), np.frombuffer(b"]}", np.uint8)


class ClientError(Exception):
    """A mistake in the request: answered with `status` and a reason, never a 500."""

    def __init__(self, status: int, detail: str, errors: Optional[list[dict]] = None, headers: Optional[dict] = None):
        super().__init__(detail)
        self.status = status
        self.detail = detail
        self.errors = errors
        self.headers = headers

    def body(self) -> dict:
        out: dict[str, Any] = {"detail": self.detail}
        if self.errors:
            out["errors"] = self.errors
        return out


# ------------------------------------------------------------------------------ request schema


def _category_type(cats: list[Any]) -> Any:
    kinds = {type(c) for c in cats}
    strict = []
    if bool in kinds:
        strict.append(bool)
    if int in kinds:
        strict.append(int)
    if float in kinds:
        strict.append(float)
    if str in kinds or not strict:
        strict.append(str)
    return strict[0] if len(strict) == 1 else Union[tuple(strict)]


def image_files(pre: Preprocessor) -> bool:
    """Whether the model was trained on image files (paths or encoded bytes): requests send the file, base64-encoded."""
    return pre.kind == "image" and pre.image_source != "array"


def _longest_token_bytes(state: Optional[dict]) -> int:
    """The most UTF-8 bytes one token of the tokenizer stands for (1 for the byte tokenizer)."""
    if not isinstance(state, dict) or state.get("kind") == "byte":
        return 1
    try:  # a byte-level BPE's vocabulary spells every byte as one character; added (special) tokens are plain text
        tok = json.loads(state["tokenizer_json"])
        return max([len(p) for p in tok["model"]["vocab"]] + [len(t["content"].encode("utf-8")) for t in tok.get("added_tokens", [])])
    except (KeyError, TypeError, ValueError):
        return 64


def text_char_limit(pre: Preprocessor) -> int:
    """Characters a text may have at most. A text of more characters would need more than
    max_length tokens anyway (no token spans more bytes than the vocabulary's longest), so the
    limit refuses nothing the model could take, and keeps the tokenizer's work per request bounded."""
    return _longest_token_bytes(pre.tokenizer) * max(1, int(pre.text_max_length))


def _not_blank(v: str) -> str:
    if not v.strip():
        raise PydanticCustomError("string_blank", "text is only whitespace: send the text to predict from")
    return v


def _number_check(bounds: list[tuple[float, float]]) -> Callable[[Any, int, int], Optional[str]]:
    """A check of one value (step s, feature f): a finite JSON number within the model's float32 range."""

    def problem(v: Any, s: int, f: int) -> Optional[str]:
        if isinstance(v, bool) or not isinstance(v, (int, float)):
            return f"step {s}: expected a number, got {type(v).__name__} {shown_value(v)}"
        try:
            fv = float(v)
        except OverflowError:  # an integer beyond float range
            return f"step {s}: {shown_value(v)} is out of range"
        if not math.isfinite(fv):
            return f"step {s}: {fv} is not a finite number"
        lo, hi = bounds[f]
        if not lo <= fv <= hi:
            return (
                f"step {s}: {fv:.6g} is out of range: the model takes values within [{lo:.6g}, {hi:.6g}] "
                "(where (x - training mean) / std fits in float32)"
            )
        return None

    return problem


def _bounds(means: list[float], stds: list[float]) -> list[tuple[float, float]]:
    return [(m - FLOAT32_MAX * s, m + FLOAT32_MAX * s) for m, s in zip(means, stds)]


def _sequence_type(pre: Preprocessor) -> Any:
    """A sequence: 1..max_length steps, each a number (one feature) or a vector of `features` numbers."""
    t, f = int(pre.sequence_max_length), int(pre.sequence_features)
    check = _number_check(_bounds(pre.sequence_means or [0.0] * f, pre.sequence_stds or [1.0] * f))
    shape = f"a list of 1 to {t} numbers" if f == 1 else f"a list of 1 to {t} steps, each a list of {f} numbers"

    def validate(v: Any) -> Any:
        if not isinstance(v, list):
            raise PydanticCustomError("sequence_type", f"expected {shape}, got {type(v).__name__} {shown_value(v)}")
        if not v:
            raise PydanticCustomError("sequence_empty", f"empty sequence: expected {shape}")
        if len(v) > t:
            raise PydanticCustomError(
                "sequence_too_long",
                f"{len(v)} steps, more than the model's max_length {t} "
                "(data.sequence.max_length, or the training split's longest sequence)",
            )
        vectors = isinstance(v[0], list)
        for s, step in enumerate(v):
            values = step if isinstance(step, list) else None
            if (values is not None) != vectors:
                raise PydanticCustomError("sequence_step", f"step {s} mixes numbers and vectors; use one or the other")
            if values is None and f > 1:
                raise PydanticCustomError(
                    "sequence_step", f"step {s}: expected a list of {f} numbers, got {type(step).__name__} {shown_value(step)}"
                )
            if values is not None and len(values) != f:
                raise PydanticCustomError("sequence_step", f"step {s} has {len(values)} values; every step holds {f} (as in training)")
            for j, x in enumerate(values if values is not None else [step]):
                problem = check(x, s, j)
                if problem:
                    raise PydanticCustomError("sequence_value", problem)
        return v

    step = {"type": "number"} if f == 1 else {"type": "array", "items": {"type": "number"}, "minItems": f, "maxItems": f}
    return Annotated[Any, PlainValidator(validate), WithJsonSchema({"type": "array", "items": step, "minItems": 1, "maxItems": t})]


def _series_type(pre: Preprocessor) -> Any:
    """A window: exactly `series_window` numbers, the last observed point last."""
    w = int(pre.series_window)
    check = _number_check(_bounds([pre.series_mean], [pre.series_std]))

    def validate(v: Any) -> Any:
        if not isinstance(v, list):
            raise PydanticCustomError("window_type", f"expected a window of {w} numbers, got {type(v).__name__} {shown_value(v)}")
        if len(v) != w:
            raise PydanticCustomError("window_length", f"a window holds exactly {w} values (data.series.window), got {len(v)}")
        for s, x in enumerate(v):
            problem = check(x, s, 0)
            if problem:
                raise PydanticCustomError("window_value", problem)
        return v

    return Annotated[
        Any, PlainValidator(validate), WithJsonSchema({"type": "array", "items": {"type": "number"}, "minItems": w, "maxItems": w})
    ]


def input_description(pre: Preprocessor) -> dict[str, Any]:
    """What one record holds, for GET /metadata: the input kind and its limits."""
    kind = pre.kind
    column = pre.feature_columns[0] if kind != "table" else None
    if kind == "text":
        tok = (pre.tokenizer or {}).get("kind")
        return {
            "kind": kind,
            "column": column,
            "type": "string",
            "tokenizer": tok,
            "max_length": pre.text_max_length,
            "max_characters": text_char_limit(pre),
            "lowercase": pre.text_lowercase,
            "note": "max_length counts tokens, the leading CLS included; longer texts are refused, not truncated",
        }
    if kind == "sequence":
        return {
            "kind": kind,
            "column": column,
            "type": "list of numbers" if pre.sequence_features == 1 else "list of vectors",
            "max_length": pre.sequence_max_length,
            "features": pre.sequence_features,
        }
    if kind == "series":
        return {
            "kind": kind,
            "column": column,
            "type": "list of numbers",
            "window": pre.series_window,
            "horizon": pre.series_horizon,
            "note": f"the {pre.series_window} points ending at the last observed one; the answer forecasts the next {pre.series_horizon}",
        }
    if kind == "image":
        out = {"kind": kind, "column": column, "shape": pre.image_shape, "source": pre.image_source}
        if image_files(pre):
            out.update(type="string", encoding="base64 of an image file (PNG, JPEG, ...), decoded and resized to shape")
        else:
            out.update(type="list of numbers", encoding=f"flat list of {int(math.prod(pre.image_shape))} numbers (channels, height, width)")
        return out
    return {"kind": kind, "numeric": list(pre.numeric), "categorical": list(pre.categorical)}


def record_model(pre: Preprocessor) -> type[BaseModel]:
    """The pydantic model of one input record, derived from the checkpoint's fitted preprocessing.

    Field names are the training columns (as aliases, so any column name works). Table input:
    numeric features are numbers or null (imputed), categorical ones take their categories' type
    (an unseen category is allowed and encodes as all zeros, as in training). Text: a string of
    1..text_char_limit characters, not only whitespace. Sequence: 1..max_length numbers or vectors
    of `sequence_features` numbers. Series: exactly `series_window` numbers. Image: a flat list of
    exactly prod(shape) numbers, or (trained on image files) a base64 string of the file. Types are
    strict: "1.5" is not a number, 5 is not a text. Unknown fields are refused.
    """
    fields: dict[str, Any] = {}
    kind = pre.kind
    if kind == "text":
        limit = text_char_limit(pre)
        fields["f0"] = (
            Annotated[str, Field(strict=True, min_length=1, max_length=limit), AfterValidator(_not_blank)],
            Field(
                alias=pre.text_column,
                description=f"text: a string of at most {pre.text_max_length} tokens ({pre.text_max_length - 1} "
                f"after the leading CLS) and at most {limit} characters; longer texts are refused, not truncated",
            ),
        )
    elif kind == "sequence":
        f = pre.sequence_features
        fields["f0"] = (
            _sequence_type(pre),
            Field(
                alias=pre.sequence_column,
                description=f"sequence: 1 to {pre.sequence_max_length} steps, each "
                + ("a number (or a list of 1 number)" if f == 1 else f"a list of {f} numbers"),
            ),
        )
    elif kind == "series":
        fields["f0"] = (
            _series_type(pre),
            Field(
                alias=pre.series_column,
                description=f"window: the last {pre.series_window} observed values, oldest first; "
                f"the answer is the forecast of the next {pre.series_horizon}",
            ),
        )
    elif kind == "image" and image_files(pre):
        fields["f0"] = (
            Annotated[str, Field(strict=True, min_length=1)],
            Field(
                alias=pre.image_column,
                description=f"image file (PNG, JPEG, ...) as base64 text, decoded and resized to "
                f"{pre.image_shape} (channels, height, width)",
                json_schema_extra={"contentEncoding": "base64", "contentMediaType": "image/*"},
            ),
        )
    elif kind == "image":
        n = int(math.prod(pre.image_shape))
        item = Annotated[float, Field(strict=True, allow_inf_nan=False)]
        fields["f0"] = (
            list[item],
            Field(
                alias=pre.image_column,
                min_length=n,
                max_length=n,
                description=f"image {pre.image_shape} (channels, height, width) as a flat list of {n} numbers",
            ),
        )
    else:
        for i, col in enumerate(pre.numeric):
            fields[f"f{i}"] = (
                Optional[Annotated[float, Field(strict=True, allow_inf_nan=False)]],
                Field(alias=col, description=f"number (training mean {pre.means[i]:.6g}); null is imputed with it"),
            )
        for j, (col, cats) in enumerate(pre.categorical.items()):
            t = _category_type(cats)
            shown = ", ".join(map(repr, cats[:20])) + (", ..." if len(cats) > 20 else "")
            fields[f"c{j}"] = (
                Optional[Annotated[t, Field(strict=True)]],
                Field(
                    alias=col,
                    description=f"category, one of {shown} (others and null encode as unknown)",
                    json_schema_extra={"examples": cats[:20]},
                ),
            )
    return create_model(  # type: ignore[call-overload]
        "Record", __config__=ConfigDict(extra="forbid", populate_by_name=False, title="Record"), **fields
    )


def example_image_file(pre: Preprocessor) -> bytes:
    """A PNG of the trained shape, every pixel at the training mean."""
    from PIL import Image

    from orchestrator.data.preprocess import IMAGE_MODES

    c, h, w = pre.image_shape
    level = int(min(255, max(0, round(float(pre.image_mean)))))
    buf = io.BytesIO()
    Image.new(IMAGE_MODES.get(c, "RGB"), (w, h), level if c == 1 else (level,) * len(IMAGE_MODES.get(c, "RGB"))).save(buf, format="PNG")
    return buf.getvalue()


def _example_text(pre: Preprocessor) -> str:
    """A short text that fits max_length tokens."""
    text = "an example text to classify"
    while len(text) > 1:
        try:
            pre.transform_inputs(pd.DataFrame({pre.text_column: [text]}), truncate=False)
            return text
        except ValueError:
            text = text[: len(text) // 2].strip() or text[0]
    return text


def example_record(pre: Preprocessor) -> dict[str, Any]:
    """A valid record built from the preprocessing alone (training means, first category)."""
    kind = pre.kind
    if kind == "text":
        return {pre.text_column: _example_text(pre)}
    if kind == "sequence":
        steps = min(3, max(1, int(pre.sequence_max_length)))
        means = [round(float(m), 4) for m in (pre.sequence_means or [0.0] * pre.sequence_features)]
        return {pre.sequence_column: [means[0] if len(means) == 1 else list(means) for _ in range(steps)]}
    if kind == "series":
        return {pre.series_column: [round(float(pre.series_mean), 4)] * int(pre.series_window)}
    if kind == "image" and image_files(pre):
        return {pre.image_column: base64.b64encode(example_image_file(pre)).decode("ascii")}
    if pre.image_column:
        return {pre.image_column: [round(float(pre.image_mean), 4)] * int(math.prod(pre.image_shape))}
    rec: dict[str, Any] = {col: round(float(m), 4) for col, m in zip(pre.numeric, pre.means)}
    rec.update({col: (cats[0] if cats else None) for col, cats in pre.categorical.items()})
    return rec


def field_path(loc: tuple) -> str:
    out = ""
    for part in loc:
        out += f"[{part}]" if isinstance(part, int) else (("." if out else "") + str(part))
    return out or "(body)"


def _describe(e: dict) -> str:
    kind = e["type"]
    if kind == "extra_forbidden":
        return "unknown field (not one of the model's inputs; see GET /metadata)"
    if kind == "missing":
        return "required field is missing"
    msg = e["msg"]
    if "input" in e and kind not in ("model_type",) and ", got " not in msg:  # our own checks say what they got
        msg += f", got {type(e['input']).__name__} {shown_value(e['input'])}"
    return msg


def checkpoint_version(directory: str | Path) -> str:
    """Default model version: a short digest of the weights, so the same checkpoint keeps its version."""
    h = hashlib.sha256()
    with open(Path(directory) / STATE_FILE, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()[:12]


def image_pixel_cap(shape: list[int]) -> int:
    """Most pixels one image file in a request may hold, for a model taking `shape` (c, h, w)."""
    return min(MAX_IMAGE_PIXELS, max(MIN_IMAGE_PIXELS_CAP, IMAGE_PIXELS_PER_INPUT_PIXEL * shape[1] * shape[2]))


def token_digest(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def json_depth(body: bytes) -> int:
    """How deeply the brackets of a JSON text nest (outside strings), without parsing it.

    json.loads recurses once per level and raises RecursionError past ~1000 levels; the request
    schema is flat, so a body can be refused on its depth before it is parsed.
    """
    a = np.frombuffer(_JSON_STRING.sub(b"", body), np.uint8)
    step = np.isin(a, _OPEN).astype(np.int32) - np.isin(a, _CLOSE)
    return int(step.cumsum().max(initial=0))


def is_json_type(content_type: Optional[str]) -> bool:
    media = (content_type or "").partition(";")[0].strip().lower()
    return not media or media in JSON_TYPES or (media.startswith("application/") and media.endswith("+json"))


class Records(list):
    """Validated records that remember how the body held them, so that errors can name record i."""

    def __init__(self, items: list, prefix: tuple = (), single: bool = False):
        super().__init__(items)
        self.prefix, self.single = prefix, single

    def path(self, i: int, *more) -> str:
        return field_path(tuple(more) if self.single else (*self.prefix, i, *more))


# ----------------------------------------------------------------------------------- the model


class ModelRunner:
    """A checkpoint ready to answer requests: parse and validate bodies, run one forward per batch."""

    def __init__(
        self,
        checkpoint_dir: str | Path,
        *,
        version: Optional[str] = None,
        max_records: int = DEFAULT_MAX_RECORDS,
        max_body_bytes: int = 1 << 20,
        device: str = "cpu",
    ):
        self.loaded = load_model(checkpoint_dir)
        self.pre = self.loaded.preprocessor
        self.meta = self.loaded.meta
        self.model_spec = self.meta["model"]
        self.device = torch.device(device)
        self.model = self.loaded.model.to(self.device)
        self.version = version or checkpoint_version(checkpoint_dir)
        self.name = str(self.meta.get("job") or Path(checkpoint_dir).resolve().parent.name or "model")
        self.max_records = max_records
        self.max_body_bytes = max_body_bytes
        self.columns = self.pre.feature_columns
        self.kind = self.pre.kind
        # what predict() transforms with: an image model trained on file paths takes the files' bytes
        # here, so a request can never make the server open a path
        self._inputs_pre = dataclasses.replace(self.pre, image_source="bytes", image_root=None) if image_files(self.pre) else self.pre
        self.Record = record_model(self.pre)
        self._records = TypeAdapter(list[self.Record])
        self.classification = self.pre.task == "classification"
        self._class_keys = [str(c) for c in (self.pre.classes or [])]
        self._bounds = self._input_bounds()
        self.test_metrics = self._read_test_metrics(Path(checkpoint_dir))

    def _input_bounds(self) -> dict[str, tuple[float, float]]:
        """Per numeric input, the values whose standardised form (x - mean) / std is finite in float32
        (the model's input type): anything beyond would reach the network as inf and come out NaN."""
        pre = self.pre
        if pre.kind in ("text", "sequence", "series") or image_files(pre):
            return {}  # sequences and windows are checked by their schema; decoded images and token ids are bounded
        if pre.image_column:  # the pixels are cast to float32 before they are standardised
            m, s = float(pre.image_mean), float(pre.image_std)
            return {pre.image_column: (max(-FLOAT32_MAX, m - FLOAT32_MAX * s), min(FLOAT32_MAX, m + FLOAT32_MAX * s))}
        return {col: (m - FLOAT32_MAX * s, m + FLOAT32_MAX * s) for col, m, s in zip(pre.numeric, pre.means, pre.stds)}

    def _check_values(self, records: Records) -> None:
        """422 for numbers out of the model's range and for text that is not valid Unicode."""
        errors = []
        for i, rec in enumerate(records):
            for col, v in rec.items():
                if isinstance(v, str):
                    try:
                        v.encode("utf-8")
                    except UnicodeEncodeError:  # a lone surrogate escape such as "\ud800"
                        errors.append(
                            {
                                "field": records.path(i, col),
                                "type": "string_unicode",
                                "message": "not valid Unicode text (a lone surrogate escape)",
                            }
                        )
                    continue
                lo, hi = self._bounds.get(col, (None, None))
                if lo is None or v is None:
                    continue
                low, high = (min(v), max(v)) if isinstance(v, list) else (v, v)
                if low < lo or high > hi:
                    shown = low if low < lo else high
                    errors.append(
                        {
                            "field": records.path(i, col),
                            "type": "float_range",
                            "message": f"{shown:.6g} is out of range: the model takes values within [{lo:.6g}, {hi:.6g}] "
                            "(where (x - training mean) / std fits in float32)",
                        }
                    )
        if errors:
            raise _field_errors(errors)

    @staticmethod
    def _read_test_metrics(d: Path) -> dict:
        p = d.parent / "test_metrics.json"  # a run directory's best_checkpoint/
        try:
            return json.loads(p.read_text()) if d.name == "best_checkpoint" and p.is_file() else {}
        except (OSError, ValueError):
            return {}

    # ---- requests
    def parse(self, body: bytes) -> list[dict]:
        """Body -> validated records (plain dicts keyed by column), or ClientError naming the field."""
        if not body.strip():
            raise ClientError(400, 'empty request body: send one record, a list of records or {"records": [...]} as JSON')
        depth = json_depth(body)
        if depth > MAX_JSON_DEPTH:
            raise ClientError(
                400,
                f"JSON nested {depth} levels deep (the limit is {MAX_JSON_DEPTH}); send one record, "
                'a list of records or {"records": [...]}',
            )
        try:
            data = json.loads(body)
        except UnicodeDecodeError:
            raise ClientError(400, "request body is not UTF-8 text") from None
        except json.JSONDecodeError as e:
            raise ClientError(400, f"malformed JSON: {e.msg} (line {e.lineno}, column {e.colno})") from None
        except (ValueError, RecursionError) as e:  # e.g. an integer of more than 4300 digits
            raise ClientError(400, f"malformed JSON: {e}") from None
        prefix: tuple = ()
        single = False
        if isinstance(data, dict) and "records" in data and "records" not in self.columns:
            others = sorted(set(data) - {"records"})
            if others:
                raise ClientError(
                    422,
                    f"{others[0]}: unknown field next to records",
                    [{"field": k, "message": "unknown field next to records", "type": "extra_forbidden"} for k in others],
                )
            records, prefix = data["records"], ("records",)
            if not isinstance(records, list):
                raise ClientError(
                    422,
                    f"records: must be a list of records, got {type(records).__name__}",
                    [{"field": "records", "message": "must be a list of records", "type": "list_type"}],
                )
        elif isinstance(data, dict):
            records, single = [data], True
        elif isinstance(data, list):
            records = data
        else:
            raise ClientError(
                422, f'body must be a JSON object (one record), a list of records or {{"records": [...]}}, got {type(data).__name__}'
            )
        if not records:
            raise ClientError(422, f"{field_path(prefix)}: no records to predict")
        if len(records) > self.max_records:
            raise ClientError(413, f"{len(records)} records in one request; the limit is {self.max_records}: split the request")
        return self.check(records, prefix, single)

    def check(self, records: list, prefix: tuple = (), single: bool = False) -> Records:
        """Records (plain dicts keyed by column) -> validated, with image files decoded from base64,
        or ClientError naming every field at fault. `prefix` and `single` say how to name a field:
        `records[2].age` in a list under "records", `age` alone in a single record."""
        try:
            self._records.validate_python(records)
        except ValidationError as err:
            errors = []
            for e in err.errors(include_url=False):
                loc = tuple(e["loc"][1:]) if single else prefix + tuple(e["loc"])
                errors.append({"field": field_path(loc), "message": _describe(e), "type": e["type"]})
            raise _field_errors(errors) from None
        out = Records(records, prefix, single)
        self._check_values(out)
        if image_files(self.pre):
            self._decode_image_fields(out)
        return out

    def check_each(self, records: list[dict]) -> tuple[dict[int, dict], dict[int, dict]]:
        """Batch prediction's check: ({position: checked record}, {position: {"error", "column"}}),
        so that one bad record fails alone. The whole list is checked at once; only when that
        fails is each record checked by itself."""
        try:
            return dict(enumerate(self.check(records))), {}
        except ClientError:
            pass
        good, bad = {}, {}
        for i, rec in enumerate(records):
            try:
                good[i] = self.check([rec], single=True)[0]
            except ClientError as e:
                first = (e.errors or [{}])[0]
                bad[i] = {"error": first.get("message", e.detail), "column": first.get("field")}
        return good, bad

    def _decode_image_fields(self, records: Records) -> None:
        """base64 text -> the image file's bytes, in place; 422 for text that is not base64 or bytes that
        are not an image (only the header is read here; predict() decodes the pixels)."""
        from PIL import Image

        col = self.pre.image_column
        cap = image_pixel_cap(self.pre.image_shape)
        errors, total = [], 0
        for i, rec in enumerate(records):
            text = rec[col]
            if text.startswith("data:") and "," in text[:200]:  # a data URL: data:image/png;base64,....
                text = text.split(",", 1)[1]
            try:
                data = base64.b64decode("".join(text.split()), validate=True)
            except (binascii.Error, ValueError):
                errors.append(
                    {
                        "field": records.path(i, col),
                        "type": "base64",
                        "message": "not valid base64: send the image file's bytes base64-encoded (standard alphabet)",
                    }
                )
                continue
            try:
                with Image.open(io.BytesIO(data)) as img:
                    width, height = img.size
            except Image.DecompressionBombError:  # the header announces more pixels than PIL opens at all
                errors.append(
                    {
                        "field": records.path(i, col),
                        "type": "image_size",
                        "message": f"image of more than {2 * Image.MAX_IMAGE_PIXELS} pixels; this server decodes at most "
                        f"{image_pixel_cap(self.pre.image_shape)} pixels per image: scale the image down before sending it",
                    }
                )
                continue
            except Exception:  # PIL's UnidentifiedImageError, truncated files, ...
                errors.append(
                    {
                        "field": records.path(i, col),
                        "type": "image_format",
                        "message": f"not an image file PIL can read ({len(data)} bytes after base64 decoding)",
                    }
                )
                continue
            if width * height > cap:
                errors.append(
                    {
                        "field": records.path(i, col),
                        "type": "image_size",
                        "message": f"image of {width} x {height} pixels ({width * height}); this server decodes at most {cap} "
                        f"pixels per image (the model takes {self.pre.image_shape[2]} x {self.pre.image_shape[1]}): "
                        "scale the image down before sending it",
                    }
                )
                continue
            total += width * height
            records[i] = {**rec, col: data}
        if errors:
            raise _field_errors(errors)
        if total > MAX_REQUEST_PIXELS:
            raise ClientError(
                413,
                f"the {len(records)} images of this request hold {total} pixels in all; the server decodes at most "
                f"{MAX_REQUEST_PIXELS} pixels per request: send fewer or smaller images per request",
            )

    # ---- inference
    def _frame(self, records: list[dict]) -> pd.DataFrame:
        if self.kind == "table":
            return pd.DataFrame.from_records(records, columns=self.columns)
        col = self.columns[0]  # a list-valued cell must stay one object, whatever the lists' lengths
        return pd.DataFrame({col: pd.Series([r.get(col) for r in records], dtype=object)})

    def _record_error(self, e: ValueError) -> dict:
        """A preprocessor's ValueError about one record alone -> an output entry naming its field."""
        col = self.columns[0] if len(self.columns) == 1 else None
        message = str(e)
        for prefix in [f"column {col!r}: row 0: ", f"column {col!r}: "] if col else []:
            if message.startswith(prefix):
                message = message[len(prefix) :]
                break
        if self.kind == "text" and "more than max_length" in message:
            message += " (data.text.max_length; served texts are not truncated: shorten the text)"
        return {"error": message, "type": "value_error", "column": col}

    def _transform(self, records: list[dict]) -> tuple[Optional[dict[str, np.ndarray]], dict[int, dict]]:
        """The model's inputs for the records that transform, and an error entry for each that does not.

        The whole batch goes through `transform_inputs(truncate=False)` at once; only when that
        fails is each record transformed alone, so one bad record (an over-long text, a damaged
        image) fails its own request, never the other requests batched with it."""
        pre = self._inputs_pre
        try:
            return pre.transform_inputs(self._frame(records), truncate=False), {}
        except ValueError:
            pass
        parts, bad = [], {}
        for i, rec in enumerate(records):
            try:
                parts.append(pre.transform_inputs(self._frame([rec]), truncate=False))
            except ValueError as e:
                bad[i] = self._record_error(e)
        if not parts:
            return None, bad
        # every kind's inputs have a fixed width per row (max_length, window, image shape), so rows stack
        return {k: np.concatenate([p[k] for p in parts]) for k in parts[0]}, bad

    def predict(self, records: list[dict]) -> list[dict]:
        """One forward pass over validated records -> one {"prediction", "probabilities"?} per record
        (or {"error", "type", "column"} for a record the preprocessing refuses: `response` makes it a 422)."""
        inputs, bad = self._transform(records)
        computed = iter(self._forward(inputs) if inputs is not None else ())
        return [bad[i] if i in bad else next(computed) for i in range(len(records))]

    def _forward(self, inputs: dict[str, np.ndarray]) -> list[dict]:
        tensors = {k: torch.from_numpy(v).to(self.device) for k, v in inputs.items()}
        with torch.inference_mode():
            out = forward(self.model, tensors, self.model_spec).float()
            probs = torch.softmax(out, dim=1).cpu().numpy() if self.classification else None
            out = out.cpu().numpy()
        labels = self.pre.decode(out)
        n = len(out)
        # in-range inputs can still overflow inside the network: such a record gets a 422, never a NaN
        finite = np.isfinite(out.reshape(n, -1)).all(axis=1)
        if probs is None:
            finite &= np.isfinite(np.asarray(labels, dtype=np.float64).reshape(n, -1)).all(axis=1)
            outputs = [{"prediction": [float(x) for x in v] if isinstance(v, list) else float(v)} for v in labels]
        else:
            finite &= np.isfinite(probs).all(axis=1)
            keys = self._class_keys
            outputs = [{"prediction": lab, "probabilities": dict(zip(keys, map(float, p)))} for lab, p in zip(labels, probs)]
        return [o if ok else {"error": NOT_FINITE, "type": "output_not_finite"} for o, ok in zip(outputs, finite)]

    def response(self, outputs: list[dict], records: Optional[Records] = None) -> dict:
        bad = [i for i, o in enumerate(outputs) if "error" in o]
        if bad:
            where = records.path if records is not None else (lambda i, *more: field_path((i, *more)))
            errors = []
            for i in bad:
                o = outputs[i]
                if o.get("type", "output_not_finite") == "output_not_finite":
                    errors.append(
                        {
                            "field": where(i),
                            "message": f"{o['error']} (input values too extreme for the model)",
                            "type": "output_not_finite",
                        }
                    )
                else:
                    errors.append(
                        {
                            "field": where(i, *([o["column"]] if o.get("column") else [])),
                            "message": o["error"],
                            "type": o.get("type", "value_error"),
                        }
                    )
            raise _field_errors(errors)
        body: dict[str, Any] = {"predictions": [o["prediction"] for o in outputs]}
        if self.classification:
            body["probabilities"] = [o["probabilities"] for o in outputs]
        body["model_version"] = self.version
        return body

    def metadata(self, extra: Optional[dict] = None) -> dict:
        return {
            "name": self.name,
            "version": self.version,
            "task": self.pre.task,
            "label": self.pre.label,
            "classes": self.pre.classes,
            "model": {
                **self.model_spec,
                "input_shape": self.meta.get("input_shape"),
                "num_outputs": self.meta.get("num_outputs"),
                "parameters": count_parameters(self.model),
            },
            "metrics": _finite({"checkpoint": self.loaded.metrics, "test": self.test_metrics}),  # a diverged run's loss is NaN
            "input": input_description(self.pre),
            "input_schema": self.Record.model_json_schema(),
            "example": example_record(self.pre),
            "limits": {
                "max_records": self.max_records,
                "max_body_bytes": self.max_body_bytes,
                **(
                    {"max_image_pixels": image_pixel_cap(self.pre.image_shape), "max_request_pixels": MAX_REQUEST_PIXELS}
                    if image_files(self.pre)
                    else {}
                ),
            },
            "checkpoint": self.loaded.path,
            **(extra or {}),
        }


NOT_FINITE = "model output not finite for this input"

# one sentence per input kind for the OpenAPI description (/docs)
INPUT_NOTES: dict[str, Callable[[Preprocessor], str]] = {
    "table": lambda p: f"Input: table rows, one value per feature column ({len(p.feature_columns)} columns).",
    "text": lambda p: (
        f"Input: text. Each record's `{p.text_column}` is a string of at most {p.text_max_length} tokens "
        f"({(p.tokenizer or {}).get('kind')} tokenizer, the leading CLS included); longer texts are refused, not truncated."
    ),
    "sequence": lambda p: (
        f"Input: a numeric sequence. Each record's `{p.sequence_column}` is a list of 1 to {p.sequence_max_length} "
        + ("numbers." if p.sequence_features == 1 else f"steps, each a list of {p.sequence_features} numbers.")
    ),
    "series": lambda p: (
        f"Input: a time-series window. Each record's `{p.series_column}` holds the last {p.series_window} observed "
        f"values, oldest first; the prediction forecasts the next {p.series_horizon}."
    ),
    "image": lambda p: (
        f"Input: an image. Each record's `{p.image_column}` is "
        + (
            f"an image file (PNG, JPEG, ...) as base64 text, decoded and resized to {p.image_shape}."
            if image_files(p)
            else f"a flat list of {int(math.prod(p.image_shape))} numbers, shape {p.image_shape}."
        )
    ),
}


def _finite(obj: Any) -> Any:
    """NaN and infinities -> None, which JSON can carry."""
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, dict):
        return {k: _finite(v) for k, v in obj.items()}
    if isinstance(obj, list):
        return [_finite(v) for v in obj]
    return obj


def _field_errors(errors: list[dict]) -> ClientError:
    shown = "; ".join(f"{x['field']}: {x['message']}" for x in errors[:MAX_LISTED_ERRORS])
    more = len(errors) - MAX_LISTED_ERRORS
    return ClientError(422, shown + (f"; and {more} more" if more > 0 else ""), errors)


# ------------------------------------------------------------------------------ ASGI plumbing


class SafeJSONResponse(JSONResponse):
    """JSON with non-ASCII escaped: text echoed from a request (a lone surrogate) always encodes."""

    def render(self, content: Any) -> bytes:
        return json.dumps(content, allow_nan=False, separators=(",", ":")).encode()


def relative_path(scope: dict) -> str:
    """Path below the app's mount point (Serve mounts the app at its route_prefix)."""
    path, root = scope.get("path", "/"), scope.get("root_path", "") or ""
    if root and path.startswith(root):
        path = path[len(root) :]
    return path or "/"


async def _send_json(send, status: int, body: dict, headers: Optional[dict] = None) -> None:
    raw = json.dumps(body).encode()
    hdrs = [(b"content-type", b"application/json"), (b"content-length", str(len(raw)).encode())]
    hdrs += [(k.lower().encode(), v.encode()) for k, v in (headers or {}).items()]
    await send({"type": "http.response.start", "status": status, "headers": hdrs})
    await send({"type": "http.response.body", "body": raw})


class Guard:
    """Outermost ASGI layer: metrics for every request, bearer-token check, Content-Length limit."""

    def __init__(
        self, app, *, token_sha256: Optional[str], max_body_bytes: int, observe: Optional[Callable[[str, int, float], None]] = None
    ):
        self.app = app
        self.token_sha256 = token_sha256
        self.max_body_bytes = max_body_bytes
        self.observe = observe

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        t0 = time.perf_counter()
        status = 500
        path = relative_path(scope)

        async def send_status(message):
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            problem = self._check(scope, path)
            if problem is not None:
                await _send_json(send_status, problem.status, problem.body(), problem.headers)
            else:
                await self.app(scope, receive, send_status)
        finally:
            if self.observe is not None:
                self.observe(path if path in ROUTES else "other", status, time.perf_counter() - t0)

    def _check(self, scope, path: str) -> Optional[ClientError]:
        headers = dict(scope.get("headers") or [])
        if self.token_sha256 and path not in OPEN_PATHS:
            auth = headers.get(b"authorization", b"").decode("latin-1")
            scheme, _, given = auth.partition(" ")
            challenge = {"WWW-Authenticate": "Bearer"}
            if not auth:
                return ClientError(401, "missing bearer token: send 'Authorization: Bearer <token>'", headers=challenge)
            if scheme.lower() != "bearer" or not given.strip():
                return ClientError(401, "malformed Authorization header: expected 'Bearer <token>'", headers=challenge)
            if not hmac.compare_digest(token_digest(given.strip()), self.token_sha256):
                return ClientError(403, "invalid bearer token")
        length = headers.get(b"content-length")
        if length is not None:
            try:
                n = int(length)
            except ValueError:
                return ClientError(400, "invalid Content-Length header")
            if n > self.max_body_bytes:
                return ClientError(413, f"request body is {n} bytes; the limit is {self.max_body_bytes} (serve.max_body_bytes)")
        return None


class Intake:
    """A request's way in: its body must arrive within `body_timeout_s` (else 408); only then does it
    take one of `max_working` slots (None: no bound here), waiting for one behind at most
    `max_waiting` others (-1: unbounded; more: 503). So a client that sends its body slowly, or
    never, holds no working slot, and /healthz (which takes none) answers while such clients are
    connected. Counts are per replica and read by /metadata."""

    def __init__(self, body_timeout_s: float = 10.0, max_working: Optional[int] = None, max_waiting: int = -1):
        self.body_timeout_s = body_timeout_s
        self.max_working = max_working
        self.max_waiting = max_waiting
        self.receiving = self.working = self.waiting = 0
        self._slots: Optional[asyncio.Semaphore] = asyncio.Semaphore(max_working) if max_working else None

    def counts(self) -> dict[str, int]:
        return {"receiving": self.receiving, "working": self.working, "waiting": self.waiting}

    async def read_body(self, request, limit: int) -> bytes:
        """The body, refused with 413 as soon as it grows past `limit` (also without a Content-Length)
        and with 408 when it has not all arrived within body_timeout_s."""
        self.receiving += 1
        try:
            return await asyncio.wait_for(read_body(request, limit), self.body_timeout_s)
        except asyncio.TimeoutError:
            raise ClientError(
                408, f"request body not received within {self.body_timeout_s:g} s (serve.body_timeout_s)", headers={"Connection": "close"}
            ) from None
        finally:
            self.receiving -= 1

    @asynccontextmanager
    async def slot(self) -> AsyncIterator[None]:
        """One working slot for the request's parsing and inference; 503 when too many wait for one."""
        if self._slots is None:
            self.working += 1
            try:
                yield
            finally:
                self.working -= 1
            return
        if self._slots.locked() and 0 <= self.max_waiting <= self.waiting:
            raise ClientError(
                503,
                f"overloaded: {self.max_working} requests in progress and {self.waiting} waiting; retry later",
                headers={"Retry-After": "1"},
            )
        self.waiting += 1
        try:
            await self._slots.acquire()
        finally:
            self.waiting -= 1
        self.working += 1
        try:
            yield
        finally:
            self.working -= 1
            self._slots.release()


async def read_body(request, limit: int) -> bytes:
    """The body, refused with 413 as soon as it grows past `limit` (also without a Content-Length)."""
    chunks, total = [], 0
    async for chunk in request.stream():
        total += len(chunk)
        if total > limit:
            raise ClientError(413, f"request body is larger than {limit} bytes (serve.max_body_bytes)")
        chunks.append(chunk)
    return b"".join(chunks)


Infer = Callable[[list[dict]], Awaitable[list[dict]]]


def make_api(
    runner: ModelRunner,
    infer: Infer,
    *,
    token_sha256: Optional[str] = None,
    observe: Optional[Callable[[str, int, float], None]] = None,
    info: Optional[Callable[[], dict]] = None,
    intake: Optional[Intake] = None,
):
    """FastAPI app: POST /predict, GET /healthz, GET /metadata, /docs; `infer` runs validated records.
    `intake` bounds the wait for a request's body and the requests worked on at once (default: a
    10 s body timeout, no bound on work)."""
    intake = intake or Intake()
    auth_note = " Every endpoint but /healthz needs `Authorization: Bearer <token>`." if token_sha256 else ""
    api = FastAPI(
        title=f"{runner.name} model server",
        version=runner.version,
        description=f"Predictions of the `{runner.name}` model ({runner.pre.task}). {INPUT_NOTES[runner.kind](runner.pre)}{auth_note}",
    )

    @api.exception_handler(ClientError)
    async def _client_error(request: Request, exc: ClientError):
        return SafeJSONResponse(exc.body(), status_code=exc.status, headers=exc.headers)

    @api.exception_handler(RequestValidationError)
    async def _validation_error(request: Request, exc: RequestValidationError):
        errors = [{"field": field_path(tuple(e["loc"])), "message": e["msg"], "type": e["type"]} for e in exc.errors()]
        return SafeJSONResponse({"detail": "; ".join(f"{e['field']}: {e['message']}" for e in errors), "errors": errors}, status_code=422)

    @api.exception_handler(Exception)
    async def _server_error(request: Request, exc: Exception):
        logger.exception("prediction failed")
        return JSONResponse({"detail": f"internal error: {type(exc).__name__}"}, status_code=500)

    record_ref = {"$ref": "#/components/schemas/Record"}
    body_schema = {
        "oneOf": [
            record_ref,
            {"type": "array", "items": record_ref, "minItems": 1, "maxItems": runner.max_records},
            {
                "type": "object",
                "additionalProperties": False,
                "required": ["records"],
                "properties": {"records": {"type": "array", "items": record_ref, "minItems": 1, "maxItems": runner.max_records}},
            },
        ]
    }
    example = example_record(runner.pre)
    horizon = runner.pre.num_outputs if runner.kind == "series" else 1
    shown = runner.pre.classes[0] if runner.classification else ([0.0] * horizon if horizon > 1 else 0.0)
    prediction_doc = {
        "description": "one prediction per record",
        "content": {
            "application/json": {
                "example": runner.response(
                    [{"prediction": shown, "probabilities": {k: 1.0 / max(1, len(runner._class_keys)) for k in runner._class_keys}}]
                )
            }
        },
    }
    error_doc = {
        "content": {
            "application/json": {
                "example": {"detail": "records[0].x: ...", "errors": [{"field": "records[0].x", "message": "...", "type": "..."}]}
            }
        }
    }

    @api.post(
        "/predict",
        summary="Predict one record or a list of records",
        openapi_extra={"requestBody": {"required": True, "content": {"application/json": {"schema": body_schema, "example": example}}}},
        responses={
            200: prediction_doc,
            400: {"description": "malformed JSON", **error_doc},
            408: {"description": "the body did not arrive within serve.body_timeout_s", **error_doc},
            413: {"description": "body or record count over the limit", **error_doc},
            415: {"description": "Content-Type is not JSON", **error_doc},
            422: {"description": "a record does not match the input schema; `errors` names each field", **error_doc},
            503: {"description": "overloaded (all working slots busy and the queue full): retry later"},
        },
    )
    async def predict(request: Request):
        ctype = request.headers.get("content-type")
        if not is_json_type(ctype):
            raise ClientError(415, f"Content-Type {ctype!r} is not JSON: send 'Content-Type: application/json'")
        body = await intake.read_body(request, runner.max_body_bytes)
        async with intake.slot():
            records = runner.parse(body)
            return SafeJSONResponse(runner.response(await infer(records), records))

    @api.get("/healthz", summary="Liveness (no token needed)")
    async def healthz():
        return {"status": "ok", "model_version": runner.version}

    @api.get("/metadata", summary="Model, version, metrics and input schema")
    async def metadata():
        return runner.metadata(info() if info else None)

    def openapi():
        if api.openapi_schema is None:
            schema = get_openapi(title=api.title, version=api.version, description=api.description, routes=api.routes)
            schema.setdefault("components", {}).setdefault("schemas", {})["Record"] = runner.Record.model_json_schema()
            if token_sha256:
                schema["components"]["securitySchemes"] = {"bearer": {"type": "http", "scheme": "bearer"}}
                schema["security"] = [{"bearer": []}]
            api.openapi_schema = schema
        return api.openapi_schema

    api.openapi = openapi  # type: ignore[method-assign]
    api.add_middleware(Guard, token_sha256=token_sha256, max_body_bytes=runner.max_body_bytes, observe=observe)
    return api
