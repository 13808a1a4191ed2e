"""Ray Data ingest: read, check, split, fit preprocessing on train only, transform.

Every Ray Data operation asks for a fraction of a CPU (DATA_TASK_CPUS) so it can still be
scheduled while the training workers hold their share: on a 2-core machine Train and Data
would otherwise deadlock (see train/plan.py, which leaves room for these tasks). A small local
file skips Ray Data's tasks: the same functions run on the driver (read_on_driver).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import os
import re
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, Optional

import numpy as np
import pandas as pd
import pyarrow as pa
import ray
from ray.data.aggregate import Count, Mean, Std, Sum, Unique

from orchestrator import extensions
from orchestrator.data import kinds
from orchestrator.data.checks import EXTENSIONS, check_columns, check_source_files, csv_problem
from orchestrator.data.files import shown, source_bytes
from orchestrator.data.kinds.base import Columns, InputKind
from orchestrator.data.preprocess import SPLIT_COLUMN, SPLITS, Preprocessor, assign_splits
from orchestrator.data.rows import locate_image_bytes, scan_rows
from orchestrator.data.values import plain_value
from orchestrator.errors import DataError
from orchestrator.spec import JobSpec, is_uri, resolve_source

DATA_TASK_CPUS = 0.25
CACHE_MAX_BYTES = 1 << 30  # data.cache: auto keeps sources up to this size in the object store
MAX_SERIES_POINTS = 10_000_000  # an ordered source (a series) is read whole on the driver; beyond this it is refused


@dataclass
class PreparedData:
    source: str
    columns: Columns
    preprocessor: Preprocessor
    raw: dict[str, ray.data.Dataset]  # split name -> untransformed rows
    transformed: dict[str, ray.data.Dataset]  # split name -> {"x", "y"} rows
    notes: list[str] = field(default_factory=list)  # what the run should tell the user about the data (rows left out, ...)


# ------------------------------------------------------------------------------------ reading


def ensure_prepared(spec: JobSpec) -> str:
    """Resolve the source; run the spec's built-in prepare step if the file is not there yet."""
    src = resolve_source(spec)
    name = spec.data.prepare
    if name and not is_uri(src) and not os.path.exists(src):
        if name.startswith("sklearn:"):
            from orchestrator.data.bundled import write_bundled

            write_bundled(name, src)
        else:  # text:, series:, images: the offline corpora
            from orchestrator.data.corpora import write_corpus

            write_corpus(name, src)
    return src


def read_dataset(spec: JobSpec) -> tuple[str, ray.data.Dataset]:
    src = ensure_prepared(spec)
    if not is_uri(src) and not os.path.exists(src):
        raise DataError(f"{src}: data file not found (data.source in the spec)")
    fmt = spec.data.file_format
    is_dir = check_source_files(src, fmt)
    # In a folder only this format's files are read (check_source_files has refused a folder
    # holding others); a file named in data.source is read whatever its extension.
    exts = list(EXTENSIONS[fmt])
    if is_dir is False and "." in os.path.basename(src):
        exts.append(os.path.basename(src).rsplit(".", 1)[1])
    args = {"num_cpus": DATA_TASK_CPUS, "file_extensions": exts}
    with data_errors(src, fmt):
        ds = ray.data.read_parquet(src, **args) if fmt == "parquet" else ray.data.read_csv(src, **args)
        schema = ds.schema()
    if schema is None:
        raise DataError(f"{src}: no rows or no schema found")
    return src, ds


@contextmanager
def data_errors(src: str, fmt: str):
    """A failed Ray Data read or transform -> one DataError line naming the file and the cause.

    Ray Data reports the failure itself as well, on the console with two tracebacks and its
    retry advice; those records go to its log file only (`ray-data.log` in the session's logs),
    as do its INFO records unless Ray logs at INFO (--verbose).
    """
    from orchestrator.ray_internals import is_ray_data_log_file

    shown = logging.getLogger("ray").getEffectiveLevel()

    def not_errors(record: logging.LogRecord) -> bool:
        return shown <= record.levelno < logging.ERROR

    console = [h for h in logging.getLogger("ray.data").handlers if not is_ray_data_log_file(h)]
    for h in console:
        h.addFilter(not_errors)
    try:
        yield
    except DataError:
        raise
    except Exception as e:  # RayTaskError, ArrowInvalid, ValueError...: the message is what matters
        raise DataError(_describe_failure(src, fmt, e)) from None
    finally:
        for h in console:
            h.removeFilter(not_errors)


_CSV_FAILED = re.compile(r"Failed to read CSV file: (.+?)\. Please check")
_EXCEPTION_LINE = re.compile(r"^(?:\w+\.)*(\w*(?:Error|Exception)): (.+)$", re.M)
_RAY_NOISE = ("Failed to ", "To change retry attempts", "Please check the CSV file")


def _describe_failure(src: str, fmt: str, e: BaseException) -> str:
    chain = [e]
    while len(chain) < 20 and (nxt := getattr(chain[-1], "cause", None) or chain[-1].__cause__) is not None:
        chain.append(nxt)  # a RayTaskError keeps the task's exception as .cause
    cause = chain[-1]
    text = str(cause)
    m = _CSV_FAILED.search(text)
    if m:  # Ray Data's message drops pyarrow's; parse that one file again here to recover it
        path = m.group(1)
        return f"{shown(src, path)}: cannot read as CSV: {csv_problem(src, path) or 'unknown parse error'}"
    lines = [s.strip() for s in text.splitlines() if s.strip() and not s.strip().startswith(_RAY_NOISE)]
    reason = lines[0] if lines else type(cause).__name__
    if isinstance(cause, ray.exceptions.UserCodeException):
        # Our own transform refused a value. Ray Data wraps that error in "UDF failed to process
        # a data block." and only the remote traceback in the message still holds it.
        found = [m.group(2) for m in _EXCEPTION_LINE.finditer(str(e)) if m.group(1) != "UserCodeException"]
        return f"{src}: {found[0] if found else reason}"
    return f"{src}: cannot read as {fmt}: {reason}"


def _add_split(df: pd.DataFrame, *, seed: int, fractions: tuple, label: str, keep: list[str]) -> pd.DataFrame:
    df = df[keep]
    df = df[df[label].notna()]  # a row without a label can be neither learned nor scored
    return df.assign(**{SPLIT_COLUMN: assign_splits(df, seed, fractions)})


def _select_split(df: pd.DataFrame, *, code: int) -> pd.DataFrame:
    return df[df[SPLIT_COLUMN] == code].drop(columns=[SPLIT_COLUMN])


class TrainRows:
    """The training split as a kind's fit reads it (data/kinds/base.py, TrainSplit): a Ray Dataset,
    whose statistics Ray Data computes (one execution each), or a pandas DataFrame on the driver
    (prepared there, _prepare_on_driver). Both give the same answers, keyed as the Ray Data
    aggregations name them."""

    def __init__(self, train, spec: JobSpec, columns: Columns, src: str):
        self.frame = train if isinstance(train, pd.DataFrame) else None
        self.ds: Any = None if self.frame is not None else train
        self.spec, self.columns, self.src = spec, columns, src
        self._statistics: Optional[dict] = None

    def values(self, col: str) -> list:
        if self.frame is not None:
            return self.frame[col].tolist()
        return [r[col] for r in self.ds.select_columns([col]).take_all()]

    def per_batch(self, fn, columns: Optional[list[str]], **kwargs) -> list[dict]:
        """The rows `fn` (a batch function) returns over the split, or over `columns` of it."""
        if self.frame is not None:
            return fn(self.frame if columns is None else self.frame[columns], **kwargs).to_dict("records")
        ds = self.ds if columns is None else self.ds.select_columns(columns)
        return ds.map_batches(fn, fn_kwargs=kwargs, batch_format="pandas", num_cpus=DATA_TASK_CPUS).take_all()

    def sums(self, fn, columns: Optional[list[str]], names: list[str], **kwargs) -> dict:
        """{"sum(name)": ...} of the columns `names` of what `fn` returns over the split."""
        if self.frame is not None:
            out = fn(self.frame if columns is None else self.frame[columns], **kwargs)
            return {f"sum({n})": out[n].sum() if len(out) else None for n in names}
        ds = self.ds if columns is None else self.ds.select_columns(columns)
        return ds.map_batches(fn, fn_kwargs=kwargs, batch_format="pandas", num_cpus=DATA_TASK_CPUS).aggregate(*(Sum(n) for n in names))

    def statistics(self) -> dict:
        """Computed once, in one pass: the row count; per measured column (table numeric features, a
        regression label) its +/-inf and non-missing counts; per numeric column mean and std (ddof 0,
        missing values left out); per categorical column and a classification label the distinct
        values; a regression label's mean and std. An empty split, an infinite value or a measured
        column without values is a DataError."""
        if self._statistics is None:
            cols, d = self.columns, self.spec.data
            measured = cols.numeric + ([d.label] if cols.task == "regression" else [])
            stats = self._aggregate(
                cols.numeric + cols.categorical + [d.label], measured, cols.numeric, cols.categorical, d.label, cols.task
            )
            rows = int(stats["count()"] or 0)
            if rows == 0:
                raise DataError(f"{d.source}: the training split is empty (too few rows for data.split)")
            for c in measured:
                inf, n = int(stats[f"inf:{c}"] or 0), int(stats[f"n:{c}"] or 0)
                if inf:  # a scaler (or a loss) fitted on +/-inf is meaningless; missing values are imputed instead
                    raise DataError(
                        f"{self.src}: column {c!r} holds {inf} infinite values (+inf/-inf) among its {n} values in the training "
                        f"split ({inf / n:.0%}); replace or drop them (empty or NaN values are imputed with the training mean)"
                    )
                if n == 0:
                    raise DataError(f"{self.src}: column {c!r} has no values in the training split (all {rows} are missing)")
            self._statistics = stats
        return self._statistics

    def _aggregate(
        self, columns: list[str], measured: list[str], numeric: list[str], categorical: list[str], label: str, task: str
    ) -> dict:
        if self.frame is not None:
            return _frame_statistics(self.frame[columns], measured, numeric, categorical, label, task)
        target = self.ds.select_columns(columns)
        target = target.map_batches(_mark_infinite, fn_kwargs={"columns": measured}, batch_format="pandas", num_cpus=DATA_TASK_CPUS)
        aggs = [Count()]
        for c in measured:
            aggs += [Sum(f"__inf:{c}", alias_name=f"inf:{c}"), Count(c, ignore_nulls=True, alias_name=f"n:{c}")]
        for c in numeric:
            aggs += [Mean(c, ignore_nulls=True, alias_name=f"mean:{c}"), Std(c, ddof=0, ignore_nulls=True, alias_name=f"std:{c}")]
        for c in categorical:
            aggs.append(Unique(c, alias_name=f"uniq:{c}"))
        if task == "classification":
            aggs.append(Unique(label, alias_name="uniq:__label"))
        else:
            aggs += [Mean(label, alias_name="mean:__label"), Std(label, ddof=0, alias_name="std:__label")]
        return target.aggregate(*aggs)


def _frame_statistics(df: pd.DataFrame, measured: list[str], numeric: list[str], categorical: list[str], label: str, task: str) -> dict:
    """_TrainRows.statistics of a DataFrame, with pandas (NaN and None are the missing values, as Arrow nulls are)."""
    marked = _mark_infinite(df, columns=measured)  # booleans as 0/1, as on the Ray Data path
    stats: dict = {"count()": len(df)}
    for c in measured:
        stats[f"inf:{c}"], stats[f"n:{c}"] = int(marked[f"__inf:{c}"].sum()), int(marked[c].notna().sum())
    for c in numeric:
        stats[f"mean:{c}"], stats[f"std:{c}"] = marked[c].mean(), marked[c].std(ddof=0)
    for c in categorical:
        stats[f"uniq:{c}"] = list(df[c].dropna().unique())
    if task == "classification":
        stats["uniq:__label"] = list(df[label].dropna().unique())
    else:
        stats["mean:__label"], stats["std:__label"] = df[label].mean(), df[label].std(ddof=0)
    return stats


def fit_preprocessor(spec: JobSpec, cols: Columns, train) -> Preprocessor:
    """One pass over the training split only (`train`: a Ray Dataset or, on the driver, a DataFrame):
    the input kind's own fit, then the label's encoding."""
    d = spec.data
    split = TrainRows(train, spec, cols, resolve_source(spec))
    state = kinds.get(cols.kind).fit(split)
    stats = split.statistics()
    pre = Preprocessor(task=cols.task, label=d.label, input=state, train_rows=int(stats["count()"] or 0))
    if cols.task == "classification":
        pre.classes = sorted((plain_value(v) for v in stats["uniq:__label"]), key=lambda v: (str(type(v)), v))
        if len(pre.classes) < 2:
            raise DataError(f"{d.source}: column {d.label!r} has fewer than 2 classes in the training split")
        searched = spec.tune is not None and "train.class_weights" in spec.tune.space
        if spec.train.class_weights == "balanced" or searched:
            names = [f"__class{i}" for i in range(len(pre.classes))]
            counts = split.sums(_class_counts, [d.label], names, label=d.label, classes=pre.classes)
            pre.class_counts = [int(counts[f"sum({n})"] or 0) for n in names]
    else:
        pre.target_mean = float(stats["mean:__label"])
        pre.target_std = float(stats["std:__label"] or 1.0) or 1.0
    return pre


def _class_counts(df: pd.DataFrame, *, label: str, classes: list) -> pd.DataFrame:
    """One row: the batch's rows of each class, as columns __class0, __class1, ..."""
    values = df[label].map(plain_value)
    return pd.DataFrame({f"__class{i}": [int((values == c).sum())] for i, c in enumerate(classes)})


def _mark_infinite(df: pd.DataFrame, *, columns: list[str]) -> pd.DataFrame:
    """A 0/1 column per measured column, for counting +/-inf (Mean and Std would just return inf or NaN);
    boolean columns become 0.0/1.0, as the transform reads them (Ray Data's Std has no kernel for booleans)."""
    as_numbers = {c: df[c].to_numpy(dtype=np.float64, na_value=np.nan) for c in columns if pd.api.types.is_bool_dtype(df[c].dtype)}
    return df.assign(
        **as_numbers, **{f"__inf:{c}": np.isinf(df[c].to_numpy(dtype=np.float64, na_value=np.nan)).astype(np.int64) for c in columns}
    )


# Preprocessors built in this process, by preprocessor_key: a Ray Data task or worker transforms
# many batches with the same fitted state, and building it (for BPE, parsing the tokenizer) per
# batch cost more than some transforms.
_BUILT: dict[str, Preprocessor] = {}
_BUILT_MAX = 8


def preprocessor_key(pre: dict) -> str:
    """A digest of a fitted state (Preprocessor.to_dict()), computed once on the driver."""
    return hashlib.sha256(json.dumps(pre, sort_keys=True, default=str).encode()).hexdigest()


def cached_preprocessor(pre: dict, key: str) -> Preprocessor:
    if not key:
        return Preprocessor.from_dict(pre)
    p = _BUILT.get(key)
    if p is None:
        if len(_BUILT) >= _BUILT_MAX:
            _BUILT.clear()
        p = _BUILT[key] = Preprocessor.from_dict(pre)
    return p


def _transform(df: pd.DataFrame, *, pre: dict, key: str = "", uses: tuple[str, ...] = ()) -> dict:
    extensions.ensure(uses)  # a Ray Data task of a kind an extension adds
    return cached_preprocessor(pre, key).transform(df)


def prepare_data(spec: JobSpec) -> PreparedData:
    """Read, check, split and fit; the returned datasets are lazy and stream when consumed."""
    src = resolve_source(spec)
    try:
        with data_errors(src, spec.data.file_format):  # any Ray Data failure in here: one clear line
            return _prepare_data(spec)
    except DataError as e:
        # image bytes that do not decode are found in a batch of a split: name their row in the file
        if spec.data.image is not None and "not a readable image" in str(e) and f"column {spec.data.image.column!r}: row" in str(e):
            found = locate_image_bytes(spec, src, spec.data.image.column)
            if found:
                raise DataError(found) from None
        raise


def _prepare_data(spec: JobSpec) -> PreparedData:
    local = read_on_driver(spec)
    if local is not None:
        src, ds = local
        schema = ds.schema
    else:
        src, ds = read_dataset(spec)
        schema = ds.schema()
        schema = schema.base_schema if hasattr(schema, "base_schema") else schema
    cols = check_columns(spec, src, schema)
    kind = kinds.get(cols.kind)
    if kind.ordered:
        return _prepare_ordered(spec, src, ds, cols, kind)
    counts = scan_rows(spec, src, cols, ds if local is not None else None)
    notes = []
    if counts is not None and counts.missing_labels:
        notes.append(
            f"{counts.missing_labels} of {counts.rows} rows have no {spec.data.label!r} (data.label) and are left out of "
            "every split (a row without a label can be neither learned nor scored)"
        )
    if local is not None and kind.expands(cols):
        # a small table of image paths or encoded bytes can decode to far more than its file
        # size: decoding stays in Ray Data's tasks, never all at once on the driver
        local = None
        src, ds = read_dataset(spec)
    if local is not None:
        return dataclasses.replace(_prepare_on_driver(spec, src, cols, ds), notes=notes)
    d = spec.data
    keep = cols.inputs + [d.label]
    with_split = ds.map_batches(
        _add_split,
        fn_kwargs={"seed": d.seed, "fractions": (d.split.train, d.split.validation, d.split.test), "label": d.label, "keep": keep},
        batch_format="pandas",
        num_cpus=DATA_TASK_CPUS,
    )
    cache = d.cache == "memory" or (d.cache == "auto" and (source_bytes(src) or CACHE_MAX_BYTES + 1) <= CACHE_MAX_BYTES)
    if cache:  # read and split once; fitting and every epoch then work from the object store
        with_split = with_split.materialize()
    raw = {
        name: with_split.map_batches(_select_split, fn_kwargs={"code": i}, batch_format="pandas", num_cpus=DATA_TASK_CPUS)
        for i, name in enumerate(SPLITS)
    }
    pre = fit_preprocessor(spec, cols, raw["train"])
    pre_dict = pre.to_dict()
    fn_kwargs = {"pre": pre_dict, "key": preprocessor_key(pre_dict), "uses": tuple(extensions.used())}
    transformed = {
        name: r.map_batches(_transform, fn_kwargs=fn_kwargs, batch_format="pandas", num_cpus=DATA_TASK_CPUS) for name, r in raw.items()
    }
    if cache:
        transformed = {name: t.materialize() for name, t in transformed.items()}
    return PreparedData(source=src, columns=cols, preprocessor=pre, raw=raw, transformed=transformed, notes=notes)


def _prepare_ordered(spec: JobSpec, src: str, ds, cols: Columns, kind: type[InputKind]) -> PreparedData:
    """An ordered kind (a series): its columns read whole on the driver in file order, then the kind
    makes its examples and splits them in time (InputKind.prepare_ordered). `ds`: a Ray Dataset, or
    the table read_on_driver read."""
    columns = [c for c, _ in kind.source_columns(spec.data)]
    n = ds.num_rows if isinstance(ds, pa.Table) else ds.count()
    if n > MAX_SERIES_POINTS:
        raise DataError(f"{src}: the {kind.name} holds {n:,} points; at most {MAX_SERIES_POINTS:,} are read whole for data.{kind.name}")
    df = _to_pandas(ds.select(columns)) if isinstance(ds, pa.Table) else ds.select_columns(columns).to_pandas()
    made = kind.prepare_ordered(spec, src, df)
    pre = Preprocessor(
        task=cols.task,
        label=made.label,
        input=made.state,
        target_mean=made.target_mean,
        target_std=made.target_std,
        train_rows=made.train_rows,
    )
    # the examples are on the driver already: transform them here (as _transform would in a task)
    pre_dict = pre.to_dict()
    raw = {name: ray.data.from_pandas(frame) for name, frame in made.frames.items()}
    transformed = {name: _driver_transform(src, made.frames[name], pre_dict) for name in SPLITS}
    return PreparedData(source=src, columns=cols, preprocessor=pre, raw=raw, transformed=transformed)


# ------------------------------------------------------------------------ small files, on the driver

# A local file up to this size is read, split, fitted and transformed on the driver, with the
# functions the Ray Data tasks run, and its splits go to the object store as materialised datasets
# (one block each, as Ray Data makes of a file this size). That skips five Ray Data executions
# (read and split, the fit's aggregation, a transform per split), whose task and actor start-ups
# cost 10-12 s on 2 cores for a file that pandas handles in a fraction of a second (issue 14).
DRIVER_MAX_BYTES = 128 << 20  # Ray Data's target block size (DataContext.target_max_block_size)


def read_on_driver(spec: JobSpec) -> Optional[tuple[str, pa.Table]]:
    """The source read on the driver when it is a small local file (DRIVER_MAX_BYTES) and data.cache is
    not "stream"; None otherwise: a folder, a URI, a path with hive-style `key=value` folders (Ray
    Data adds their columns), an empty file, or a file pyarrow cannot read (Ray Data's read then
    finds and reports the problem, as it does for every other source)."""
    src = ensure_prepared(spec)
    d = spec.data
    if d.cache == "stream" or is_uri(src) or not os.path.isfile(src) or "=" in os.path.abspath(src):
        return None
    size = os.path.getsize(src)
    if not 0 < size <= DRIVER_MAX_BYTES:
        return None
    try:
        if d.format == "parquet":
            import pyarrow.parquet as pq

            table = pq.read_table(src)
        else:
            import pyarrow.csv as pacsv
            import pyarrow.fs as pafs

            # what Ray Data's CSV reader does: one thread, streamed, the first batch's types
            with pafs.LocalFileSystem().open_input_stream(os.path.abspath(src), compression="detect") as f:
                table = pacsv.open_csv(f, read_options=pacsv.ReadOptions(use_threads=False)).read_all()
    except Exception:
        return None
    return src, table


def _to_pandas(table: pa.Table) -> pd.DataFrame:
    """A table as a Ray Data batch function receives it (Arrow-backed pandas columns)."""
    from ray.data.block import BlockAccessor

    return BlockAccessor.for_block(table).to_pandas()


def _driver_transform(src: str, frame: pd.DataFrame, pre: dict) -> ray.data.Dataset:
    """_transform of one split on the driver, as one materialised block (the block map_batches makes)."""
    from ray.data.block import BlockAccessor

    try:
        batch = _transform(frame, pre=pre)
    except Exception as e:  # what a Ray Data task reports of the same failure: the function's own message
        raise DataError(f"{src}: {e}") from None
    return ray.data.from_arrow(BlockAccessor.batch_to_block(batch))


def _prepare_on_driver(spec: JobSpec, src: str, cols: Columns, table: pa.Table) -> PreparedData:
    """_prepare_data's steps on the driver for the table read_on_driver read (same functions, same results)."""
    d = spec.data
    keep = cols.inputs + [d.label]
    try:
        df = _add_split(
            _to_pandas(table), seed=d.seed, fractions=(d.split.train, d.split.validation, d.split.test), label=d.label, keep=keep
        )
        parts = {name: _select_split(df, code=i).reset_index(drop=True) for i, name in enumerate(SPLITS)}
        pre = fit_preprocessor(spec, cols, parts["train"])
    except DataError:
        raise
    except Exception as e:
        raise DataError(f"{src}: {e}") from None
    pre_dict = pre.to_dict()
    transformed = {name: _driver_transform(src, parts[name], pre_dict) for name in SPLITS}
    raw = {name: ray.data.from_pandas(parts[name]) for name in SPLITS}
    return PreparedData(source=src, columns=cols, preprocessor=pre, raw=raw, transformed=transformed)
