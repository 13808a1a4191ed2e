"""The HTTP surface of a served model: the FastAPI app that wires the runner (serve/runner.py) behind
the guard (serve/guard.py): POST /predict, GET /healthz, GET /metadata and the OpenAPI docs.

Nothing here imports Ray. `orchestrator.serve.deployment` wraps it in a Ray Serve deployment with
dynamic batching; the benchmark runs the very same app under plain uvicorn with a per-request
forward pass, so the two differ only in how requests reach the model. What a request holds:
serve/schemas.py.
"""

from __future__ import annotations

import json
import logging
from typing import Any, Awaitable, Callable, Optional

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.openapi.utils import get_openapi
from fastapi.responses import JSONResponse

from orchestrator.serve.guard import Guard, Intake
from orchestrator.serve.runner import ModelRunner
from orchestrator.serve.schemas import ClientError, example_record, field_path, is_json_type

logger = logging.getLogger("orchestrator.serve")


class SafeJSONResponse(JSONResponse):
    """JSON with non-ASCII escaped: text echoed from a request (a lone surrogate) always encodes."""

    def render(self, content: Any) -> bytes:
        return json.dumps(content, allow_nan=False, separators=(",", ":")).encode()


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
        description=f"Predictions of the `{runner.name}` model ({runner.pre.task}). {runner.input.note()}{auth_note}",
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
    horizon = runner.input.label_width()
    shown = (runner.pre.classes or [None])[0] if runner.classification else ([0.0] * horizon if horizon > 1 else 0.0)
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
            return SafeJSONResponse(runner.response(await infer(records), records))  # type: ignore[arg-type]

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
