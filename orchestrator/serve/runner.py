"""The model runner of a served checkpoint: parse and validate request bodies, transform the records
with the fitted preprocessing, one forward pass per batch, and the response.

Nothing here imports Ray or FastAPI: `serve/app.py` wires it into the HTTP app, `serve/deployment.py`
into a Ray Serve deployment with dynamic batching, and batch prediction (batch/run.py) uses it in
Ray Data actors, so every path checks and predicts a record the same way.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
from pathlib import Path
from typing import Any, Optional

import numpy as np
import pandas as pd
import torch
from pydantic import TypeAdapter, ValidationError

from orchestrator.data.kinds import RequestTooLarge
from orchestrator.models.build import count_parameters, forward
from orchestrator.serve.schemas import (
    DEFAULT_MAX_RECORDS,
    MAX_JSON_DEPTH,
    ClientError,
    Records,
    describe_error,
    example_record,
    field_errors,
    field_path,
    input_description,
    json_depth,
    record_model,
)
from orchestrator.train.checkpoint import STATE_FILE, load_model

NOT_FINITE = "model output not finite for this input"


def checkpoint_version(directory: str | Path) -> str:
    """Default model version: a short digest of the weights, so the same checkpoint keeps its version."""
    h = hashlib.sha256()
    with open(Path(directory) / STATE_FILE, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()[:12]


def finite(obj: Any) -> Any:
    """NaN and infinities -> None, which JSON can carry."""
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, dict):
        return {k: finite(v) for k, v in obj.items()}
    if isinstance(obj, list):
        return [finite(v) for v in obj]
    return obj


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
        self.input = self.pre.input
        self.columns = self.pre.feature_columns
        self.kind = self.pre.kind
        # what predict() transforms with: an image model trained on file paths takes the files' bytes
        # here, so a request can never make the server open a path
        self._inputs_pre = dataclasses.replace(self.pre, input=self.input.for_requests())
        self.Record = record_model(self.pre)
        self._records = TypeAdapter(list[self.Record])  # type: ignore[name-defined]
        self.classification = self.pre.task == "classification"
        self._class_keys = [str(c) for c in (self.pre.classes or [])]
        # per numeric input, the values whose standardised form (x - mean) / std is finite in float32
        # (the model's input type): anything beyond would reach the network as inf and come out NaN
        self._bounds = self.input.value_bounds()
        self.test_metrics = self._read_test_metrics(Path(checkpoint_dir))

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
            raise field_errors(errors)

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
                errors.append({"field": field_path(loc), "message": describe_error(e), "type": e["type"]})
            raise field_errors(errors) from None
        out = Records(records, prefix, single)
        self._check_values(out)
        try:
            errors = self.input.decode_requests(out, out.path)
        except RequestTooLarge as e:
            raise ClientError(413, str(e)) from None
        if errors:
            raise field_errors(errors)
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

    # ---- inference
    def _frame(self, records: list[dict]) -> pd.DataFrame:
        return self.input.frame(records)

    def _record_error(self, e: ValueError) -> dict:
        """A preprocessor's ValueError about one record alone -> an output entry naming its field."""
        col = self.columns[0] if len(self.columns) == 1 else None
        message = str(e)
        for prefix in [f"column {col!r}: row 0: ", f"column {col!r}: "] if col else []:
            if message.startswith(prefix):
                message = message[len(prefix) :]
                break
        return {"error": self.input.explain(message), "type": "value_error", "column": col}

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
            outputs: list[dict[str, Any]] = [{"prediction": [float(x) for x in v] if isinstance(v, list) else float(v)} for v in labels]
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
            raise field_errors(errors)
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
            "metrics": finite({"checkpoint": self.loaded.metrics, "test": self.test_metrics}),  # a diverged run's loss is NaN
            "input": input_description(self.pre),
            "input_schema": self.Record.model_json_schema(),
            "example": example_record(self.pre),
            "limits": {"max_records": self.max_records, "max_body_bytes": self.max_body_bytes, **self.input.limits()},
            "checkpoint": self.loaded.path,
            **(extra or {}),
        }
