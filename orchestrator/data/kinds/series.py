"""series: forecasting from one ordered series (data.series): windows of `window` points in, the next
`horizon` values out (regression).

The whole series is read in time order (data.series.order_by), cut into windows and split in time
(no hash split: a window of a later split never touches a point of an earlier one). Values are
standardised with the mean and std of the points the training windows read or forecast.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Annotated, Any

import numpy as np
import pandas as pd
import pyarrow as pa
from pydantic import Field, PlainValidator, WithJsonSchema
from pydantic_core import PydanticCustomError

from orchestrator.data.kinds.base import (
    ColumnCheck,
    InputKind,
    OrderedSplits,
    TrainSplit,
    is_number_type,
    list_cell,
    number_check,
    standardised_bounds,
)
from orchestrator.data.preprocess import SPLITS
from orchestrator.data.values import plain_value
from orchestrator.errors import DataError, shown_value
from orchestrator.spec import SeriesSpec

if TYPE_CHECKING:
    from pathlib import Path

    from orchestrator.spec import DataSpec, JobSpec

SERIES_TARGET = "__target"  # column of a series' windows that holds the values to forecast
FILE_ROW = "__file_row"  # a point's row in the source, kept while the series is sorted by time


@dataclass
class SeriesInput(InputKind):
    name = "series"
    section = SeriesSpec
    section_description = (
        "Forecasting from one ordered series instead of rows: windows in, next values out (regression), split in time order."
    )
    steps = True
    ordered = True

    column: str = ""
    window: int = 0
    horizon: int = 0
    mean: float = 0.0  # of the training period's points
    std: float = 1.0

    # ---------------------------------------------------------------- spec and source columns
    @classmethod
    def source_columns(cls, data: DataSpec) -> list[tuple[str, str]]:
        s = cls.section_of(data)
        return [(s.column, "data.series.column"), (s.order_by, "data.series.order_by")]

    @classmethod
    def check_type(cls, check: ColumnCheck, column: str, t: pa.DataType) -> str:
        if not is_number_type(t):
            raise DataError(f"{check.src}: column {column!r} (data.series.column) has type {t}; a series must hold numbers")
        return ""

    # ----------------------------------------------------------------------------- fitting
    @classmethod
    def fit(cls, train: TrainSplit) -> SeriesInput:
        raise NotImplementedError("a series is prepared whole (prepare_ordered), not fitted on a hash split")

    @classmethod
    def prepare_ordered(cls, spec: JobSpec, src: str, df: pd.DataFrame) -> OrderedSplits:
        """The series in time order -> windows -> a chronological split -> standardised with the
        training period's points. `df` holds data.series.order_by and data.series.column in file order."""
        from orchestrator.data.sequences import chronological_split, make_windows

        d, s = spec.data, cls.section_of(spec.data)
        if df[s.order_by].isna().any():
            raise DataError(
                f"{src}: column {s.order_by!r} (data.series.order_by) has {int(df[s.order_by].isna().sum())} missing values; every point needs its time"
            )
        dup = int(df[s.order_by].duplicated().sum())
        if dup:
            raise DataError(f"{src}: column {s.order_by!r} (data.series.order_by) has {dup} repeated values; each point needs its own time")
        # the row each point had in the file (for one file; across a folder's files, in their sorted order)
        df = df.assign(**{FILE_ROW: np.arange(len(df))}).sort_values(s.order_by, kind="stable").reset_index(drop=True)
        values = df[s.column].to_numpy(dtype=np.float64, na_value=np.nan)
        bad = np.flatnonzero(~np.isfinite(values))
        if bad.size:
            i = int(bad[0])
            raise DataError(
                f"{src}: row {int(df[FILE_ROW].iloc[i])} ({s.order_by} = {plain_value(df[s.order_by].iloc[i])}), column {s.column!r} "
                f"(data.series.column): {'missing value' if np.isnan(values[i]) else values[i]}; "
                f"{int(bad.size)} point{'s' * (bad.size > 1)} in all are missing or infinite: fill or drop them before windowing"
            )
        try:
            x, y = make_windows(values, s.window, s.horizon)
            ranges = chronological_split(len(x), (d.split.train, d.split.validation, d.split.test), s.window, s.horizon)
        except ValueError as e:
            raise DataError(f"{src}: column {s.column!r} (data.series): {e}") from None
        span = s.window + s.horizon
        touched = values[: ranges["train"].stop - 1 + span]  # every point a training window reads or forecasts
        mean, std = float(touched.mean()), float(touched.std())
        std = std if std > 0 else 1.0
        times = df[s.order_by].to_numpy()
        frames = {}
        for name in SPLITS:
            idx = np.asarray(ranges[name], dtype=np.int64)
            frames[name] = pd.DataFrame(
                {
                    s.column: list(x[idx, :, 0].astype(np.float64)),
                    SERIES_TARGET: y[idx].astype(np.float64) if s.horizon == 1 else list(y[idx].astype(np.float64)),
                    # when each window starts and ends, and what it forecasts: the split's order can be checked
                    "input_start": times[idx],
                    "input_end": times[idx + s.window - 1],
                    "target_start": times[idx + s.window],
                    "target_end": times[idx + span - 1],
                }
            )
        state = cls(column=s.column, window=s.window, horizon=s.horizon, mean=mean, std=std)
        return OrderedSplits(
            state=state, label=SERIES_TARGET, frames=frames, target_mean=mean, target_std=std, train_rows=len(ranges["train"])
        )

    # ------------------------------------------------------------------ what the model sees
    def columns(self) -> list[str]:
        return [self.column]

    def input_shape(self) -> list[int]:
        return [self.window, 1]

    def label_width(self) -> int:
        return self.horizon

    def transform(self, df: pd.DataFrame, *, truncate: bool = True) -> dict[str, np.ndarray]:
        w, col = self.window, self.column
        rows = []
        for i, v in enumerate(df[col]):
            try:
                a = np.asarray(v, dtype=np.float64).reshape(-1)
            except (TypeError, ValueError):
                raise ValueError(f"column {col!r}: row {i}: a window must be a list of {w} numbers") from None
            if a.size != w:
                raise ValueError(f"column {col!r}: row {i}: a window holds {w} values (data.series.window), got {a.size}")
            if not np.isfinite(a).all():
                raise ValueError(f"column {col!r}: row {i}: a window holds a missing or infinite value")
            rows.append(a)
        x = np.stack(rows) if rows else np.zeros((0, w))
        x = ((x - self.mean) / self.std).astype(np.float32)[:, :, None]
        return {"x": x, "len": np.full(len(rows), w, dtype=np.int64)}

    # ---------------------------------------------------------------------------- serving
    def request_type(self) -> Any:
        """A window: exactly `window` numbers, the last observed point last."""
        w = int(self.window)
        check = number_check(standardised_bounds([self.mean], [self.std]))

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

    def record_fields(self) -> dict[str, Any]:
        return {
            "f0": (
                self.request_type(),
                Field(
                    alias=self.column,
                    description=f"window: the last {self.window} observed values, oldest first; "
                    f"the answer is the forecast of the next {self.horizon}",
                ),
            )
        }

    def example(self) -> dict[str, Any]:
        return {self.column: [round(float(self.mean), 4)] * int(self.window)}

    def describe(self) -> dict[str, Any]:
        return {
            "kind": self.name,
            "column": self.column,
            "type": "list of numbers",
            "window": self.window,
            "horizon": self.horizon,
            "note": f"the {self.window} points ending at the last observed one; the answer forecasts the next {self.horizon}",
        }

    def note(self) -> str:
        return (
            f"Input: a time-series window. Each record's `{self.column}` holds the last {self.window} observed "
            f"values, oldest first; the prediction forecasts the next {self.horizon}."
        )

    def rows_are_requests(self) -> bool:
        return False  # a source row is one point, a request a window

    # ------------------------------------------------------------------- predicting files
    @classmethod
    def request_value(cls, info: dict, value: Any, file: Path, row: int) -> Any:
        return list_cell(value, file, row, info.get("column") or "")


KIND = SeriesInput
