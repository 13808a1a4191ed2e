"""Ray Data ingest: read, check, split, fit preprocessing on train only, transform.

Every Ray Data operation asks for a fraction of a CPU (DATA_TASK_CPUS) so it can still be
scheduled while the training workers hold their share: on a 2-core machine Train and Data
would otherwise deadlock (see planning.py, which leaves room for these tasks).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Optional

import numpy as np
import pandas as pd
import pyarrow as pa

import ray
from ray.data.aggregate import Count, Mean, Std, Sum, Unique

from orchestrator.errors import DataError
from orchestrator.preprocess import SPLIT_COLUMN, SPLITS, Preprocessor, assign_splits
from orchestrator.spec import JobSpec, is_uri, resolve_source

DATA_TASK_CPUS = 0.25
CACHE_MAX_BYTES = 1 << 30  # data.cache: auto keeps sources up to this size in the object store


@dataclass
class Columns:
    """What the schema check settled: feature columns by kind and the task."""

    task: str
    numeric: list[str]
    categorical: list[str]
    image: Optional[str]


@dataclass
class PreparedData:
    source: str
    columns: Columns
    preprocessor: Preprocessor
    raw: dict[str, ray.data.Dataset]  # split name -> untransformed rows
    transformed: dict[str, ray.data.Dataset]  # split name -> {"x", "y"} rows


# ------------------------------------------------------------------------------------ reading


def ensure_prepared(spec: JobSpec) -> str:
    """Resolve the source; run the spec's built-in prepare step if the file is not there yet."""
    src = resolve_source(spec)
    if spec.data.prepare and not is_uri(src) and not os.path.exists(src):
        from orchestrator.datasets import write_bundled

        write_bundled(spec.data.prepare, src)
    return src


def read_dataset(spec: JobSpec) -> tuple[str, ray.data.Dataset]:
    src = ensure_prepared(spec)
    if not is_uri(src) and not os.path.exists(src):
        raise DataError(f"{src}: data file not found (data.source in the spec)")
    args = {"num_cpus": DATA_TASK_CPUS}
    try:
        if spec.data.format == "parquet":
            ds = ray.data.read_parquet(src, **args)
        else:
            ds = ray.data.read_csv(src, **args)
        schema = ds.schema()
    except Exception as e:  # pyarrow/fsspec raise many types; the message is what matters
        raise DataError(f"{src}: cannot read as {spec.data.format}: {_short(e)}") from None
    if schema is None:
        raise DataError(f"{src}: no rows or no schema found")
    return src, ds


def _short(e: Exception) -> str:
    msg = str(e).strip().splitlines()
    return f"{type(e).__name__}: {msg[-1] if msg else ''}"


def check_columns(spec: JobSpec, src: str, schema: pa.Schema) -> Columns:
    types = dict(zip(schema.names, schema.types))
    d = spec.data

    def need(col: str, what: str) -> pa.DataType:
        if col not in types:
            raise DataError(f"{src}: column {col!r} ({what}) not found; the file has {sorted(types)}")
        return types[col]

    label_type = need(d.label, "data.label")
    task = d.task
    if task is None:
        task = "regression" if pa.types.is_floating(label_type) else "classification"
    if task == "regression" and not (pa.types.is_integer(label_type) or pa.types.is_floating(label_type)):
        raise DataError(f"{src}: column {d.label!r} (data.label) has type {label_type}; regression needs a numeric label")

    if d.image is not None:
        t = need(d.image.column, "data.image.column")
        if not (pa.types.is_list(t) or pa.types.is_large_list(t) or pa.types.is_fixed_size_list(t)) or not (
            pa.types.is_integer(t.value_type) or pa.types.is_floating(t.value_type)
        ):
            raise DataError(
                f"{src}: column {d.image.column!r} (data.image.column) has type {t}; it must be a list of numbers"
            )
        return Columns(task=task, numeric=[], categorical=[], image=d.image.column)

    features = d.features if d.features is not None else [c for c in schema.names if c != d.label]
    numeric, categorical = [], []
    for col in features:
        t = need(col, "data.features")
        if col in d.categorical:
            categorical.append(col)
        elif pa.types.is_integer(t) or pa.types.is_floating(t) or pa.types.is_boolean(t):
            numeric.append(col)
        else:
            raise DataError(
                f"{src}: column {col!r} (data.features) has type {t}; numeric features must be numbers "
                f"(list the column under data.categorical to one-hot encode it)"
            )
    return Columns(task=task, numeric=numeric, categorical=categorical, image=None)


# ------------------------------------------------------------------------- split, fit, transform


def _add_split(df: pd.DataFrame, *, seed: int, fractions: tuple, label: str, keep: list[str]) -> pd.DataFrame:
    df = df[keep]
    df = df[df[label].notna()]  # a row without a label can be neither learned nor scored
    return df.assign(**{SPLIT_COLUMN: assign_splits(df, seed, fractions)})


def _select_split(df: pd.DataFrame, *, code: int) -> pd.DataFrame:
    return df[df[SPLIT_COLUMN] == code].drop(columns=[SPLIT_COLUMN])


def _image_moments(df: pd.DataFrame, *, column: str) -> pd.DataFrame:
    flat = [np.asarray(v, dtype=np.float64).reshape(-1) for v in df[column]]
    return pd.DataFrame(
        {
            "__s": [float(a.sum()) for a in flat],
            "__ss": [float((a * a).sum()) for a in flat],
            "__n": [a.size for a in flat],
        }
    )


def fit_preprocessor(spec: JobSpec, cols: Columns, train: ray.data.Dataset) -> Preprocessor:
    """One Ray Data pass over the training split only."""
    d = spec.data
    pre = Preprocessor(task=cols.task, label=d.label)
    if cols.image:
        moments = train.map_batches(
            _image_moments, fn_kwargs={"column": cols.image}, batch_format="pandas", num_cpus=DATA_TASK_CPUS
        )
        stats = moments.aggregate(Sum("__s"), Sum("__ss"), Sum("__n"))
        n = stats["sum(__n)"] or 0
        if n == 0:
            raise DataError(f"{d.source}: the training split is empty")
        mean = stats["sum(__s)"] / n
        var = max(stats["sum(__ss)"] / n - mean * mean, 0.0)
        pre.image_column, pre.image_shape = cols.image, list(d.image.shape)
        pre.image_mean, pre.image_std = float(mean), float(np.sqrt(var)) or 1.0
        target = train.select_columns([d.label])
    else:
        target = train.select_columns(cols.numeric + cols.categorical + [d.label])

    aggs = [Count()]
    for c in cols.numeric:
        aggs += [Mean(c, ignore_nulls=True, alias_name=f"mean:{c}"), Std(c, ddof=0, ignore_nulls=True, alias_name=f"std:{c}")]
    for c in cols.categorical:
        aggs.append(Unique(c, alias_name=f"uniq:{c}"))
    if cols.task == "classification":
        aggs.append(Unique(d.label, alias_name="uniq:__label"))
    else:
        aggs += [Mean(d.label, alias_name="mean:__label"), Std(d.label, ddof=0, alias_name="std:__label")]
    stats = target.aggregate(*aggs)
    pre.train_rows = int(stats["count()"] or 0)
    if pre.train_rows == 0:
        raise DataError(f"{d.source}: the training split is empty (too few rows for data.split)")
    for c in cols.numeric:
        mean, std = stats[f"mean:{c}"], stats[f"std:{c}"]
        if mean is None:
            raise DataError(f"{d.source}: column {c!r} has no values in the training split")
        pre.numeric.append(c)
        pre.means.append(float(mean))
        pre.stds.append(float(std) if std and std > 0 else 1.0)
    for c in cols.categorical:
        pre.categorical[c] = sorted((_py(v) for v in stats[f"uniq:{c}"]), key=lambda v: (str(type(v)), v))
    if cols.task == "classification":
        pre.classes = sorted((_py(v) for v in stats["uniq:__label"]), key=lambda v: (str(type(v)), v))
        if len(pre.classes) < 2:
            raise DataError(f"{d.source}: column {d.label!r} has fewer than 2 classes in the training split")
    else:
        pre.target_mean = float(stats["mean:__label"])
        pre.target_std = float(stats["std:__label"] or 1.0) or 1.0
    return pre


def _py(v):
    return v.item() if isinstance(v, np.generic) else v


def _transform(df: pd.DataFrame, *, pre: dict) -> dict:
    return Preprocessor.from_dict(pre).transform(df)


def prepare_data(spec: JobSpec) -> PreparedData:
    """Read, check, split and fit; the returned datasets are lazy and stream when consumed."""
    src, ds = read_dataset(spec)
    cols = check_columns(spec, src, ds.schema().base_schema if hasattr(ds.schema(), "base_schema") else ds.schema())
    d = spec.data
    keep = ([cols.image] if cols.image else cols.numeric + cols.categorical) + [d.label]
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
    transformed = {
        name: r.map_batches(_transform, fn_kwargs={"pre": pre_dict}, batch_format="pandas", num_cpus=DATA_TASK_CPUS)
        for name, r in raw.items()
    }
    if cache:
        transformed = {name: t.materialize() for name, t in transformed.items()}
    return PreparedData(source=src, columns=cols, preprocessor=pre, raw=raw, transformed=transformed)


def source_bytes(src: str) -> Optional[int]:
    """Total size of the source's files, or None when it cannot be listed."""
    import pyarrow.fs as pafs

    try:
        fs, path = pafs.FileSystem.from_uri(src) if is_uri(src) else (pafs.LocalFileSystem(), src)
        info = fs.get_file_info(path)
        if info.type == pafs.FileType.File:
            return info.size
        return sum(f.size or 0 for f in fs.get_file_info(pafs.FileSelector(path, recursive=True)) if f.type == pafs.FileType.File)
    except Exception:
        return None
