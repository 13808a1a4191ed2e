"""What `orchestrator predict RUN FILE|DIR -o OUT` and `orchestrator evaluate RUN FILE|DIR` will do:
which files they read, in which format, which columns they add and where they write. Pure: no Ray,
no torch (batch/run.py carries it out)."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

from orchestrator.errors import OrchestratorError

# file suffix -> format; .json is one JSON document (read whole), .jsonl one record per line (streamed)
FORMATS = {".csv": "csv", ".parquet": "parquet", ".pq": "parquet", ".jsonl": "jsonl", ".ndjson": "jsonl", ".json": "json"}
OUTPUT_FORMATS = ("csv", "parquet", "jsonl")
SUFFIXES = {"csv": ".csv", "parquet": ".parquet", "jsonl": ".jsonl"}
# columns the output adds beside the input's own
PREDICTION = "prediction"
ERROR = "error"
PROBABILITY = "probability_"
SOURCE_FILE = "source_file"
SOURCE_ROW = "source_row"
READ_ROWS = 4096  # rows read from a file at a time (Parquet row groups and CSV chunks are split to this)
DEFAULT_BATCH = 256  # records per forward pass


def _format_of(path: Path) -> Optional[str]:
    name = path.name.lower()
    for suffix in (".csv.gz",):
        if name.endswith(suffix):
            return "csv"
    return FORMATS.get(path.suffix.lower())


def input_files(path: Path) -> tuple[list[Path], str]:
    """FILE -> [FILE]; DIR -> its data files (recursively, sorted; hidden and `_` files such as
    `_SUCCESS` left out), which must all be of one format. Returns (files, format)."""
    p = Path(path)
    if not p.exists():
        raise OrchestratorError(f"{path}: no such file or folder")
    if p.is_file():
        fmt = _format_of(p)
        if fmt is None:
            raise OrchestratorError(f"{path}: unsupported file type {p.suffix or '(none)'}; use .csv, .parquet, .jsonl or .json")
        return [p], fmt
    files = sorted(f for f in p.rglob("*") if f.is_file() and not any(part.startswith((".", "_")) for part in f.relative_to(p).parts))
    found = {f: _format_of(f) for f in files}
    data = [f for f, fmt in found.items() if fmt is not None]
    kinds = {fmt for fmt in found.values() if fmt is not None}
    if not data:
        raise OrchestratorError(f"{path}: no .csv, .parquet, .jsonl or .json files in this folder")
    formats = sorted(kinds)
    if len(formats) > 1:
        raise OrchestratorError(f"{path}: files of several formats ({', '.join(formats)}); put one format in a folder")
    return data, formats[0]


def output_format(out: Path, fmt: Optional[str]) -> tuple[str, bool]:
    """(format, one file?) of `-o OUT`: a path with a known suffix is one file of that format; any
    other path is a folder of files in `--format` (default parquet)."""
    suffix_fmt = _format_of(Path(out))
    if suffix_fmt == "json":
        raise OrchestratorError(f"-o {out}: write .jsonl (one record per line), .csv or .parquet")
    if fmt is not None and fmt not in OUTPUT_FORMATS:
        raise OrchestratorError(f"--format {fmt}: use one of {', '.join(OUTPUT_FORMATS)}")
    if suffix_fmt is not None:
        if fmt is not None and fmt != suffix_fmt:
            raise OrchestratorError(f"-o {out} is a .{suffix_fmt} file but --format says {fmt}")
        return suffix_fmt, True
    return fmt or "parquet", False


def probability_column(label: Any) -> str:
    return f"{PROBABILITY}{label}"


def added_columns(classes: Optional[list[Any]], multi_file: bool) -> list[str]:
    """The columns predict adds, in order: where each row came from (a folder's files), the
    prediction, one probability per class (classification) and the row's error (null when it was predicted)."""
    return ([SOURCE_FILE] if multi_file else []) + [SOURCE_ROW, PREDICTION] + [probability_column(c) for c in classes or []] + [ERROR]


@dataclass
class PredictPlan:
    checkpoint: Path
    files: list[Path]
    input_format: str
    out: Path
    out_format: str
    one_file: bool
    added: list[str]
    batch_size: int = DEFAULT_BATCH
    actors: int = 1
    notes: list[str] = field(default_factory=list)

    @property
    def root(self) -> Path:
        """The folder file names in source_file are relative to."""
        return self.files[0].parent if len(self.files) == 1 else Path(_common_parent(self.files))


def _common_parent(files: list[Path]) -> str:
    import os

    return os.path.commonpath([str(f.parent) for f in files])


def plan_predict(
    checkpoint: Path,
    source: Path,
    out: Path,
    *,
    fmt: Optional[str] = None,
    force: bool = False,
    classes: Optional[list[Any]] = None,
    batch_size: int = DEFAULT_BATCH,
    actors: int = 1,
) -> PredictPlan:
    files, input_format = input_files(source)
    out_format, one_file = output_format(out, fmt)
    out = Path(out)
    if out.exists() and not force:
        raise OrchestratorError(f"-o {out}: already exists; pass --force to replace it")
    if out.resolve() in {f.resolve() for f in files} or (not one_file and any(f.resolve().is_relative_to(out.resolve()) for f in files)):
        raise OrchestratorError(f"-o {out}: would overwrite the input; write elsewhere")
    if batch_size < 1 or actors < 1:
        raise OrchestratorError("--batch-size and --actors take 1 or more")
    added = added_columns(classes, len(files) > 1)
    return PredictPlan(
        checkpoint=Path(checkpoint),
        files=files,
        input_format=input_format,
        out=out,
        out_format=out_format,
        one_file=one_file,
        added=added,
        batch_size=batch_size,
        actors=actors,
    )


def column_clashes(columns: list[str], added: list[str]) -> list[str]:
    """Input columns that predict's added columns would overwrite."""
    return [c for c in added if c in set(map(str, columns))]


@dataclass
class EvaluatePlan:
    checkpoint: Path
    files: list[Path]
    input_format: str
    out: Path


def plan_evaluate(checkpoint: Path, source: Path, out: Path, *, force: bool = False) -> EvaluatePlan:
    files, input_format = input_files(source)
    out = Path(out)
    if out.exists() and any(out.iterdir()) and not force:
        raise OrchestratorError(f"-o {out}: already holds files; pass --force to write over them")
    return EvaluatePlan(checkpoint=Path(checkpoint), files=files, input_format=input_format, out=out)


def default_evaluation_dir(run_dir: Optional[Path], checkpoint: Path, source: Path) -> Path:
    """Where `evaluate` writes without -o: the run's evaluations/<data file's stem>/."""
    base = run_dir if run_dir is not None else checkpoint.parent
    stem = Path(source).name.split(".")[0] or "data"
    return base / "evaluations" / stem
