"""table: numeric and categorical feature columns (data.features, data.categorical), the default kind.

Numeric columns are standardised with the training split's mean and std (a missing value is imputed
with the mean); categorical ones are one-hot encoded over the training split's categories (an unseen
category encodes as all zeros). String columns not listed in data.categorical are one-hot encoded too.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Optional, Union

import numpy as np
import pandas as pd
import pyarrow as pa
from pydantic import Field

from orchestrator.data.kinds.base import FLOAT32_MAX, ColumnCheck, Columns, InputKind, TrainSplit, is_text_type
from orchestrator.data.values import plain_value
from orchestrator.errors import DataError, shown_value

MAX_AUTO_CATEGORIES = 1000  # a string column with more distinct values is more likely an id than a category


@dataclass
class TableInput(InputKind):
    name = "table"

    numeric: list[str] = field(default_factory=list)
    means: list[float] = field(default_factory=list)
    stds: list[float] = field(default_factory=list)
    categorical: dict[str, list[Any]] = field(default_factory=dict)  # column -> its categories in the training split

    # ---------------------------------------------------------------- spec and source columns
    @classmethod
    def check_columns(cls, check: ColumnCheck) -> Columns:
        d, src, types = check.spec.data, check.src, check.types
        features = d.features if d.features is not None else [c for c in types if c != d.label]
        numeric, categorical, auto, unusable = [], [], [], []
        for col in features:
            if col not in types:
                check.need(col, "data.features")
                continue
            t = types[col]
            if col in d.categorical:
                categorical.append(col)
            elif pa.types.is_integer(t) or pa.types.is_floating(t) or pa.types.is_boolean(t):
                numeric.append(col)
            elif is_text_type(t):  # as documented (data.categorical): string columns are one-hot encoded
                categorical.append(col)
                auto.append(col)
            else:
                where = "data.features" if d.features is not None else "every column but the label, as data.features is omitted"
                unusable.append(
                    f"{src}: column {col!r} ({where}) has type {t}; a feature must hold numbers, booleans or strings "
                    f"(strings are one-hot encoded): convert it, or leave it out of data.features"
                )
        if unusable:
            problems = [f"{src}: {m}" for m in check.missing] + unusable
            raise DataError("; ".join(problems), problems=problems)
        check.refuse_missing()
        return Columns(
            task=check.task, kind=cls.name, inputs=numeric + categorical, numeric=numeric, categorical=categorical, auto_categorical=auto
        )

    # ----------------------------------------------------------------------------- fitting
    @classmethod
    def fit(cls, train: TrainSplit) -> TableInput:
        stats, cols = train.statistics(), train.columns
        state = cls()
        for c in cols.numeric:
            mean, std = stats[f"mean:{c}"], stats[f"std:{c}"]
            state.numeric.append(c)
            state.means.append(float(mean))
            state.stds.append(float(std) if std and std > 0 else 1.0)
        for c in cols.categorical:
            state.categorical[c] = sorted((plain_value(v) for v in stats[f"uniq:{c}"] if v is not None), key=lambda v: (str(type(v)), v))
            if c in cols.auto_categorical and len(state.categorical[c]) > MAX_AUTO_CATEGORIES:
                raise DataError(
                    f"{train.src}: column {c!r} holds strings with {len(state.categorical[c])} distinct values in the training split, "
                    f"too many to one-hot encode by default (at most {MAX_AUTO_CATEGORIES}): leave it out of data.features, "
                    f"or list it under data.categorical to encode it anyway"
                )
        return state

    # ------------------------------------------------------------------ what the model sees
    def columns(self) -> list[str]:
        return list(self.numeric) + list(self.categorical)

    def input_shape(self) -> list[int]:
        return [len(self.numeric) + sum(len(v) for v in self.categorical.values())]

    def transform(self, df: pd.DataFrame, *, truncate: bool = True) -> dict[str, np.ndarray]:
        n = len(df)
        parts = []
        if self.numeric:
            num = df[self.numeric].astype(np.float64).to_numpy()
            if np.isinf(num).any():  # missing values are imputed below, but nothing can stand in for +/-inf
                bad = [c for c, b in zip(self.numeric, np.isinf(num).any(axis=0)) if b]
                raise ValueError(
                    f"column{'s' * (len(bad) > 1)} {', '.join(map(repr, bad))}: +inf/-inf values cannot be standardised; replace or drop them"
                )
            means = np.asarray(self.means)
            num = np.where(np.isnan(num), means, num)  # impute with the training mean
            parts.append((num - means) / np.asarray(self.stds))
        for col, cats in self.categorical.items():
            values = df[col].astype(object).to_numpy()
            onehot: np.ndarray = np.zeros((n, len(cats)), dtype=np.float64)
            index = {c: i for i, c in enumerate(cats)}
            for r, v in enumerate(values):
                i = index.get(plain_value(v))
                if i is not None:  # unseen category: all zeros
                    onehot[r, i] = 1.0
            parts.append(onehot)
        x = np.concatenate(parts, axis=1).astype(np.float32) if parts else np.zeros((n, 0), np.float32)
        return {"x": x}

    # ---------------------------------------------------------------------------- serving
    def record_fields(self) -> dict[str, Any]:
        from typing import Annotated

        fields: dict[str, Any] = {}
        for i, col in enumerate(self.numeric):
            fields[f"f{i}"] = (
                Optional[Annotated[float, Field(strict=True, allow_inf_nan=False)]],
                Field(alias=col, description=f"number (training mean {self.means[i]:.6g}); null is imputed with it"),
            )
        for j, (col, cats) in enumerate(self.categorical.items()):
            t = category_type(cats)
            shown = ", ".join(map(repr, cats[:20])) + (", ..." if len(cats) > 20 else "")
            fields[f"c{j}"] = (
                Optional[Annotated[t, Field(strict=True)]],
                Field(
                    alias=col,
                    description=f"category, one of {shown} (others and null encode as unknown)",
                    json_schema_extra={"examples": cats[:20]},
                ),
            )
        return fields

    def example(self) -> dict[str, Any]:
        rec: dict[str, Any] = {col: round(float(m), 4) for col, m in zip(self.numeric, self.means)}
        rec.update({col: (cats[0] if cats else None) for col, cats in self.categorical.items()})
        return rec

    def describe(self) -> dict[str, Any]:
        return {"kind": self.name, "numeric": list(self.numeric), "categorical": list(self.categorical)}

    def note(self) -> str:
        return f"Input: table rows, one value per feature column ({len(self.columns())} columns)."

    def value_bounds(self) -> dict[str, tuple[float, float]]:
        return {col: (m - FLOAT32_MAX * s, m + FLOAT32_MAX * s) for col, m, s in zip(self.numeric, self.means, self.stds)}

    def frame(self, records: list[dict]) -> pd.DataFrame:
        return pd.DataFrame.from_records(records, columns=self.columns())

    # ------------------------------------------------------------------- predicting files
    def coerce(self, df: pd.DataFrame) -> tuple[pd.DataFrame, dict[int, tuple[str, str]]]:
        """A numeric column that came out as text (one bad cell in a CSV makes pandas read the whole
        column so) becomes numbers again, and each cell that is no number is reported; whole-number
        categories read as floats (a column with gaps) become integers again."""
        out = df.copy()
        errors: dict[int, tuple[str, str]] = {}
        for col in self.numeric:
            s = out[col]
            if s.dtype == object or pd.api.types.is_string_dtype(s):
                numbers = pd.to_numeric(s, errors="coerce")
                blank = s.isna().to_numpy() | s.map(lambda v: isinstance(v, str) and not v.strip()).to_numpy()
                for i in np.flatnonzero(numbers.isna().to_numpy() & ~blank):
                    errors.setdefault(int(i), (col, f"{shown_value(s.iloc[i])} is not a number"))
                out[col] = numbers
        for col, cats in self.categorical.items():
            if cats and all(isinstance(c, int) and not isinstance(c, bool) for c in cats) and out[col].dtype.kind == "f":
                out[col] = pd.Series(
                    [int(v) if math.isfinite(v) and float(v).is_integer() else (None if v != v else v) for v in out[col]],
                    dtype=object,
                    index=out.index,
                )
        return out, errors


def category_type(cats: list[Any]) -> Any:
    """The JSON type(s) a categorical field takes: those of its training categories."""
    kinds = {type(c) for c in cats}
    strict: list[type] = []
    if bool in kinds:
        strict.append(bool)
    if int in kinds:
        strict.append(int)
    if float in kinds:
        strict.append(float)
    if str in kinds or not strict:
        strict.append(str)
    return strict[0] if len(strict) == 1 else Union[tuple(strict)]


KIND = TableInput
