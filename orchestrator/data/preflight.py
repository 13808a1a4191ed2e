"""The spec's data checked before Ray starts: `validate` reports its problems beside the spec's own,
and `run`/`train` refuse a job with any of them within seconds instead of after Ray's start.

What is checked, with no Ray and without reading the rows: the source exists and its files are of
data.format (check_source_files); its schema, read from the Parquet footers or the first block of
the first CSV file, has the label and every input column with a usable type (check_columns, every
problem at once); there are rows enough for each split, and two classes or more for a
classification (the label column alone is read, for sources up to LABEL_READ_MAX_BYTES); every
local image file that an image-path column names exists (that column alone is read, for the same
sources; whether each file decodes is checked when it is read). A
source behind a URI is checked where it can be reached from here; where it cannot (no credentials
on this machine, a network only the cluster reaches), that is a note, not a problem: the job's own
read checks it again.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Optional

import pyarrow as pa

from orchestrator.data import kinds
from orchestrator.data.checks import (
    EXTENSIONS,
    Columns,
    check_columns,
    check_source_files,
    csv_problem,
)
from orchestrator.data.files import Listing, list_source
from orchestrator.data.preprocess import SPLITS
from orchestrator.errors import DataError, one_line
from orchestrator.spec import JobSpec, is_uri, resolve_source

LABEL_READ_MAX_BYTES = 1 << 30  # larger sources: the class count is left to the job's own read
MISSING_SHOWN = 5


@dataclass
class DataCheck:
    source: str
    problems: list[str] = field(default_factory=list)  # each names the file (and column)
    notes: list[str] = field(default_factory=list)  # what was not checked, and why
    rows: Optional[int] = None
    columns: Optional[Columns] = None

    @property
    def ok(self) -> bool:
        return not self.problems


def check_data(spec: JobSpec) -> DataCheck:
    src = resolve_source(spec)
    d = spec.data
    out = DataCheck(source=src)
    if d.prepare and not is_uri(src) and not os.path.exists(src):
        out.notes.append(f"{src}: written by data.prepare {d.prepare} when the job runs (the project's own data): not checked")
        return out
    if not is_uri(src) and not os.path.exists(src):
        out.problems.append(f"{src}: data file not found (data.source in the spec)")
        return out
    listing: Optional[Listing] = None
    try:
        listing = list_source(src)  # once: every check below reads this listing
    except Exception as e:
        list_error = e
    try:
        if check_source_files(src, d.file_format, listing) is None and is_uri(src):
            out.notes.append(f"{src}: cannot be listed from here; the job checks it when it reads it")
            return out
        if listing is None:  # a local source that cannot be listed (no rights...): pyarrow's reason
            raise list_error
        schema, rows = _schema_and_rows(listing, d.file_format)
    except DataError as e:
        out.problems += e.problems
        return out
    except Exception as e:  # unreachable store, no credentials here, a file pyarrow cannot open
        if is_uri(src):
            out.notes.append(f"{src}: cannot be read from here ({one_line(e, 160)}); the job checks it when it reads it")
        else:
            out.problems.append(f"{src}: cannot read as {d.format}: {one_line(e, 200)}")
        return out
    out.rows = rows
    try:
        out.columns = check_columns(spec, src, schema)
    except DataError as e:
        out.problems += e.problems
        return out
    readable = listing.bytes <= LABEL_READ_MAX_BYTES  # a column is read alone for sources up to this size
    if not kinds.get(out.columns.kind).ordered:  # a series is split into windows in time order, checked when it is read
        out.problems += _split_problems(spec, src, rows)
        if out.columns.task == "classification" and readable:
            out.problems += _class_problems(spec, listing)
    if out.columns.kind == "image" and out.columns.form == "path" and readable:
        out.problems += _missing_image_files(spec, listing, out.columns.inputs[0])
    return out


def parquet_dataset(listing: Listing):
    """The source as pyarrow sees it, with hive-style `key=value` folders as columns (as Ray Data
    reads them), from its listing (hidden files already left out) rather than listing it again."""
    import pyarrow.dataset as pads

    if not listing.is_dir:
        return pads.dataset(listing.path, filesystem=listing.fs, format="parquet")
    return pads.dataset(
        [f.path for f in listing.files], filesystem=listing.fs, format="parquet", partitioning="hive", partition_base_dir=listing.path
    )


def _schema_and_rows(listing: Listing, fmt: str) -> tuple[pa.Schema, Optional[int]]:
    """The schema Ray Data will see, and the row count where the files' metadata holds it (Parquet)."""
    src = listing.src
    if fmt == "parquet":
        dataset = parquet_dataset(listing)
        return dataset.schema, dataset.count_rows()
    import pyarrow.csv as pacsv

    files = listing.entries()
    if not files:
        raise DataError(f"{src}: no {'/'.join('.' + e for e in EXTENSIONS[fmt])} files")
    shown_path, fs, path = files[0]
    # what Ray Data's CSV reader does: one thread, the first block's types
    try:
        with fs.open_input_stream(path, compression="detect") as f:
            return pacsv.open_csv(f, read_options=pacsv.ReadOptions(use_threads=False)).schema, None
    except pa.ArrowInvalid as e:  # a parse error in the first block: pyarrow's own words, with the row
        raise DataError(f"{shown_path}: cannot read as CSV: {csv_problem(src, path) or one_line(e, 200)}") from None


def _split_problems(spec: JobSpec, src: str, rows: Optional[int]) -> list[str]:
    if rows is None:
        return []
    if rows == 0:
        return [f"{src}: no rows"]
    fractions = (spec.data.split.train, spec.data.split.validation, spec.data.split.test)
    short = [f"{name} {frac:g} x {rows} = {rows * frac:.1f}" for name, frac in zip(SPLITS, fractions) if frac and rows * frac < 1]
    if short:
        return [f"{src}: {rows} rows are too few for data.split ({', '.join(short)} rows): every split needs rows"]
    return []


def _class_problems(spec: JobSpec, listing: Listing) -> list[str]:
    """Two classes or more in the label column (read alone), for sources up to LABEL_READ_MAX_BYTES."""
    label, src = spec.data.label, listing.src
    try:
        values = set(_label_values(spec, listing, label))
    except Exception:  # the column's own read reports what is wrong with it
        return []
    if not values:
        return [f"{src}: column {label!r} (data.label) holds no values: nothing to learn"]
    if len(values) == 1:
        return [f"{src}: column {label!r} (data.label) holds one class only ({next(iter(values))!r}); a classification needs two or more"]
    weights = spec.train.class_weights
    if isinstance(weights, dict):
        known = {str(v) for v in values}
        unknown = [k for k in weights if str(k) not in known]
        if unknown:
            return [
                f"{src}: train.class_weights names {', '.join(repr(k) for k in unknown)}, no value of column {label!r} "
                f"(data.label); its values: {', '.join(repr(v) for v in sorted(values, key=str)[:20])}"
            ]
    return []


def _missing_image_files(spec: JobSpec, listing: Listing, column: str) -> list[str]:
    """Local image files the column names that do not exist (the first MISSING_SHOWN, and how many)."""
    from orchestrator.data.files import image_root
    from orchestrator.data.images import resolve_image_path

    src = listing.src
    root = image_root(src)
    try:
        values = _column(spec, listing, column).to_pylist()
    except Exception:  # the column's own read reports what is wrong with it
        return []
    missing, problems = [], []
    for v in values:
        if not isinstance(v, str) or is_uri(v):
            continue  # a null is reported by the job's read; a URI's object is read where the job runs
        try:
            path = resolve_image_path(v, root)
        except ValueError as e:
            problems.append(f"{e} (column {column!r})")
            continue
        if not is_uri(path) and not os.path.exists(path):
            missing.append(path)
    if missing:
        more = f" (and {len(missing) - MISSING_SHOWN} more of {len(values)} rows)" if len(missing) > MISSING_SHOWN else ""
        problems.append(f"{src}: image file not found (column {column!r}): {', '.join(missing[:MISSING_SHOWN])}{more}")
    return problems[: MISSING_SHOWN + 1]


def _csv_columns(listing: Listing, column: str):
    """One column of each CSV file of the source, file by file."""
    import pyarrow.csv as pacsv

    for _, fs, path in listing.entries():
        with fs.open_input_stream(path, compression="detect") as f:
            yield pacsv.read_csv(
                f, read_options=pacsv.ReadOptions(use_threads=False), convert_options=pacsv.ConvertOptions(include_columns=[column])
            ).column(column)


def _column(spec: JobSpec, listing: Listing, column: str) -> pa.ChunkedArray:
    if spec.data.format == "parquet":
        return parquet_dataset(listing).to_table(columns=[column]).column(column)
    return pa.chunked_array([c.cast(pa.string()) for col in _csv_columns(listing, column) for c in col.chunks], type=pa.string())


def _label_values(spec: JobSpec, listing: Listing, label: str) -> list:
    if spec.data.format == "parquet":
        return parquet_dataset(listing).to_table(columns=[label]).column(label).drop_null().unique().to_pylist()
    values: set = set()
    for col in _csv_columns(listing, label):
        values |= set(col.drop_null().unique().to_pylist())
        if len(values) > 1 and not isinstance(spec.train.class_weights, dict):  # a map's labels: every file's
            break
    return list(values)
