"""Checks of a dataset against its spec that need no Ray: the source's files and the columns'
types. `run` and `train` make them before Ray starts, `validate` with the spec's own checks
(data/preflight.py); Ray Data's read (ingest.py) makes them again on what it reads."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from typing import Optional

import pyarrow as pa

from orchestrator.data.files import Listing, list_source, shown
from orchestrator.data.rows import locate_non_utf8
from orchestrator.errors import DataError
from orchestrator.spec import FORMAT_EXTENSIONS, JobSpec, is_uri, task_problems

MAX_AUTO_CATEGORIES = 1000  # a string column with more distinct values is more likely an id than a category


@dataclass
class Columns:
    """What the schema check settled: feature columns by kind and the task."""

    task: str
    numeric: list[str]
    categorical: list[str]
    image: Optional[str]
    auto_categorical: list[str] = field(default_factory=list)  # string columns not listed in data.categorical
    image_source: str = "array"  # array | path | bytes, from the image column's Arrow type
    text: Optional[str] = None
    sequence: Optional[str] = None
    series: Optional[str] = None

    @property
    def inputs(self) -> list[str]:
        """The columns the inputs are made from (the label aside)."""
        one = self.image or self.text or self.sequence or self.series
        return [one] if one else self.numeric + self.categorical


# The file name endings each format reads. Ray Data's own filter skips other files without a
# word: a folder of Parquet and CSV read as Parquet silently lost the CSV rows, and `.pq`
# (which the spec accepts as Parquet) was "no files found".
EXTENSIONS = FORMAT_EXTENSIONS


def check_source_files(src: str, fmt: str, listing: Optional[Listing] = None) -> Optional[bool]:
    """Refuse, on the driver and before any Ray task, what Ray Data would skip or misreport.

    A folder must hold only `fmt` files (hidden ones aside), and no data file may be empty
    (Ray Data calls a 0-byte Parquet file "no files found" and fails on a 0-byte CSV with
    tracebacks). Returns whether `src` is a folder, or None when it cannot be listed (Ray
    Data then reports what it finds). `listing`: the source already listed.
    """
    try:
        listing = listing or list_source(src)
    except Exception:  # no rights to list, an unknown scheme...: the read itself will say
        return None
    is_dir, files = listing.is_dir, listing.files
    exts = EXTENSIONS[fmt]
    if is_dir:
        kinds = Counter(_kind(f.base_name, exts) for f in files)
        ours = sum(n for k, n in kinds.items() if k[1:] in exts)
        if ours < len(files):
            found = " and ".join(f"{n} {k} file{'s' * (n != 1)}" for k, n in kinds.most_common())
            raise DataError(
                f"{src}: the folder holds {found}; data.format {fmt} reads only "
                f"{'/'.join('.' + e for e in exts)} files: move the others out, or point data.source at one file"
            )
        if not ours:
            raise DataError(f"{src}: the folder holds no {'/'.join('.' + e for e in exts)} files (data.format {fmt})")
    for f in files:
        if f.size == 0:
            raise DataError(f"{shown(src, f.path)}: empty file (0 bytes), not a {fmt} file")
    return is_dir


def _kind(name: str, exts: tuple) -> str:
    name = name.lower()
    ext = next((e for e in exts if name.endswith("." + e)), None) or (name.rsplit(".", 1)[1] if "." in name else None)
    return f".{ext}" if ext else "(no extension)"


def csv_problem(src: str, path: str) -> Optional[str]:
    """pyarrow's own parse error for one CSV file, e.g. "Row #8: Expected 3 columns, got 4: 1,2,3,4"."""
    import pyarrow.csv as pacsv
    import pyarrow.fs as pafs

    try:
        fs = pafs.FileSystem.from_uri(src)[0] if is_uri(src) else pafs.LocalFileSystem()
        with fs.open_input_stream(path, compression="detect") as f:
            # one thread, so that pyarrow numbers the rows
            for _ in pacsv.open_csv(f, read_options=pacsv.ReadOptions(use_threads=False)):
                pass
    except Exception as e:
        return str(e).removeprefix("CSV parse error: ")
    return None


def check_columns(spec: JobSpec, src: str, schema: pa.Schema) -> Columns:
    """The columns the spec reads, checked against the source's schema. A missing label and missing
    or unusable features are reported together (DataError.problems), each naming the file."""
    types = dict(zip(schema.names, schema.types))
    d = spec.data
    missing: list[str] = []

    def need(col: str, what: str) -> pa.DataType:
        if col not in types:
            missing.append(f"column {col!r} ({what}) not found")
            return pa.null()
        return types[col]

    def refuse_missing() -> None:
        if missing:
            problems = [f"{src}: {m}" for m in missing]
            problems[-1] += f"; the file has {sorted(types)}"
            raise DataError("; ".join(problems), problems=problems)

    label_field = "data.series.column" if d.series is not None else "data.label"  # a series forecasts its own column
    label_type = need(d.label, label_field)
    task = "regression" if d.series is not None else d.task  # a series forecasts numbers
    if task is None and not missing:
        task = "regression" if pa.types.is_floating(label_type) else "classification"
        # Only now is the task known: refuse metrics of the other task before anything trains.
        problems = task_problems(
            spec, task, f"the label column {d.label!r} has type {label_type}, so the task is {task} (data.task can set it)"
        )
        if problems:
            raise DataError(f"{src}: " + "; ".join(problems), problems=[f"{src}: {p}" for p in problems])
    if task == "regression" and not missing and not (pa.types.is_integer(label_type) or pa.types.is_floating(label_type)):
        what = "a series must hold numbers" if d.series is not None else "regression needs a numeric label"
        raise DataError(f"{src}: column {d.label!r} ({label_field}) has type {label_type}; {what}")
    if any(k is not None for k in (d.image, d.text, d.sequence, d.series)):
        # one input column: a missing label is reported with it
        col, what = next(
            (getattr(d, k).column, f"data.{k}.column") for k in ("image", "text", "sequence", "series") if getattr(d, k) is not None
        )
        need(col, what)
        if d.series is not None:
            need(d.series.order_by, "data.series.order_by")
        refuse_missing()

    if d.image is not None:
        t = need(d.image.column, "data.image.column")
        if is_list_type(t) and is_number_type(t.value_type):
            source = "array"
        elif is_text_type(t):
            source = "path"
        elif pa.types.is_binary(t) or pa.types.is_large_binary(t) or pa.types.is_binary_view(t):
            source = "bytes"
        else:
            raise DataError(
                f"{src}: column {d.image.column!r} (data.image.column) has type {t}; it must be a list of numbers, "
                "an image file path (a string) or an encoded image file (binary)"
            )
        if source != "array" and d.image.shape[0] not in (1, 3, 4):
            raise DataError(
                f"{src}: data.image.shape {d.image.shape}: image files decode to 1 (grey), 3 (RGB) or 4 (RGBA) channels, "
                f"not {d.image.shape[0]}"
            )
        return Columns(task=task, numeric=[], categorical=[], image=d.image.column, image_source=source)
    if d.text is not None:
        t = need(d.text.column, "data.text.column")
        if not is_text_type(t):
            if pa.types.is_binary(t) or pa.types.is_large_binary(t):  # what pyarrow makes of a CSV column that is not UTF-8
                where = locate_non_utf8(spec, src, d.text.column)
                raise DataError(
                    f"{where or src}: column {d.text.column!r} (data.text.column) holds bytes that are not UTF-8 text; "
                    "save the file as UTF-8"
                )
            raise DataError(f"{src}: column {d.text.column!r} (data.text.column) has type {t}; it must hold strings")
        return Columns(task=task, numeric=[], categorical=[], image=None, text=d.text.column)
    if d.sequence is not None:
        t = need(d.sequence.column, "data.sequence.column")
        inner = t.value_type if is_list_type(t) else None
        if inner is not None and is_list_type(inner):
            inner = inner.value_type
        if inner is None or not is_number_type(inner):
            raise DataError(
                f"{src}: column {d.sequence.column!r} (data.sequence.column) has type {t}; it must hold lists of numbers "
                "or lists of equal-length vectors (lists of numbers)"
            )
        return Columns(task=task, numeric=[], categorical=[], image=None, sequence=d.sequence.column)
    if d.series is not None:
        t = need(d.series.column, "data.series.column")
        if not is_number_type(t):
            raise DataError(f"{src}: column {d.series.column!r} (data.series.column) has type {t}; a series must hold numbers")
        need(d.series.order_by, "data.series.order_by")
        return Columns(task="regression", numeric=[], categorical=[], image=None, series=d.series.column)

    features = d.features if d.features is not None else [c for c in schema.names if c != d.label]
    numeric, categorical, auto, unusable = [], [], [], []
    for col in features:
        if col not in types:
            need(col, "data.features")
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
        problems = [f"{src}: {m}" for m in missing] + unusable
        raise DataError("; ".join(problems), problems=problems)
    refuse_missing()
    return Columns(task=task, numeric=numeric, categorical=categorical, image=None, auto_categorical=auto)


def is_list_type(t: pa.DataType) -> bool:
    return pa.types.is_list(t) or pa.types.is_large_list(t) or pa.types.is_fixed_size_list(t)


def is_number_type(t: pa.DataType) -> bool:
    return pa.types.is_integer(t) or pa.types.is_floating(t)


def is_text_type(t: pa.DataType) -> bool:
    if pa.types.is_dictionary(t):
        t = t.value_type
    return pa.types.is_string(t) or pa.types.is_large_string(t) or pa.types.is_string_view(t)


# ------------------------------------------------------------------------- split, fit, transform
