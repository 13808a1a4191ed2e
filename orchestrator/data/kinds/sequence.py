"""sequence: one variable-length numeric sequence per row (data.sequence), a list of numbers or of
equal-length vectors (orchestrator/data/sequences.py pads them).

Each feature is standardised with its mean and std over every real step of the training split;
rows are padded to max_length (data.sequence.max_length, or the training split's longest row) and
"len" counts their real steps. Training keeps a long row's most recent steps; serving refuses it.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Annotated, Any, Callable, Optional

import numpy as np
import pandas as pd
import pyarrow as pa
from pydantic import Field, PlainValidator, WithJsonSchema
from pydantic_core import PydanticCustomError

from orchestrator.data.kinds.base import (
    ColumnCheck,
    Columns,
    InputKind,
    TrainSplit,
    is_list_type,
    is_number_type,
    list_cell,
    number_check,
    standardised_bounds,
)
from orchestrator.data.values import is_missing
from orchestrator.errors import DataError, shown_value
from orchestrator.spec import SequenceSpec

if TYPE_CHECKING:
    from pathlib import Path

    from orchestrator.spec import JobSpec

# Without data.sequence.max_length every row is padded to the longest one: a single row of 200000
# steps made every batch [rows, 200000, features] and no epoch finished. Beyond this the spec must
# say how long a row may be (longer rows then keep their most recent steps).
MAX_SEQUENCE_STEPS = 4096


@dataclass
class SequenceInput(InputKind):
    name = "sequence"
    section = SequenceSpec
    section_description = "Numeric sequence input (a variable-length list per row) instead of tabular features."
    steps = True

    column: str = ""
    max_length: int = 0
    features: int = 0
    means: list[float] = field(default_factory=list)  # per feature, over every real step of the training split
    stds: list[float] = field(default_factory=list)

    # ---------------------------------------------------------------- spec and source columns
    @classmethod
    def check_type(cls, check: ColumnCheck, column: str, t: pa.DataType) -> str:
        inner = t.value_type if is_list_type(t) else None
        if inner is not None and is_list_type(inner):
            inner = inner.value_type
        if inner is None or not is_number_type(inner):
            raise DataError(
                f"{check.src}: column {column!r} (data.sequence.column) has type {t}; it must hold lists of numbers "
                "or lists of equal-length vectors (lists of numbers)"
            )
        return ""

    @classmethod
    def row_check(cls, spec: JobSpec, columns: Columns, src: str) -> Optional[Callable[[Any, str], Optional[str]]]:
        return SequenceCheck(cls.section_of(spec.data).max_length)

    # ----------------------------------------------------------------------------- fitting
    @classmethod
    def fit(cls, train: TrainSplit) -> SequenceInput:
        spec, src = train.spec, train.src
        section = cls.section_of(spec.data)
        col = section.column
        parts = train.per_batch(sequence_moments, [col], column=col)
        if not parts:
            raise DataError(f"{src}: the training split is empty (too few rows for data.split)")
        widths = sorted({int(r["f"]) for r in parts})
        if len(widths) > 1:
            raise DataError(
                f"{src}: column {col!r} (data.sequence.column): the steps of some rows hold {widths[0]} values and of others {widths[1]}; every row needs the same"
            )
        n = sum(int(r["n"]) for r in parts)
        total = np.sum([np.asarray(r["s"], np.float64) for r in parts], axis=0)
        squares = np.sum([np.asarray(r["ss"], np.float64) for r in parts], axis=0)
        mean = total / n
        std = np.sqrt(np.maximum(squares / n - mean * mean, 0.0))
        longest = max(int(r["longest"]) for r in parts)
        if section.max_length is None and longest > MAX_SEQUENCE_STEPS:
            raise DataError(
                f"{src}: column {col!r} (data.sequence.column): a row of the training split holds {longest} steps; without "
                f"data.sequence.max_length rows may hold at most {MAX_SEQUENCE_STEPS} (every batch is padded to the longest row): "
                "set data.sequence.max_length, and longer rows keep their most recent steps"
            )
        return cls(
            column=col,
            features=widths[0],
            max_length=section.max_length or longest,
            means=[float(v) for v in mean],
            stds=[float(v) if v > 0 else 1.0 for v in std],
        )

    # ------------------------------------------------------------------ what the model sees
    def columns(self) -> list[str]:
        return [self.column]

    def input_shape(self) -> list[int]:
        return [self.max_length, self.features]

    def transform(self, df: pd.DataFrame, *, truncate: bool = True) -> dict[str, np.ndarray]:
        from orchestrator.data.sequences import SequenceInputError, pad_sequences

        rows = [v.tolist() if isinstance(v, np.ndarray) and v.dtype == object else v for v in df[self.column]]
        try:
            x, lengths = pad_sequences(rows, self.max_length, num_features=self.features, truncate=truncate)
        except (SequenceInputError, TypeError) as e:
            raise ValueError(f"column {self.column!r}: {e}") from None
        # One fixed length for every batch (Ray Data stacks rows into one tensor column); forward()
        # trims each batch back to its longest real row, so the padding costs no compute.
        out: np.ndarray = np.zeros((len(rows), self.max_length, self.features), dtype=np.float32)
        real = np.arange(x.shape[1])[None, :] < lengths[:, None]
        std = (x - np.asarray(self.means, np.float32)) / np.asarray(self.stds, np.float32)
        out[:, : x.shape[1]] = np.where(real[:, :, None], std, 0.0)
        return {"x": out, "len": lengths}

    # ---------------------------------------------------------------------------- serving
    def request_type(self) -> Any:
        """A sequence: 1..max_length steps, each a number (one feature) or a vector of `features` numbers."""
        t, f = int(self.max_length), int(self.features)
        check = number_check(standardised_bounds(self.means or [0.0] * f, self.stds or [1.0] * f))
        shape = f"a list of 1 to {t} numbers" if f == 1 else f"a list of 1 to {t} steps, each a list of {f} numbers"

        def validate(v: Any) -> Any:
            if not isinstance(v, list):
                raise PydanticCustomError("sequence_type", f"expected {shape}, got {type(v).__name__} {shown_value(v)}")
            if not v:
                raise PydanticCustomError("sequence_empty", f"empty sequence: expected {shape}")
            if len(v) > t:
                raise PydanticCustomError(
                    "sequence_too_long",
                    f"{len(v)} steps, more than the model's max_length {t} (data.sequence.max_length, or the training split's longest sequence)",
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

    def record_fields(self) -> dict[str, Any]:
        f = self.features
        return {
            "f0": (
                self.request_type(),
                Field(
                    alias=self.column,
                    description=f"sequence: 1 to {self.max_length} steps, each "
                    + ("a number (or a list of 1 number)" if f == 1 else f"a list of {f} numbers"),
                ),
            )
        }

    def example(self) -> dict[str, Any]:
        steps = min(3, max(1, int(self.max_length)))
        means = [round(float(m), 4) for m in (self.means or [0.0] * self.features)]
        return {self.column: [means[0] if len(means) == 1 else list(means) for _ in range(steps)]}

    def describe(self) -> dict[str, Any]:
        return {
            "kind": self.name,
            "column": self.column,
            "type": "list of numbers" if self.features == 1 else "list of vectors",
            "max_length": self.max_length,
            "features": self.features,
        }

    def note(self) -> str:
        return f"Input: a numeric sequence. Each record's `{self.column}` is a list of 1 to {self.max_length} " + (
            "numbers." if self.features == 1 else f"steps, each a list of {self.features} numbers."
        )

    # ------------------------------------------------------------------- predicting files
    @classmethod
    def request_value(cls, info: dict, value: Any, file: Path, row: int) -> Any:
        return list_cell(value, file, row, info.get("column") or "")


class SequenceCheck:
    """A row's own problems, then the width of its steps against the first row's."""

    def __init__(self, max_length: Optional[int]):
        self.max_length = max_length
        self.width: Optional[tuple[int, str]] = None  # (values per step, where that was first seen)

    def __call__(self, v: Any, where: str) -> Optional[str]:
        from orchestrator.data.sequences import SequenceInputError, row_array

        if is_missing(v):
            return "missing sequence (every row needs one)"
        if isinstance(v, np.ndarray) and v.dtype == object:
            v = v.tolist()
        try:
            a = row_array(0, v)
        except SequenceInputError as e:
            return str(e).split(": ", 1)[1]
        if self.width is None:
            self.width = (a.shape[1], where)
        elif a.shape[1] != self.width[0]:
            return f"its steps hold {a.shape[1]} values, those of {self.width[1]} hold {self.width[0]}; every row needs the same"
        if self.max_length is None and len(a) > MAX_SEQUENCE_STEPS:
            return (
                f"{len(a)} steps; without data.sequence.max_length rows may hold at most {MAX_SEQUENCE_STEPS} "
                "(every batch is padded to the longest row): set data.sequence.max_length, and longer rows keep their most recent steps"
            )
        return None


def sequence_moments(df: pd.DataFrame, *, column: str) -> pd.DataFrame:
    """Per-feature sums over the real steps of a batch of sequences, its steps' width and longest row."""
    from orchestrator.data.sequences import SequenceInputError, pad_sequences

    cols = ["s", "ss", "n", "f", "longest"]
    if not len(df):
        return pd.DataFrame({c: [] for c in cols})
    rows = [v.tolist() if isinstance(v, np.ndarray) and v.dtype == object else v for v in df[column]]
    try:
        x, lengths = pad_sequences(rows)
    except (SequenceInputError, TypeError) as e:
        raise ValueError(f"column {column!r} (data.sequence.column): {e}") from None
    real = np.arange(x.shape[1])[None, :] < lengths[:, None]
    vals = x[real].astype(np.float64)  # [real steps, features]
    return pd.DataFrame(
        {
            "s": [vals.sum(axis=0).tolist()],
            "ss": [(vals * vals).sum(axis=0).tolist()],
            "n": [len(vals)],
            "f": [x.shape[2]],
            "longest": [int(lengths.max())],
        }
    )


KIND = SequenceInput
