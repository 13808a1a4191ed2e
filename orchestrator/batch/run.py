"""Batch prediction and evaluation over files with Ray Data: what batch/plan.py planned, carried out.

Files stream through in chunks (a Parquet row group or a CSV chunk of READ_ROWS rows at a time),
so a file larger than memory is fine. Each model actor holds the same ModelRunner the server uses
(same checks, same preprocessing, same forward pass), so offline and served predictions agree. A
cell that cannot be an input fails its own row, named by its row in its file and its column; the
other rows of the batch are predicted."""

from __future__ import annotations

import base64
import json
import os
import shutil
import time
from pathlib import Path
from typing import Any, Callable, Iterator, Optional

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import ray

from orchestrator.batch.plan import (
    ERROR,
    PREDICTION,
    READ_ROWS,
    SOURCE_FILE,
    SOURCE_ROW,
    SUFFIXES,
    EvaluatePlan,
    PredictPlan,
    column_clashes,
    probability_column,
)
from orchestrator.errors import DataError, OrchestratorError
from orchestrator.extensions import used

FILE, ROW = "__file", "__row"  # where each row came from, carried beside the data until the output is written
ACTOR_CPUS = 0.5  # a model actor's share: the reads beside it (and Serve replicas on a shared node) still get a CPU
READ_CPUS = 0.25
SHOWN_ERRORS = 5
# pandas' default missing-value strings, applied to every CSV column but a text model's text column
NA_STRINGS = [
    "",
    "#N/A",
    "#N/A N/A",
    "#NA",
    "-1.#IND",
    "-1.#QNAN",
    "-NaN",
    "-nan",
    "1.#IND",
    "1.#QNAN",
    "<NA>",
    "N/A",
    "NA",
    "NULL",
    "NaN",
    "None",
    "n/a",
    "nan",
    "null",
]


# ------------------------------------------------------------------------------------- reading


def file_columns(path: Path, fmt: str) -> list[str]:
    """The column names of one input file, read from its header or schema (or first record)."""
    try:
        if fmt == "parquet":
            return list(pq.read_schema(path).names)
        if fmt == "csv":
            return [str(c) for c in pd.read_csv(path, nrows=0).columns]
        if fmt == "jsonl":
            with open(path, encoding="utf-8") as f:
                for line in f:
                    if line.strip():
                        first = json.loads(line)
                        if not isinstance(first, dict):
                            raise ValueError("each line must be one JSON object (a record)")
                        return list(first)
            return []
        from orchestrator.serve.client import read_records

        return [str(c) for c in read_records(path).columns]
    except OrchestratorError:
        raise
    except Exception as e:
        raise DataError(f"{path}: cannot read as {fmt}: {type(e).__name__}: {e}") from None


def _csv_chunks(path: Path, text_columns: tuple[str, ...], rows: int) -> Iterator[pd.DataFrame]:
    header = [str(c) for c in pd.read_csv(path, nrows=0).columns]
    na = {c: NA_STRINGS for c in header if c not in text_columns}  # a text "NA" or "" stays that text
    yield from pd.read_csv(path, chunksize=rows, dtype={c: str for c in text_columns if c in header}, keep_default_na=False, na_values=na)


def read_chunks(path: Path, fmt: str, text_columns: tuple[str, ...] = (), rows: int = READ_ROWS) -> Iterator[pd.DataFrame]:
    """A file's rows, `rows` at a time (a .json document is read whole, then cut)."""
    if fmt == "parquet":
        for b in pq.ParquetFile(path).iter_batches(batch_size=rows):
            yield b.to_pandas()
    elif fmt == "csv":
        yield from _csv_chunks(path, text_columns, rows)
    elif fmt == "jsonl":
        yield from pd.read_json(path, lines=True, chunksize=rows, dtype=False, convert_dates=False)
    else:
        from orchestrator.serve.client import read_records

        df = read_records(path, text_columns=text_columns)
        for start in range(0, len(df), rows):
            yield df.iloc[start : start + rows]


def _read_files(batch: pd.DataFrame, *, fmt: str, text_columns: list[str], rows: int) -> Iterator[pd.DataFrame]:
    """Ray Data generator: each file named in `batch` as chunks of rows, each row with its file and row number."""
    for path in batch["path"]:
        start = 0
        for df in read_chunks(Path(path), fmt, tuple(text_columns), rows):
            df = df.reset_index(drop=True)
            df.insert(0, ROW, np.arange(start, start + len(df), dtype=np.int64))
            df.insert(0, FILE, path)
            start += len(df)
            yield df


def read_files(files: list[Path], fmt: str, text_columns: tuple[str, ...] = ()) -> ray.data.Dataset:
    """The rows of `files` as a lazy dataset, in file order, with FILE and ROW beside each row."""
    return ray.data.from_items([{"path": str(f)} for f in files]).map_batches(
        _read_files,
        fn_kwargs={"fmt": fmt, "text_columns": list(text_columns), "rows": READ_ROWS},
        batch_size=1,
        batch_format="pandas",
        num_cpus=READ_CPUS,
    )


def _row_error(row: int, column: Optional[str], message: str) -> str:
    return f"row {row}, column {column!r}: {message}" if column else f"row {row}: {message}"


class Predictor:
    """A Ray Data actor: one checkpoint, loaded once, predicting batches of rows."""

    def __init__(self, checkpoint: str, multi_file: bool, root: str, uses: tuple[str, ...] = ()):
        from orchestrator import extensions

        extensions.ensure(uses)
        from orchestrator.serve.runner import ModelRunner

        self.runner = ModelRunner(checkpoint, max_records=1 << 30, max_body_bytes=1 << 62)
        self.info = self.runner.pre.input.describe()
        self.classes = self.runner.pre.classes if self.runner.classification else None
        self.multi_file, self.root = multi_file, root

    def __call__(self, df: pd.DataFrame) -> pd.DataFrame:
        from orchestrator.serve.client import request_record

        df = df.reset_index(drop=True)
        files, rows = df[FILE].tolist(), [int(r) for r in df[ROW]]
        n = len(df)
        inputs, cell_errors = self.runner.pre.input.coerce(df[self.runner.columns])
        errors = {i: _row_error(rows[i], col, msg) for i, (col, msg) in cell_errors.items()}
        records: dict[int, dict] = {}
        for i, r in enumerate(inputs.to_dict("records")):
            if i in errors:
                continue
            try:
                records[i] = request_record(r, self.info, Path(files[i]), rows[i])
            except OrchestratorError as e:
                errors[i] = str(e).removeprefix(f"{files[i]}: ")
        order = list(records)
        good, bad = self.runner.check_each([records[i] for i in order])
        for j, b in bad.items():
            errors[order[j]] = _row_error(rows[order[j]], b.get("column"), b["error"])
        checked = sorted(good)
        outputs = self.runner.predict([good[j] for j in checked]) if checked else []
        predictions: list[Any] = [None] * n
        probabilities = {c: np.full(n, np.nan) for c in self.classes or []}
        for j, o in zip(checked, outputs):
            i = order[j]
            if "error" in o:
                errors[i] = _row_error(rows[i], o.get("column"), o["error"])
                continue
            predictions[i] = o["prediction"]
            for c in self.classes or []:
                probabilities[c][i] = o["probabilities"][str(c)]
        out = df.drop(columns=[ROW])
        if self.multi_file:
            out[SOURCE_FILE] = [os.path.relpath(f, self.root) for f in files]
        out[SOURCE_ROW] = np.asarray(rows, dtype=np.int64)
        out[PREDICTION] = pd.Series(predictions, dtype=object)
        for c in self.classes or []:
            out[probability_column(c)] = probabilities[c]
        out[ERROR] = pd.Series([errors.get(i) for i in range(n)], dtype=object)
        return out


def _plain_cell(v: Any) -> Any:
    """A cell as CSV or JSON holds it: arrays as (nested) lists, bytes as base64 text."""
    from orchestrator.data.values import plain_value

    if isinstance(v, (bytes, bytearray)):
        return base64.b64encode(bytes(v)).decode("ascii")
    if isinstance(v, (np.ndarray, list, tuple, np.generic)):
        return plain_value(v)
    return v


def _arrow_table(df: pd.DataFrame) -> pa.Table:
    """A batch as an Arrow table for Parquet: array cells as lists; a column Arrow cannot type
    (a text among lists: the cell that failed its row) as JSON text."""
    df = df.copy()
    for c in df.columns:
        if df[c].dtype == object or not isinstance(df[c].dtype, np.dtype):  # Python objects, or Ray's tensor columns
            df[c] = pd.Series([_plain_cell(v) for v in df[c]], dtype=object, index=df.index)
    try:
        return pa.Table.from_pandas(df, preserve_index=False)
    except (pa.ArrowInvalid, pa.ArrowTypeError):
        pass
    for c in df.columns:
        if df[c].dtype == object:
            try:
                pa.array(df[c], from_pandas=True)
            except (pa.ArrowInvalid, pa.ArrowTypeError):
                df[c] = df[c].map(lambda v: v if v is None or isinstance(v, str) else json.dumps(v, default=str))
    return pa.Table.from_pandas(df, preserve_index=False)


class Sink:
    """One output file, written a batch at a time under a temporary name and renamed when complete."""

    def __init__(self, path: Path, fmt: str):
        self.path, self.fmt = path, fmt
        self.tmp = path.with_name(f".{path.name}.partial")
        self.parts: list[Path] = []
        self.columns: Optional[list[str]] = None
        self.rows = 0
        self._header_written = False
        if self.fmt == "parquet":
            self.tmp.mkdir(parents=True, exist_ok=True)
        else:
            self.tmp.parent.mkdir(parents=True, exist_ok=True)
            self.tmp.write_bytes(b"")

    def write(self, df: pd.DataFrame) -> None:
        if self.columns is None:
            self.columns = [str(c) for c in df.columns]
        df = df[self.columns] if list(df.columns) == self.columns else df.reindex(columns=self.columns)
        self.rows += len(df)
        if self.fmt == "parquet":  # parts first: a later chunk may type a column wider (int -> float, null -> text)
            part = self.tmp / f"{len(self.parts):06d}.parquet"
            pq.write_table(_arrow_table(df), part)
            self.parts.append(part)
            return
        plain = (
            pd.DataFrame({c: pd.Series([_plain_cell(v) for v in df[c]], dtype=object, index=df.index) for c in df.columns})
            if len(df)
            else df
        )
        with open(self.tmp, "a", encoding="utf-8", newline="") as f:
            if self.fmt == "csv":
                for c in plain.columns:  # lists as JSON text, as `predict` reads them back
                    if plain[c].dtype == object:
                        plain[c] = plain[c].map(lambda v: json.dumps(v) if isinstance(v, (list, dict)) else v)
                plain.to_csv(f, index=False, header=not self._header_written)
                self._header_written = True
            else:
                text = plain.to_json(orient="records", lines=True, force_ascii=False)
                f.write(text if text.endswith("\n") or not text else text + "\n")

    def close(self) -> None:
        if self.fmt == "parquet":
            schemas = [pq.read_schema(p) for p in self.parts]
            final = self.path.with_name(f".{self.path.name}.final")
            if schemas:
                schema = pa.unify_schemas(schemas, promote_options="permissive")
                with pq.ParquetWriter(final, schema) as w:
                    for p in self.parts:
                        w.write_table(pq.read_table(p).select(schema.names).cast(schema))
            else:
                pq.write_table(pa.table({}), final)
            shutil.rmtree(self.tmp)
            os.replace(final, self.path)
        else:
            os.replace(self.tmp, self.path)

    def abort(self) -> None:
        if self.tmp.is_dir():
            shutil.rmtree(self.tmp, ignore_errors=True)
        else:
            self.tmp.unlink(missing_ok=True)
        self.path.with_name(f".{self.path.name}.final").unlink(missing_ok=True)


def _output_path(plan: PredictPlan, folder: Path, source: str) -> Path:
    """A folder output's file for one input file: the same relative name, the output format's suffix."""
    rel = Path(os.path.relpath(source, plan.root))
    name = rel.name.split(".")[0] + SUFFIXES[plan.out_format]
    return folder / rel.parent / name


def check_inputs(plan_files: list[Path], fmt: str, needed: list[str], added: Optional[list[str]] = None) -> None:
    """Every file holds the model's input columns (and none that predict would overwrite)."""
    problems = []
    for f in plan_files:
        cols = file_columns(f, fmt)
        missing = [c for c in needed if c not in cols]
        if missing:
            problems.append(
                f"{f}: missing column{'s' * (len(missing) > 1)} {', '.join(map(repr, missing))} "
                f"(the model needs {', '.join(map(repr, needed))})"
            )
        clash = column_clashes(cols, added or [])
        if clash:
            problems.append(
                f"{f}: column{'s' * (len(clash) > 1)} {', '.join(map(repr, clash))} would be overwritten by the predictions; rename them"
            )
    if problems:
        raise DataError(
            "; ".join(problems[:SHOWN_ERRORS]) + (f"; and {len(problems) - SHOWN_ERRORS} more" if len(problems) > SHOWN_ERRORS else "")
        )


def predict_files(plan: PredictPlan, on_progress: Callable[[int, int], None] = lambda rows, failed: None) -> dict:
    """Predict every row of the plan's files and write them with their predictions. Returns
    {"rows", "failed", "errors" (the first few, with their file), "outputs", "seconds"}."""
    from orchestrator.data.ingest import data_errors
    from orchestrator.train.checkpoint import load_model

    t0 = time.perf_counter()
    pre = load_model(plan.checkpoint).preprocessor  # also fails here, clearly, on a damaged checkpoint
    check_inputs(plan.files, plan.input_format, pre.feature_columns, plan.added)
    multi = len(plan.files) > 1
    ctx = ray.data.DataContext.get_current()
    kept = ctx.execution_options.preserve_order
    ctx.execution_options.preserve_order = True  # rows come out in file order (set for this pipeline only)
    try:
        ds = read_files(plan.files, plan.input_format, pre.input.text_columns()).map_batches(
            Predictor,
            fn_constructor_kwargs={"checkpoint": str(plan.checkpoint), "multi_file": multi, "root": str(plan.root), "uses": tuple(used())},
            batch_size=plan.batch_size,
            batch_format="pandas",
            concurrency=plan.actors,
            num_cpus=ACTOR_CPUS,
        )
    finally:
        ctx.execution_options.preserve_order = kept
    folder = None if plan.one_file else plan.out.with_name(f".{plan.out.name}.partial")
    if folder is not None:
        shutil.rmtree(folder, ignore_errors=True)
        folder.mkdir(parents=True)
    sinks: dict[str, Sink] = {}
    rows = failed = 0
    shown: list[str] = []
    try:
        with data_errors(str(plan.files[0] if len(plan.files) == 1 else plan.root), plan.input_format):
            for batch in ds.iter_batches(batch_format="pandas", batch_size=None):
                for source, part in batch.groupby(FILE, sort=False):
                    key = "" if plan.one_file else source
                    if key not in sinks:
                        sinks[key] = Sink(plan.out if folder is None else _output_path(plan, folder, source), plan.out_format)
                    bad = part[ERROR].notna()
                    failed += int(bad.sum())
                    for msg in part.loc[bad, ERROR].head(SHOWN_ERRORS - len(shown)):
                        shown.append(f"{source}: {msg}")
                    sinks[key].write(part.drop(columns=[FILE]))
                rows += len(batch)
                on_progress(rows, failed)
        if plan.one_file and not sinks:
            raise DataError(f"{plan.files[0] if len(plan.files) == 1 else plan.root}: no rows to predict")
        # --force: the old output is replaced only now that the new one is complete
        if plan.out.is_dir() and (folder is not None or plan.one_file):
            shutil.rmtree(plan.out)
        elif plan.out.exists() and folder is not None:
            plan.out.unlink()
        for s in sinks.values():
            s.close()  # a one-file output replaces the old file here, in one rename
    except BaseException:
        for s in sinks.values():
            s.abort()
        if folder is not None:
            shutil.rmtree(folder, ignore_errors=True)
        raise
    if folder is not None:
        os.replace(folder, plan.out)
        outputs = sorted(str(plan.out / Path(s.path).relative_to(folder)) for s in sinks.values())
    else:
        outputs = [str(plan.out)]
    return {"rows": rows, "failed": failed, "errors": shown, "outputs": outputs, "seconds": time.perf_counter() - t0}


# ----------------------------------------------------------------------------------- evaluate


def _labelled(df: pd.DataFrame, *, pre: dict, key: str, relative_paths: bool, uses: tuple[str, ...] = ()) -> dict:
    """Ray Data: rows of a labelled file -> the model's inputs and the encoded label (as training
    transforms its splits); rows without a label are left out; a bad cell names its file and row."""
    from orchestrator import extensions
    from orchestrator.data.ingest import cached_preprocessor

    extensions.ensure(uses)
    p = cached_preprocessor(pre, key)
    df = df[df[p.label].notna()].reset_index(drop=True)
    files, rows = df.pop(FILE), df.pop(ROW)
    col = p.input.path_column()
    if relative_paths and col is not None:  # relative file paths resolve against their own data file's folder
        from orchestrator.data.images import resolve_image_path

        df[col] = [resolve_image_path(v, os.path.dirname(f)) if isinstance(v, str) else v for v, f in zip(df[col], files)]
    coerced, cell_errors = p.input.coerce(df)
    if cell_errors:
        i, (col, msg) = min(cell_errors.items())
        raise ValueError(f"{files.iloc[i]}: {_row_error(int(rows.iloc[i]), col, msg)}")
    try:
        return p.transform(coerced)
    except ValueError:
        pass
    for i in range(len(coerced)):  # which row: transform them one at a time
        try:
            p.transform(coerced.iloc[[i]])
        except ValueError as e:
            raise ValueError(f"{files.iloc[i]}: row {int(rows.iloc[i])}: {str(e).replace(': row 0', '')}") from None
    raise AssertionError("unreachable: the batch failed but no row alone does")


def evaluate_files(plan: EvaluatePlan) -> tuple[dict, dict]:
    """Score the checkpoint on the plan's labelled files: (metrics, details). Writes metrics.json,
    details.json and the plots (confusion_matrix.png, or residuals.png) into plan.out."""
    from orchestrator.data.ingest import data_errors, preprocessor_key
    from orchestrator.report import confusion_matrix, residuals, save_png
    from orchestrator.train.checkpoint import load_model
    from orchestrator.train.driver import evaluate_checkpoint

    loaded = load_model(plan.checkpoint)
    pre = loaded.preprocessor
    if pre.input.ordered:
        raise OrchestratorError(
            "evaluate scores table, image, text and sequence models; a series model is scored on its run's "
            "test period (test_metrics.json in the run directory)"
        )
    check_inputs(plan.files, plan.input_format, [*pre.feature_columns, pre.label])
    relative_paths = pre.input.path_column() is not None
    if relative_paths:  # each file's relative paths resolve against that file's folder (_labelled)
        import dataclasses

        pre = dataclasses.replace(pre, input=pre.input.rooted(None))
    pre_dict = pre.to_dict()
    src = str(plan.files[0]) if len(plan.files) == 1 else str(plan.files[0].parent)
    ds = read_files(plan.files, plan.input_format, pre.input.text_columns()).map_batches(
        _labelled,
        fn_kwargs={"pre": pre_dict, "key": preprocessor_key(pre_dict), "relative_paths": relative_paths, "uses": tuple(used())},
        batch_format="pandas",
        num_cpus=READ_CPUS,
    )
    plan.out.mkdir(parents=True, exist_ok=True)
    details_path = plan.out / "details.json"
    with data_errors(src, plan.input_format):
        raw, details = evaluate_checkpoint(str(plan.checkpoint), ds, details_path, loaded=loaded)
    assert details is not None  # asked for with details_path
    if not raw.get("test_rows"):
        raise DataError(f"{src}: no labelled rows to score (column {pre.label!r} is empty)")
    metrics = {k.removeprefix("test_"): v for k, v in raw.items()}
    (plan.out / "metrics.json").write_text(json.dumps(metrics, indent=2))
    fig = confusion_matrix(details) if details.get("task") == "classification" else residuals(details)
    if fig is not None:
        save_png(fig, plan.out / ("confusion_matrix.png" if details.get("task") == "classification" else "residuals.png"))
    return metrics, details
