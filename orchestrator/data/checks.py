"""Checks of a dataset against its spec that need no Ray: the source's files and the columns'
types. `run` and `train` make them before Ray starts, `validate` with the spec's own checks
(data/preflight.py); Ray Data's read (ingest.py) makes them again on what it reads."""

from __future__ import annotations

from collections import Counter
from typing import Optional

import pyarrow as pa

from orchestrator.data import kinds
from orchestrator.data.files import Listing, list_source, shown
from orchestrator.data.kinds.base import ColumnCheck, Columns
from orchestrator.data.rows import locate_non_utf8
from orchestrator.errors import DataError
from orchestrator.spec import FORMAT_EXTENSIONS, JobSpec, is_uri, task_problems

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
    kind = kinds.for_spec(d)
    check = ColumnCheck(
        spec=spec,
        src=src,
        types=types,
        task=task or "",  # unknown only when the label is missing: refuse_missing reports that first
        need=need,
        refuse_missing=refuse_missing,
        locate_non_utf8=lambda column: locate_non_utf8(spec, src, column),
        missing=missing,
    )
    return kind.check_columns(check)


# ------------------------------------------------------------------------- split, fit, transform
