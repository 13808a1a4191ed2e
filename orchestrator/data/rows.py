"""Every input row checked in file order before the data is split, so that a bad value is named by
its file, its row in that file and its column, never by its position inside a split or a batch.

Rows are counted from 0 in the order the file holds them, as pandas counts them (a CSV's header is
not a row). Only the input column and the label are read. What is checked here needs no decoding
and no fitted state: a missing, mis-typed, empty or whitespace-only text; a sequence that is not a
list of numbers or of equal-length vectors, holds a missing or non-finite value, or is longer than
MAX_SEQUENCE_STEPS without data.sequence.max_length; an image path or bytes cell that is missing,
empty or of the wrong type, image bytes whose header no image format reads, or a relative path that
climbs out of the data's folder. (Table features are checked per column, with counts, where their
statistics are computed.) Image files are not opened here: their
errors name the file; bytes that fail only when their pixels are decoded (a truncated file) are
found again in file order after the failure (`locate_image_bytes`). Missing labels are counted, not refused.

Sources up to SCAN_MAX_BYTES are scanned whole; a larger one is left to the transforms' own
checks (which name the column and the cause, and the row only within its batch), so that a
multi-gigabyte source is not read twice.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Callable, Iterator, Optional

import numpy as np
import pandas as pd
import pyarrow as pa

from orchestrator.data.files import image_root, list_files, source_bytes
from orchestrator.data.preprocess import decode_image, image_header_problem, resolve_image_path
from orchestrator.errors import DataError, shown_value
from orchestrator.spec import JobSpec

SCAN_MAX_BYTES = 1 << 30
# Without data.sequence.max_length every row is padded to the longest one: a single row of 200000
# steps made every batch [rows, 200000, features] and no epoch finished. Beyond this the spec must
# say how long a row may be (longer rows then keep their most recent steps).
MAX_SEQUENCE_STEPS = 4096
BATCH_ROWS = 8192


@dataclass
class RowCounts:
    """What the scan counted: rows read, and rows without a label (left out of every split)."""

    rows: int = 0
    missing_labels: int = 0


def _missing(v: Any) -> bool:
    return v is None or v is pd.NA or v is pd.NaT or (isinstance(v, float) and math.isnan(v))


def text_problem(v: Any) -> Optional[str]:
    if _missing(v):
        return "missing text (every row needs one)"
    if not isinstance(v, str):
        return f"expected text, got {type(v).__name__} {shown_value(v)}"
    if not v:
        return "missing or empty text (every row needs one; a CSV holds a missing text as an empty one)"
    if not v.strip():
        return "whitespace-only text (it has nothing to predict from; serving refuses it too)"
    return None


class _SequenceCheck:
    """A row's own problems, then the width of its steps against the first row's."""

    def __init__(self, max_length: Optional[int]):
        self.max_length = max_length
        self.width: Optional[tuple[int, str]] = None  # (values per step, where that was first seen)

    def __call__(self, v: Any, where: str) -> Optional[str]:
        from orchestrator.data.sequences import SequenceInputError, row_array

        if _missing(v):
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


def _image_check(source: str, root: Optional[str]) -> Callable[[Any, str], Optional[str]]:
    def check(v: Any, where: str) -> Optional[str]:
        if source == "path":
            if _missing(v) or v == "":
                return "missing image file path (an empty cell)"
            if not isinstance(v, str) or not v.strip():
                return f"expected an image file path, got {shown_value(v)}"
            try:
                resolve_image_path(v, root)
            except ValueError as e:
                return str(e)
            return None
        if _missing(v):
            return "missing image (no bytes)"
        if not isinstance(v, (bytes, bytearray)):
            return f"expected encoded image bytes, got {type(v).__name__}"
        if not v:
            return "empty image bytes (0 bytes: no image file)"
        return image_header_problem(bytes(v))

    return check


def _batches(fs, path: str, fmt: str, columns: list[str]) -> Iterator[pa.Table]:
    if fmt == "parquet":
        import pyarrow.parquet as pq

        with fs.open_input_file(path) as f:
            pf = pq.ParquetFile(f)
            names = [c for c in columns if c in pf.schema_arrow.names]
            for b in pf.iter_batches(batch_size=BATCH_ROWS, columns=names):
                yield pa.Table.from_batches([b])
        return
    import pyarrow.csv as pacsv

    with fs.open_input_stream(path, compression="detect") as f:
        reader = pacsv.open_csv(
            f,
            read_options=pacsv.ReadOptions(use_threads=False),
            convert_options=pacsv.ConvertOptions(include_columns=columns, include_missing_columns=True),
        )
        for b in reader:
            yield pa.Table.from_batches([b])


def _source_tables(spec: JobSpec, src: str, columns: list[str], table: Optional[pa.Table]) -> Iterator[tuple[str, int, pa.Table]]:
    """(file as shown, the row in that file of the batch's first row, batch) over the source in file order."""
    if table is not None:
        yield src, 0, table.select([c for c in columns if c in table.column_names])
        return
    for shown, fs, path in list_files(src):
        start = 0
        for t in _batches(fs, path, spec.data.format, columns):
            yield shown, start, t
            start += t.num_rows


def _check_for(spec: JobSpec, cols, src: str) -> Optional[tuple[str, Callable[[Any, str], Optional[str]]]]:
    """(column, check of one cell) for the spec's input kind, or None when its cells need no row check."""
    d = spec.data
    if cols.text:
        return cols.text, lambda v, where: text_problem(v)
    if cols.sequence:
        return cols.sequence, _SequenceCheck(d.sequence.max_length)
    if cols.image and cols.image_source in ("path", "bytes"):
        return cols.image, _image_check(cols.image_source, image_root(src))
    return None


def scan_rows(spec: JobSpec, src: str, cols, table: Optional[pa.Table] = None) -> Optional[RowCounts]:
    """Check every row's input cells in file order (DataError naming file, row and column) and count
    the rows without a label. None when the source is larger than SCAN_MAX_BYTES (not scanned)."""
    if table is None and (source_bytes(src) or SCAN_MAX_BYTES + 1) > SCAN_MAX_BYTES:
        return None
    label = spec.data.label
    check = _check_for(spec, cols, src)
    columns = list(dict.fromkeys(([check[0]] if check else []) + [label]))
    counts = RowCounts()
    for file, start, t in _source_tables(spec, src, columns, table):
        counts.rows += t.num_rows
        if label in t.column_names:
            counts.missing_labels += _missing_count(t.column(label))
        if check:
            column, fn = check
            values = t.column(column).to_pylist()
            labels = t.column(label).to_pylist() if label in t.column_names else [0] * len(values)
            for j, v in enumerate(values):
                if _missing(labels[j]):
                    continue  # a row without a label is left out, whatever its input holds
                problem = fn(v, f"row {start + j}")
                if problem:
                    raise DataError(f"{file}: row {start + j}, column {column!r}: {problem}")
    return counts


def _missing_count(col: pa.ChunkedArray) -> int:
    """Nulls, and NaN in a float column (pandas' notna drops both)."""
    if not pa.types.is_floating(col.type):
        return col.null_count
    return int(np.isnan(col.to_numpy(zero_copy_only=False)).sum())  # nulls come out as NaN


def locate_image_bytes(spec: JobSpec, src: str, column: str, table: Optional[pa.Table] = None) -> Optional[str]:
    """After a decoding failure of an image bytes column: the first row, in file order, whose bytes do
    not decode ("file: row N, column C: cause"), or None when none is found (or too large to look)."""
    if table is None and (source_bytes(src) or SCAN_MAX_BYTES + 1) > SCAN_MAX_BYTES:
        return None
    for file, start, t in _source_tables(spec, src, [column], table):
        for j, v in enumerate(t.column(column).to_pylist()):
            if not isinstance(v, (bytes, bytearray)) or not v:
                continue  # scan_rows has refused those already
            try:
                decode_image(bytes(v), spec.data.image.shape, "")
            except ValueError as e:
                return f"{file}: row {start + j}, column {column!r}: {str(e).removeprefix(': ')}"
    return None


def locate_non_utf8(spec: JobSpec, src: str, column: str) -> Optional[str]:
    """ "file: row N" of the first cell of `column` that is not UTF-8 text, or None."""
    try:
        for file, start, t in _source_tables(spec, src, [column], None):
            for j, v in enumerate(t.column(column).to_pylist()):
                if isinstance(v, (bytes, bytearray)):
                    try:
                        v.decode("utf-8")
                    except UnicodeDecodeError as e:
                        return f"{file}: row {start + j} (byte {e.start} of the cell)"
    except Exception:  # unreadable here: the caller names the source alone
        return None
    return None
