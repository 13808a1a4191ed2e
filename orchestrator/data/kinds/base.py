"""What an input kind is: everything one kind of model input needs, from its spec section to its
request schema, in one class.

An `InputKind` subclass is one kind (table, image, text, sequence, series, or an extension's); an
instance is that kind's fitted state, plain JSON fields saved in every checkpoint inside the
fitted preprocessing (data/preprocess.py), so loading a model never unpickles anything. The
registry (data/kinds/registry.py) finds a kind by name. Pure numpy, pandas, pyarrow and pydantic:
no Ray, no torch, so the same object transforms Ray Data batches in training and request records
in a serving replica.

A kind owns, in this order:
- its spec section (`section`, the pydantic model of `data.<name>`; table has none: data.features);
- its column checks against the source's schema (`check_columns`) and its per-row checks (`row_check`);
- fitting on the training split (`fit`, or `prepare_ordered` for a kind that makes its own examples
  from an ordered source and splits them in time);
- the batch transform (`transform`) and what the loop collates (`steps`, `token_ids`);
- serving: the request schema (`record_fields`), an example, bounds, decoding requests, its
  description in GET /metadata and /docs, and how a predict file's cells become request values;
- a slot for its drift profile (`profile`), which monitoring fills.
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Any, Callable, ClassVar, Optional, Protocol

import numpy as np
import pandas as pd
import pyarrow as pa

from orchestrator.errors import shown_value

if TYPE_CHECKING:
    from pathlib import Path

    from orchestrator.spec import DataSpec, JobSpec

FLOAT32_MAX = float(np.finfo(np.float32).max)


@dataclass
class Columns:
    """What the schema check settled: the input kind, the columns its inputs are made from, the task."""

    task: str
    kind: str
    inputs: list[str]  # the columns the inputs are made from (the label aside)
    numeric: list[str] = field(default_factory=list)  # table: numeric feature columns
    categorical: list[str] = field(default_factory=list)  # table: one-hot encoded feature columns
    auto_categorical: list[str] = field(default_factory=list)  # table: string columns not listed in data.categorical
    form: str = ""  # how the input column holds its values, for a kind with several forms (image: array | path | bytes)


@dataclass
class ColumnCheck:
    """What a kind's column check works with: the spec, the source, its column types and the task
    (settled from the label before the kind is asked). `need(column, field)` returns a column's
    type or records it as missing; `refuse_missing()` raises a DataError for every missing one."""

    spec: JobSpec
    src: str
    types: dict[str, pa.DataType]
    task: str
    need: Callable[[str, str], pa.DataType]
    refuse_missing: Callable[[], None]
    locate_non_utf8: Callable[[str], Optional[str]]  # "file: row N" of a column's first cell that is not UTF-8
    missing: list[str] = field(default_factory=list)  # what `need` found missing so far ("column 'x' (data.label) not found")


class TrainSplit(Protocol):
    """The training split as a kind's `fit` reads it; data/ingest.py gives it, over a Ray Dataset or,
    for a small file, a pandas DataFrame on the driver (the same answers either way)."""

    spec: JobSpec
    columns: Columns
    src: str

    def values(self, col: str) -> list: ...

    def per_batch(self, fn: Callable, columns: Optional[list[str]], **kwargs: Any) -> list[dict]: ...

    def sums(self, fn: Callable, columns: Optional[list[str]], names: list[str], **kwargs: Any) -> dict: ...

    def statistics(self) -> dict: ...


@dataclass
class OrderedSplits:
    """What `prepare_ordered` gives back: the fitted state, the label column of the examples it made,
    those examples per split (train, validation, test) and what the label standardises with."""

    state: InputKind
    label: str
    frames: dict[str, pd.DataFrame]
    target_mean: float
    target_std: float
    train_rows: int


class RequestTooLarge(ValueError):
    """A request's inputs together are more than one request may hold (the server answers 413)."""


Where = Callable[..., str]  # (record index, *field) -> the field's name in the request body, e.g. records[2].image


@dataclass
class InputKind(ABC):
    name: ClassVar[str]  # the kind's name, also its section's field under data (data.<name>)
    section: ClassVar[Optional[type]] = None  # the pydantic model of data.<name>; None: table (data.features)
    section_description: ClassVar[str] = ""  # the description of data.<name> in the spec's schema
    steps: ClassVar[bool] = False  # inputs carry "len", each row's real steps (rnn and transformer read these kinds)
    token_ids: ClassVar[bool] = False  # "x" holds int64 token ids (else float32 values)
    ordered: ClassVar[bool] = False  # examples are made from the whole source in order and split in time (prepare_ordered)

    # ---------------------------------------------------------------- spec and source columns
    @classmethod
    def section_of(cls, data: DataSpec) -> Any:
        """This kind's section of the spec's data (None for table)."""
        return getattr(data, cls.name, None)

    @classmethod
    def source_columns(cls, data: DataSpec) -> list[tuple[str, str]]:
        """(column, field path) of every column the kind reads from the source."""
        section = cls.section_of(data)
        return [(section.column, f"data.{cls.name}.column")]

    @classmethod
    def check_columns(cls, check: ColumnCheck) -> Columns:
        """The kind's columns checked against the source's schema: a missing one is reported with
        a missing label (check.refuse_missing), then each column's type by `check_type`."""
        read = cls.source_columns(check.spec.data)
        types = [check.need(col, where) for col, where in read]
        check.refuse_missing()
        form = cls.check_type(check, read[0][0], types[0])
        return Columns(task=check.task, kind=cls.name, inputs=[read[0][0]], form=form)

    @classmethod
    def check_type(cls, check: ColumnCheck, column: str, t: pa.DataType) -> str:
        """Refuse (DataError naming the column) a column type the kind cannot read; the form it reads it in."""
        return ""

    @classmethod
    def row_check(cls, spec: JobSpec, columns: Columns, src: str) -> Optional[Callable[[Any, str], Optional[str]]]:
        """A check of one input cell before the data is split (the problem, or None), or None when
        the kind's cells need no such check (data/rows.py runs it over every row in file order)."""
        return None

    @classmethod
    def expands(cls, columns: Columns) -> bool:
        """Whether transforming can make far more data than the source holds (decoded image files):
        a small source of such a kind is still transformed in Ray Data's tasks, not on the driver."""
        return False

    # ----------------------------------------------------------------------------- fitting
    @classmethod
    @abstractmethod
    def fit(cls, train: TrainSplit) -> InputKind:
        """The kind's state fitted on the training split only."""

    @classmethod
    def prepare_ordered(cls, spec: JobSpec, src: str, df: pd.DataFrame) -> OrderedSplits:
        """For an `ordered` kind: examples and their chronological split from the whole source
        (`df`: its source_columns, in file order)."""
        raise NotImplementedError(f"input kind {cls.name} is not ordered")

    # ------------------------------------------------------------------ what the model sees
    @abstractmethod
    def columns(self) -> list[str]:
        """The input columns a row (or request record) holds."""

    @abstractmethod
    def input_shape(self) -> list[int]:
        """Shape of one row of "x" (at most: a batch with lengths may be trimmed to its longest row)."""

    def vocab(self) -> Optional[int]:
        """Token ids are below this (token_ids kinds); None otherwise."""
        return None

    def longest(self) -> Optional[int]:
        """The longest input in tokens or steps (kinds with steps); None otherwise."""
        return self.input_shape()[0] if self.steps else None

    def label_width(self) -> int:
        """Values a regression label holds per row (a forecast's horizon); 1 for most kinds."""
        return 1

    @abstractmethod
    def transform(self, df: pd.DataFrame, *, truncate: bool = True) -> dict[str, np.ndarray]:
        """The model's inputs for the rows of `df`: {"x"} or, for kinds with steps, {"x", "len"}.

        With `truncate=False` (serving) an input longer than the model takes is a ValueError
        instead of being cut. Every bad value is a ValueError naming the column (and the row)."""

    # ---------------------------------------------------------------------------- serving
    @abstractmethod
    def record_fields(self) -> dict[str, Any]:
        """The fields of one request record, for pydantic's create_model: {name: (type, Field(alias=column, ...))}."""

    @abstractmethod
    def example(self) -> dict[str, Any]:
        """A valid request record built from the fitted state alone."""

    @abstractmethod
    def describe(self) -> dict[str, Any]:
        """What a record holds, for GET /metadata "input": at least {"kind", "column"/"columns", "type"}."""

    @abstractmethod
    def note(self) -> str:
        """One sentence on the input for the server's OpenAPI description (/docs)."""

    def value_bounds(self) -> dict[str, tuple[float, float]]:
        """Per numeric column, the values whose standardised form fits in float32 (the model's input
        type); a value beyond would reach the network as inf. {} when the schema bounds them already."""
        return {}

    def for_requests(self) -> InputKind:
        """The state that transforms request records (an image model trained on file paths takes the
        files' bytes, so that a request can never make the server open a path)."""
        return self

    def decode_requests(self, records: list[dict], where: Where) -> list[dict]:
        """Decode validated records in place into what `transform` takes (e.g. base64 image files);
        returns field errors {"field", "type", "message"}; RequestTooLarge for a request over its limit."""
        return []

    def limits(self) -> dict[str, int]:
        """Per-request limits of this kind, for GET /metadata "limits"."""
        return {}

    def explain(self, message: str) -> str:
        """A transform's message about one served record, with what the client can do about it."""
        return message

    def frame(self, records: list[dict]) -> pd.DataFrame:
        """Request records (column -> value) as the frame `transform` reads: one object column per
        input column, so that a list-valued cell stays one value whatever the lists' lengths."""
        return pd.DataFrame({c: pd.Series([r.get(c) for r in records], dtype=object) for c in self.columns()})

    def rows_are_requests(self) -> bool:
        """Whether a row of the training source is a request as it is (not for a series' single
        points, nor for image paths that a request sends as files)."""
        return True

    # ------------------------------------------------------------------- predicting files
    def text_columns(self) -> tuple[str, ...]:
        """Columns a CSV must be read as text (a cell "007" or "NA" stays that string)."""
        return ()

    def path_column(self) -> Optional[str]:
        """The column that holds file paths relative to their data file's folder, if any."""
        return None

    def rooted(self, root: Optional[str]) -> InputKind:
        """The state with relative paths resolving against `root` (None: paths are taken as given)."""
        return self

    def coerce(self, df: pd.DataFrame) -> tuple[pd.DataFrame, dict[int, tuple[str, str]]]:
        """A predict file's cells as the model takes them, and {position: (column, message)} for each
        cell that cannot be (so one bad cell fails its row, not its column)."""
        return df, {}

    @classmethod
    def request_value(cls, info: dict, value: Any, file: Path, row: int) -> Any:
        """One input cell of a predict file as a request sends it, for a server whose GET /metadata
        "input" is `info` (the client has no checkpoint); an OrchestratorError names file and row."""
        return value

    # ---------------------------------------------------------------------------- monitoring
    def profile(self, df: pd.DataFrame) -> Optional[dict]:
        """The reference profile of this input over `df` (kilobytes, never raw rows), stored with the
        checkpoint for drift statistics; None until the kind defines one."""
        return None

    # ---------------------------------------------------------------------------- persistence
    def to_dict(self) -> dict[str, Any]:
        return {"kind": self.name, **asdict(self)}


# ------------------------------------------------------------------------------------ helpers


def number_check(bounds: list[tuple[float, float]]) -> Callable[[Any, int, int], Optional[str]]:
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


def standardised_bounds(means: list[float], stds: list[float]) -> list[tuple[float, float]]:
    """Per feature, the values whose (x - mean) / std fits in float32."""
    return [(m - FLOAT32_MAX * s, m + FLOAT32_MAX * s) for m, s in zip(means, stds)]


def is_list_type(t: pa.DataType) -> bool:
    return pa.types.is_list(t) or pa.types.is_large_list(t) or pa.types.is_fixed_size_list(t)


def is_number_type(t: pa.DataType) -> bool:
    return pa.types.is_integer(t) or pa.types.is_floating(t)


def is_text_type(t: pa.DataType) -> bool:
    if pa.types.is_dictionary(t):
        t = t.value_type
    return pa.types.is_string(t) or pa.types.is_large_string(t) or pa.types.is_string_view(t)


def list_cell(v: Any, file: Path, row: int, column: str) -> Any:
    """A list-valued cell of a predict file: a list as it is (JSON, Parquet list columns), a CSV
    cell's JSON-encoded list decoded."""
    import json

    from orchestrator.errors import OrchestratorError

    if isinstance(v, str):
        try:
            return json.loads(v)
        except ValueError:
            raise OrchestratorError(
                f"{file}: row {row}, column {column!r}: expected a JSON list such as [1.5, 2.0], got {v[:40]!r}"
            ) from None
    return v
