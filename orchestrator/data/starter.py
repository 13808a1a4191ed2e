"""A starter job spec from a data file (`orchestrator init DATA`): the label and the task, each
column's kind, and a model that fits them, read from the file's schema and a sample of its rows.
Pure planning: no Ray, nothing written (the command writes the spec).

How columns are read (the sample is the first SAMPLE_ROWS rows):
- numbers and booleans: numeric features; a column named like an id (`id`, `*_id`) whose values
  are all distinct is left out;
- strings: image file paths when nearly all end in an image extension; text when they are long
  (TEXT_MEAN_CHARS characters on average) or hold several words; otherwise categories, unless
  they have more than MAX_AUTO_CATEGORIES distinct values (an id, left out);
- lists of numbers: an image when every row has the same length and it is a square (a flat
  grey image); otherwise a sequence; lists of equal-length vectors: a sequence;
- anything else (dates, nested records): left out, with the reason.
One image, text or sequence column makes the job of that kind (the spec reads one input of those
kinds); tables use every usable column. The label is `--label`, else a column named label,
target, y, class or outcome, else the last column. A floating-point label with fractional values
is regression; an integer label with at most MAX_CLASSES_FOR_INTEGERS distinct values, strings
and booleans are classification.
"""

from __future__ import annotations

import math
import os
import re
from dataclasses import dataclass, field
from typing import Any, Optional

import pandas as pd
import pyarrow as pa

from orchestrator.data.kinds.base import is_list_type, is_number_type, is_text_type
from orchestrator.data.kinds.table import MAX_AUTO_CATEGORIES
from orchestrator.errors import DataError

SAMPLE_ROWS = 5000
TEXT_MEAN_CHARS = 40
TEXT_MEAN_WORDS = 5
MAX_CLASSES_FOR_INTEGERS = 20
IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp")
LABEL_NAMES = ("label", "target", "y", "class", "outcome")


@dataclass
class Starter:
    spec: dict[str, Any]
    decisions: list[str] = field(default_factory=list)  # what was inferred, one line per column or choice
    left_out: list[str] = field(default_factory=list)  # columns not used, with the reason


def _is_id(name: str, values: pd.Series) -> bool:
    return bool(re.fullmatch(r"(?i)(id|.*[_-]id|uuid|key)", name)) and values.nunique(dropna=True) == values.notna().sum() > 1


def _column_kind(name: str, typ: pa.DataType, values: pd.Series) -> tuple[Optional[str], str]:
    """(kind or None to leave it out, why)."""
    present = values.dropna()
    if pa.types.is_boolean(typ):
        return "numeric", "booleans"
    if is_number_type(typ):
        if _is_id(name, values):
            return None, "an id (every value distinct)"
        return "numeric", "numbers"
    if is_text_type(typ):
        text = present.astype(str)
        if len(text) and text.str.lower().str.endswith(IMAGE_EXTENSIONS).mean() >= 0.9:
            return "image_path", "image file paths"
        if len(text) and (text.str.len().mean() >= TEXT_MEAN_CHARS or text.str.split().str.len().mean() >= TEXT_MEAN_WORDS):
            return "text", f"{text.str.len().mean():.0f} characters on average"
        distinct = text.nunique()
        if distinct > MAX_AUTO_CATEGORIES:
            return None, f"{distinct} distinct strings in {len(text)} rows: more likely an id than a category"
        if _is_id(name, values):
            return None, "an id (every value distinct)"
        return "categorical", f"{distinct} distinct values in the sample"
    if is_list_type(typ):
        inner = typ.value_type
        if is_list_type(inner) and is_number_type(inner.value_type):
            return "sequence", "lists of vectors"
        if is_number_type(inner):
            lengths = present.map(len)
            if len(lengths) and lengths.nunique() == 1 and int(math.isqrt(int(lengths.iloc[0]))) ** 2 == int(lengths.iloc[0]) >= 16:
                return "image_array", f"flat images of {int(lengths.iloc[0])} values"
            return "sequence", "lists of numbers of varying length"
    if pa.types.is_temporal(typ):
        return "time", "dates or times: not a feature, but the order of a series"
    return None, f"type {typ} is not a feature type (numbers, booleans, strings, lists of numbers)"


def _task(label: str, typ: pa.DataType, values: pd.Series) -> tuple[str, str]:
    present = values.dropna()
    if pa.types.is_floating(typ):
        if len(present) and (present == present.round()).all() and present.nunique() <= MAX_CLASSES_FOR_INTEGERS:
            return "classification", f"whole numbers with {present.nunique()} distinct values"
        return "regression", "numbers with fractions"
    if pa.types.is_integer(typ):
        n = present.nunique()
        if n <= MAX_CLASSES_FOR_INTEGERS:
            return "classification", f"integers with {n} distinct values"
        return "regression", f"integers with {n} distinct values (more than {MAX_CLASSES_FOR_INTEGERS})"
    return "classification", "strings or booleans"


def plan_starter(
    source: str,
    spec_dir: str,
    schema: pa.Schema,
    sample: pd.DataFrame,
    *,
    fmt: str,
    label: Optional[str] = None,
    name: Optional[str] = None,
) -> Starter:
    """The starter spec for `source` (as the spec will name it, relative to `spec_dir` when local)."""
    names = list(schema.names)
    if not names:
        raise DataError(f"{source}: no columns")
    if label is not None:
        if label not in names:
            raise DataError(f"{source}: --label {label!r}: no such column; the file has {names}")
        why_label = "given with --label"
    else:
        label = next((c for c in names for want in LABEL_NAMES if c.lower() == want), None)
        why_label = "named like a label" if label else "the last column; --label chooses another"
        label = label or names[-1]
    types = dict(zip(names, schema.types))
    task, why_task = _task(label, types[label], sample[label])
    out = Starter(spec={})
    out.decisions.append(f"label: {label!r} ({why_label}); task: {task} ({why_task})")

    kinds: dict[str, list[str]] = {}
    for col in names:
        if col == label:
            continue
        kind, why = _column_kind(col, types[col], sample[col])
        if kind is None or kind == "time":
            out.left_out.append(f"{col!r}: {why}")
            if kind == "time":
                kinds.setdefault("time", []).append(col)
            continue
        kinds.setdefault(kind, []).append(col)
        out.decisions.append(f"{col!r}: {kind.replace('_', ' ')} ({why})")

    stem = re.sub(r"[^a-z0-9]+", "-", os.path.splitext(os.path.basename(source.rstrip("/")))[0].lower()).strip("-") or "job"
    data: dict[str, Any] = {"source": source, "format": fmt, "label": label}
    if task == "classification" and not pa.types.is_string(types[label]) and not pa.types.is_large_string(types[label]):
        data["task"] = "classification"  # numbers read as classes: said, not inferred from the type
    elif task == "regression" and not pa.types.is_floating(types[label]):
        data["task"] = "regression"
    model: dict[str, Any]
    special = next((k for k in ("image_path", "image_array", "text", "sequence") if k in kinds), None)
    if special is not None:
        col = kinds[special][0]
        others = [c for k, cols in kinds.items() for c in cols if c != col]
        if others:
            out.left_out.append(f"{', '.join(map(repr, others))}: a {special.split('_')[0]} job reads one input column ({col!r})")
        if special == "image_path":
            shape = _first_image_shape(sample[col], source, spec_dir)
            data["image"] = {"column": col, "shape": shape}
            model = {"arch": "cnn", "channels": [16, 32], "hidden": 64}
        elif special == "image_array":
            side = math.isqrt(len(sample[col].dropna().iloc[0]))
            data["image"] = {"column": col, "shape": [1, side, side]}
            model = {"arch": "cnn", "channels": [16, 32], "hidden": 64}
        elif special == "text":
            data["text"] = {"column": col, "tokenizer": "bpe", "vocab_size": 8000, "max_length": 128}
            model = {"arch": "rnn", "cell": "gru", "hidden": 64, "embedding": 64, "bidirectional": True, "pooling": "mean"}
        else:
            data["sequence"] = {"column": col}
            model = {"arch": "rnn", "cell": "gru", "hidden": 64}
    elif kinds.get("time") and not kinds.get("numeric") and not kinds.get("categorical") and is_number_type(types[label]):
        # one numeric column and a time column: a series that forecasts itself
        order_by = kinds["time"][0]
        window = max(2, min(24, len(sample) // 10))
        out.left_out[:] = [x for x in out.left_out if not x.startswith(repr(order_by))]
        out.decisions[0] = f"series: {label!r} in the order of {order_by!r}, windows of {window} points forecast the next one (regression)"
        data = {"source": source, "format": fmt, "series": {"column": label, "order_by": order_by, "window": window, "horizon": 1}}
        task = "regression"
        model = {"arch": "rnn", "cell": "lstm", "hidden": 64}
    else:
        features = kinds.get("numeric", []) + kinds.get("categorical", [])
        if not features:
            raise DataError(f"{source}: no column besides the label can be a feature ({'; '.join(out.left_out) or 'none left'})")
        data["features"] = features
        if kinds.get("categorical"):
            data["categorical"] = kinds["categorical"]
        model = {"arch": "mlp", "hidden": [64, 32]}
    checkpoint_metric = "val_accuracy" if task == "classification" else "val_rmse"
    out.spec = {
        "name": name or stem,
        "data": data,
        "model": model,
        "train": {"epochs": 20, "batch_size": 64, "lr": 0.001, "weight_decay": 0.0001, "dropout": 0.1, "early_stopping": {"patience": 5}},
        "scaling": {"workers": 1},
        "checkpoint": {"metric": checkpoint_metric},
    }
    return out


def _first_image_shape(paths: pd.Series, source: str, spec_dir: str) -> list[int]:
    """[channels, height, width] of the first image the column names (relative paths: from the source's folder)."""
    from PIL import Image

    from orchestrator.data.files import image_root
    from orchestrator.data.images import resolve_image_path

    first = str(paths.dropna().iloc[0])
    src = source if os.path.isabs(source) or "://" in source else os.path.join(spec_dir, source)
    path = resolve_image_path(first, image_root(src))
    try:
        with Image.open(path) as im:
            channels = {"1": 1, "L": 1, "LA": 1, "I;16": 1, "I": 1, "F": 1, "RGBA": 4, "PA": 4}.get(im.mode, 3)
            return [channels, im.height, im.width]
    except Exception as e:
        raise DataError(f"{path}: the first image of column {paths.name!r} cannot be read to learn the image shape: {e}") from None


def read_sample(source: str, fmt: str) -> tuple[pa.Schema, pd.DataFrame]:
    """The schema Ray Data will see (data/preflight.py) and the first SAMPLE_ROWS rows."""
    from orchestrator.data.files import list_source
    from orchestrator.data.preflight import parquet_dataset

    listing = list_source(source)
    if fmt == "parquet":
        dataset = parquet_dataset(listing)
        return dataset.schema, dataset.head(SAMPLE_ROWS).to_pandas()
    import pyarrow.csv as pacsv

    files = listing.entries()
    if not files:
        raise DataError(f"{source}: no CSV files")
    _, fs, path = files[0]
    batches, rows = [], 0
    with fs.open_input_stream(path, compression="detect") as f:
        reader = pacsv.open_csv(f, read_options=pacsv.ReadOptions(use_threads=False))
        for batch in reader:
            batches.append(batch)
            rows += batch.num_rows
            if rows >= SAMPLE_ROWS:
                break
        schema = reader.schema
    return schema, pa.Table.from_batches(batches, schema=schema).slice(0, SAMPLE_ROWS).to_pandas()
