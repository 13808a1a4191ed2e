"""The HTTP surface of a served model: request schema, validation, inference, FastAPI app.

Nothing here imports Ray. `orchestrator.serve.deployment` wraps it in a Ray Serve deployment with dynamic
batching; the benchmark runs the very same app under plain uvicorn with a per-request forward
pass, so the two differ only in how requests reach the model.

Request body of `POST /predict` (JSON), one of:
  {"mean_radius": 17.9, ...}               one record
  [{"mean_radius": 17.9, ...}, ...]        a list of records
  {"records": [{...}, {...}]}              the same list, wrapped
Every record must hold exactly the model's input columns (unknown ones are refused); a numeric
value may be null (imputed with the training mean). The answer always holds lists, one entry per
record: {"predictions": [...], "probabilities": [{class: p, ...}, ...], "model_version": "..."}
(probabilities for classification only).
"""

from __future__ import annotations

import hashlib
import hmac
import json
import logging
import math
import re
import time
from pathlib import Path
from typing import Annotated, Any, Awaitable, Callable, Optional, Union

import numpy as np
import pandas as pd
import torch
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.openapi.utils import get_openapi
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict, Field, TypeAdapter, ValidationError, create_model

from orchestrator.data.preprocess import Preprocessor
from orchestrator.models.build import count_parameters, forward
from orchestrator.train.checkpoint import STATE_FILE, load_model

logger = logging.getLogger("orchestrator.serve")

DEFAULT_MAX_RECORDS = 1024
OPEN_PATHS = frozenset({"/healthz"})  # reachable without a token (liveness probes)
ROUTES = ("/predict", "/healthz", "/metadata", "/docs", "/docs/oauth2-redirect", "/redoc", "/openapi.json")
MAX_LISTED_ERRORS = 5
# Bodies nest 4 levels at most ({"records": [{"image": [...]}]}); up to this depth a wrong shape is
# a 422 naming the field, beyond it the body is refused unparsed (json.loads recurses per level)
MAX_JSON_DEPTH = 32
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


def record_model(pre: Preprocessor) -> type[BaseModel]:
    """The pydantic model of one input record, derived from the checkpoint's fitted preprocessing.

    Field names are the training columns (as aliases, so any column name works); numeric features
    are numbers or null (imputed), categorical ones take their categories' type (an unseen category
    is allowed and encodes as all zeros, as in training), an image is a flat list of exactly
    prod(shape) numbers. Types are strict: "1.5" is not a number. Unknown fields are refused.
    """
    fields: dict[str, Any] = {}
    if pre.image_column:
        n = int(math.prod(pre.image_shape))
        item = Annotated[float, Field(strict=True, allow_inf_nan=False)]
        fields["f0"] = (
            list[item],
            Field(alias=pre.image_column, min_length=n, max_length=n,
                  description=f"image {pre.image_shape} (channels, height, width) as a flat list of {n} numbers"),
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
                Field(alias=col, description=f"category, one of {shown} (others and null encode as unknown)",
                      json_schema_extra={"examples": cats[:20]}),
            )
    return create_model(  # type: ignore[call-overload]
        "Record", __config__=ConfigDict(extra="forbid", populate_by_name=False, title="Record"), **fields
    )


def example_record(pre: Preprocessor) -> dict[str, Any]:
    """A valid record built from the preprocessing alone (training means, first category)."""
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
    if "input" in e and kind not in ("model_type",):
        shown = repr(e["input"])
        shown = shown if len(shown) <= 40 else shown[:37] + "..."
        msg += f", got {type(e['input']).__name__} {shown}"
    return msg


def checkpoint_version(directory: str | Path) -> str:
    """Default model version: a short digest of the weights, so the same checkpoint keeps its version."""
    h = hashlib.sha256()
    with open(Path(directory) / STATE_FILE, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()[:12]


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

    def __init__(self, checkpoint_dir: str | Path, *, version: Optional[str] = None, max_records: int = DEFAULT_MAX_RECORDS,
                 max_body_bytes: int = 1 << 20, device: str = "cpu"):
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
                        errors.append({"field": records.path(i, col), "type": "string_unicode",
                                       "message": "not valid Unicode text (a lone surrogate escape)"})
                    continue
                lo, hi = self._bounds.get(col, (None, None))
                if lo is None or v is None:
                    continue
                low, high = (min(v), max(v)) if isinstance(v, list) else (v, v)
                if low < lo or high > hi:
                    shown = low if low < lo else high
                    errors.append({"field": records.path(i, col), "type": "float_range",
                                   "message": f"{shown:.6g} is out of range: the model takes values within [{lo:.6g}, {hi:.6g}] "
                                              "(where (x - training mean) / std fits in float32)"})
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
            raise ClientError(400, f"JSON nested {depth} levels deep (the limit is {MAX_JSON_DEPTH}); send one record, "
                              'a list of records or {"records": [...]}')
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
                raise ClientError(422, f"{others[0]}: unknown field next to records", [
                    {"field": k, "message": "unknown field next to records", "type": "extra_forbidden"} for k in others])
            records, prefix = data["records"], ("records",)
            if not isinstance(records, list):
                raise ClientError(422, f"records: must be a list of records, got {type(records).__name__}",
                                  [{"field": "records", "message": "must be a list of records", "type": "list_type"}])
        elif isinstance(data, dict):
            records, single = [data], True
        elif isinstance(data, list):
            records = data
        else:
            raise ClientError(422, 'body must be a JSON object (one record), a list of records or {"records": [...]}, '
                              f"got {type(data).__name__}")
        if not records:
            raise ClientError(422, f"{field_path(prefix)}: no records to predict")
        if len(records) > self.max_records:
            raise ClientError(413, f"{len(records)} records in one request; the limit is {self.max_records}: split the request")
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
        return out

    # ---- inference
    def predict(self, records: list[dict]) -> list[dict]:
        """One forward pass over validated records -> one {"prediction", "probabilities"?} per record."""
        df = pd.DataFrame.from_records(records, columns=self.columns)
        x = torch.from_numpy(self.pre.transform_features(df)).to(self.device)
        with torch.inference_mode():
            out = forward(self.model, x, self.model_spec).float()
            probs = torch.softmax(out, dim=1).cpu().numpy() if self.classification else None
            out = out.cpu().numpy()
        labels = self.pre.decode(out)
        # in-range inputs can still overflow inside the network: such a record gets a 422, never a NaN
        finite = np.isfinite(out.reshape(len(out), -1)).all(axis=1)
        if probs is None:
            finite &= np.isfinite(np.asarray(labels, dtype=np.float64))
            outputs = [{"prediction": float(v)} for v in labels]
        else:
            finite &= np.isfinite(probs).all(axis=1)
            keys = self._class_keys
            outputs = [{"prediction": lab, "probabilities": dict(zip(keys, map(float, p)))} for lab, p in zip(labels, probs)]
        return [o if ok else {"error": NOT_FINITE} for o, ok in zip(outputs, finite)]

    def response(self, outputs: list[dict], records: Optional[Records] = None) -> dict:
        bad = [i for i, o in enumerate(outputs) if "error" in o]
        if bad:
            where = records.path if records is not None else (lambda i: f"[{i}]")
            raise _field_errors([{"field": where(i), "message": f"{outputs[i]['error']} (input values too extreme for the model)",
                                  "type": "output_not_finite"} for i in bad])
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
            "model": {**self.model_spec, "input_shape": self.meta.get("input_shape"), "num_outputs": self.meta.get("num_outputs"),
                      "parameters": count_parameters(self.model)},
            "metrics": _finite({"checkpoint": self.loaded.metrics, "test": self.test_metrics}),  # a diverged run's loss is NaN
            "input_schema": self.Record.model_json_schema(),
            "example": example_record(self.pre),
            "limits": {"max_records": self.max_records, "max_body_bytes": self.max_body_bytes},
            "checkpoint": self.loaded.path,
            **(extra or {}),
        }


NOT_FINITE = "model output not finite for this input"


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
        path = path[len(root):]
    return path or "/"


async def _send_json(send, status: int, body: dict, headers: Optional[dict] = None) -> None:
    raw = json.dumps(body).encode()
    hdrs = [(b"content-type", b"application/json"), (b"content-length", str(len(raw)).encode())]
    hdrs += [(k.lower().encode(), v.encode()) for k, v in (headers or {}).items()]
    await send({"type": "http.response.start", "status": status, "headers": hdrs})
    await send({"type": "http.response.body", "body": raw})


class Guard:
    """Outermost ASGI layer: metrics for every request, bearer-token check, Content-Length limit."""

    def __init__(self, app, *, token_sha256: Optional[str], max_body_bytes: int,
                 observe: Optional[Callable[[str, int, float], None]] = None):
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


def make_api(runner: ModelRunner, infer: Infer, *, token_sha256: Optional[str] = None,
             observe: Optional[Callable[[str, int, float], None]] = None, info: Optional[Callable[[], dict]] = None):
    """FastAPI app: POST /predict, GET /healthz, GET /metadata, /docs; `infer` runs validated records."""
    auth_note = (" Every endpoint but /healthz needs `Authorization: Bearer <token>`." if token_sha256 else "")
    api = FastAPI(
        title=f"{runner.name} model server", version=runner.version,
        description=f"Predictions of the `{runner.name}` model ({runner.pre.task}).{auth_note}",
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
    body_schema = {"oneOf": [
        record_ref,
        {"type": "array", "items": record_ref, "minItems": 1, "maxItems": runner.max_records},
        {"type": "object", "additionalProperties": False, "required": ["records"],
         "properties": {"records": {"type": "array", "items": record_ref, "minItems": 1, "maxItems": runner.max_records}}},
    ]}
    example = example_record(runner.pre)
    prediction_doc = {"description": "one prediction per record", "content": {"application/json": {"example": runner.response(
        [{"prediction": (runner.pre.classes or [0.0])[0], "probabilities": {k: 1.0 / max(1, len(runner._class_keys)) for k in runner._class_keys}}])}}}
    error_doc = {"content": {"application/json": {"example": {"detail": "records[0].x: ...", "errors": [{"field": "records[0].x", "message": "...", "type": "..."}]}}}}

    @api.post(
        "/predict",
        summary="Predict one record or a list of records",
        openapi_extra={"requestBody": {"required": True, "content": {"application/json": {"schema": body_schema, "example": example}}}},
        responses={200: prediction_doc, 400: {"description": "malformed JSON", **error_doc},
                   413: {"description": "body or record count over the limit", **error_doc},
                   415: {"description": "Content-Type is not JSON", **error_doc},
                   422: {"description": "a record does not match the input schema; `errors` names each field", **error_doc},
                   503: {"description": "overloaded (queue full): retry later"}},
    )
    async def predict(request: Request):
        ctype = request.headers.get("content-type")
        if not is_json_type(ctype):
            raise ClientError(415, f"Content-Type {ctype!r} is not JSON: send 'Content-Type: application/json'")
        records = runner.parse(await read_body(request, runner.max_body_bytes))
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
