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

from dataclasses import dataclass
from typing import Any, Callable, Iterator, Optional

import numpy as np
import pyarrow as pa

from orchestrator.data import kinds
from orchestrator.data.files import list_files, source_bytes
from orchestrator.data.images import decode_image
from orchestrator.data.kinds.base import Columns
from orchestrator.data.values import is_missing
from orchestrator.errors import DataError
from orchestrator.spec import JobSpec

SCAN_MAX_BYTES = 1 << 30
BATCH_ROWS = 8192


@dataclass
class RowCounts:
    """What the scan counted: rows read, and rows without a label (left out of every split)."""

    rows: int = 0
    missing_labels: int = 0


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
        for t in _batches(fs, path, spec.data.file_format, columns):
            yield shown, start, t
            start += t.num_rows


def _check_for(spec: JobSpec, cols: Columns, src: str) -> Optional[tuple[str, Callable[[Any, str], Optional[str]]]]:
    """(column, check of one cell) for the spec's input kind, or None when its cells need no row check."""
    check = kinds.get(cols.kind).row_check(spec, cols, src)
    return (cols.inputs[0], check) if check is not None else None


def scan_rows(spec: JobSpec, src: str, cols: Columns, table: Optional[pa.Table] = None) -> Optional[RowCounts]:
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
                if is_missing(labels[j]):
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
                decode_image(bytes(v), kinds.get("image").section_of(spec.data).shape, "")
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
