"""What a request to a served model is, and how its problems are told.

Request body of `POST /predict` (JSON), one of:
  {"mean_radius": 17.9, ...}               one record
  [{"mean_radius": 17.9, ...}, ...]        a list of records
  {"records": [{...}, {...}]}              the same list, wrapped
Every record must hold exactly the model's input columns (unknown ones are refused). What a column
holds follows the checkpoint's input kind (data/kinds/, shown by GET /metadata under "input"):
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

Each input kind gives its record's fields, example and description (InputKind.record_fields,
example, describe); this module turns them into the request schema and names every problem by
its field, as `records[2].age` (the spec's own error paths are named the same way).
"""

from __future__ import annotations

import re
from typing import Any, Mapping, Optional

import numpy as np
from pydantic import BaseModel, ConfigDict, create_model

from orchestrator.data.preprocess import Preprocessor
from orchestrator.errors import shown_value
from orchestrator.spec import loc_path

DEFAULT_MAX_RECORDS = 1024
MAX_LISTED_ERRORS = 5
# Bodies nest 5 levels at most ({"records": [{"readings": [[...]]}]}); up to this depth a wrong shape is
# a 422 naming the field, beyond it the body is refused unparsed (json.loads recurses per level)
MAX_JSON_DEPTH = 32
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


def field_errors(errors: list[dict]) -> ClientError:
    """A 422 naming each field at fault ({"field", "message", "type"}), the first few in its detail."""
    shown = "; ".join(f"{x['field']}: {x['message']}" for x in errors[:MAX_LISTED_ERRORS])
    more = len(errors) - MAX_LISTED_ERRORS
    return ClientError(422, shown + (f"; and {more} more" if more > 0 else ""), errors)


def field_path(loc: tuple) -> str:
    """('records', 2, 'age') -> 'records[2].age'; column names are shown as they are."""
    return loc_path(loc, quote=False, empty="(body)")


def describe_error(e: Mapping[str, Any]) -> str:
    """One pydantic error of a record, as its message says it to a client."""
    kind = e["type"]
    if kind == "extra_forbidden":
        return "unknown field (not one of the model's inputs; see GET /metadata)"
    if kind == "missing":
        return "required field is missing"
    msg = e["msg"]
    if "input" in e and kind not in ("model_type",) and ", got " not in msg:  # our own checks say what they got
        msg += f", got {type(e['input']).__name__} {shown_value(e['input'])}"
    return msg


class Records(list):
    """Validated records that remember how the body held them, so that errors can name record i."""

    def __init__(self, items: list, prefix: tuple = (), single: bool = False):
        super().__init__(items)
        self.prefix, self.single = prefix, single

    def path(self, i: int, *more) -> str:
        return field_path(tuple(more) if self.single else (*self.prefix, i, *more))


def record_model(pre: Preprocessor) -> type[BaseModel]:
    """The pydantic model of one input record, derived from the checkpoint's fitted preprocessing.

    Field names are the training columns (as aliases, so any column name works), their types the
    input kind's (InputKind.record_fields): table numbers or null (imputed) and categories of their
    training type; text a string of bounded length; sequences, windows and image arrays lists of
    numbers; image files base64 text. Types are strict: "1.5" is not a number, 5 is not a text.
    Unknown fields are refused.
    """
    return create_model(  # type: ignore[call-overload]
        "Record", __config__=ConfigDict(extra="forbid", populate_by_name=False, title="Record"), **pre.input.record_fields()
    )


def example_record(pre: Preprocessor) -> dict[str, Any]:
    """A valid record built from the preprocessing alone (training means, first category, ...)."""
    return pre.input.example()


def input_description(pre: Preprocessor) -> dict[str, Any]:
    """What one record holds, for GET /metadata: the input kind and its limits."""
    return pre.input.describe()


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
