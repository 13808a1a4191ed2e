"""Preprocessing fitted on the training split and replayed at inference: the input kind's fitted
state (data/kinds/) and the label's encoding, and the deterministic split of rows.

Pure numpy/pandas: the same object transforms Ray Data batches during training and request
payloads in the serving replica. Its fitted state is plain JSON, saved in every checkpoint,
so loading a model never unpickles anything.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

import numpy as np
import pandas as pd

from orchestrator.data import kinds
from orchestrator.data.kinds.base import InputKind
from orchestrator.data.values import plain_value

SPLIT_COLUMN = "__split"
SPLITS = ("train", "validation", "test")
UNKNOWN_LABEL = -1  # label not seen in training: ignored by the loss, counted wrong by accuracy


def _cell_bytes(v: Any) -> bytes:
    """An array-valued cell's values as bytes: a flat array (image, sequence of numbers) or a list of
    vectors (a sequence of vectors, which Arrow hands over as an object array of arrays)."""
    try:
        return np.asarray(v, dtype=np.float64).tobytes()
    except (TypeError, ValueError):
        if not isinstance(v, (list, tuple, np.ndarray)):  # a missing cell (None, NA) or a stray scalar: the transform names it
            return repr(v).encode()
        return b"".join(_cell_bytes(step) + b"|" for step in v)


def _hashable_frame(df: pd.DataFrame) -> pd.DataFrame:
    """Array-valued cells (images, sequences) become bytes so pandas can hash them."""
    out = {}
    for col in sorted(df.columns):
        s = df[col]
        first = s.dropna().iloc[0] if s.notna().any() else None
        if isinstance(first, (list, tuple, np.ndarray)):
            s = s.map(_cell_bytes)
        out[col] = s
    return pd.DataFrame(out)


def assign_splits(df: pd.DataFrame, seed: int, fractions: tuple[float, float, float]) -> np.ndarray:
    """Split code (0 train, 1 validation, 2 test) for each row.

    Decided by a seeded hash of the row's own values, so it is the same however the file is
    read, chunked or parallelised, every row lands in exactly one split, and identical rows
    always land together (no duplicate leaks from train into test).
    """
    key = f"orch{seed:012d}"[-16:]
    h = pd.util.hash_pandas_object(_hashable_frame(df), index=False, hash_key=key).to_numpy(np.uint64)
    u = (h >> np.uint64(11)).astype(np.float64) / float(1 << 53)
    train, val, _ = fractions
    return np.where(u < train, 0, np.where(u < train + val, 1, 2)).astype(np.int8)


# The fitted state of each built-in kind, as checkpoints written before input kinds had their own
# state held it: flat fields of the Preprocessor, prefixed by kind (text_max_length, ...).
LEGACY_FIELDS = {
    "image": {
        "image_column": "column",
        "image_shape": "shape",
        "image_mean": "mean",
        "image_std": "std",
        "image_source": "source",
        "image_root": "root",
    },
    "text": {
        "text_column": "column",
        "tokenizer": "tokenizer",
        "text_max_length": "max_length",
        "text_lowercase": "lowercase",
        "text_vocab_size": "vocab_size",
    },
    "sequence": {
        "sequence_column": "column",
        "sequence_max_length": "max_length",
        "sequence_features": "features",
        "sequence_means": "means",
        "sequence_stds": "stds",
    },
    "series": {
        "series_column": "column",
        "series_window": "window",
        "series_horizon": "horizon",
        "series_mean": "mean",
        "series_std": "std",
    },
    "table": {"numeric": "numeric", "means": "means", "stds": "stds", "categorical": "categorical"},
}


def from_legacy(d: dict) -> dict:
    """A fitted preprocessing saved before input kinds held their own state -> today's layout. The
    kind is the one whose column is set, as that layout told it; other keys are kept as they are."""
    kind = next(
        (
            k
            for k, column in (
                ("text", "text_column"),
                ("sequence", "sequence_column"),
                ("series", "series_column"),
                ("image", "image_column"),
            )
            if d.get(column)
        ),
        "table",
    )
    every = {old for names in LEGACY_FIELDS.values() for old in names}
    out = {k: v for k, v in d.items() if k not in every}
    out["input"] = {"kind": kind, **{new: d[old] for old, new in LEGACY_FIELDS[kind].items() if old in d}}
    return out


@dataclass
class Preprocessor:
    """The fitted preprocessing of one job: its input kind's state (`input`) and its label's encoding.

    Entry points (the same for training, evaluation and serving):
    - `transform_inputs(df) -> dict[str, np.ndarray]`: the model's inputs, {"x": ...} for table and
      image input, {"x": ..., "len": ...} for text (int64 token ids [n, max_length]), sequence
      (float32 [n, max_length, features]) and series (float32 [n, window, 1]); "len" (int64 [n]) counts
      each row's real steps. Hand it to `models.build.forward` as tensors.
    - `transform_features(df) -> np.ndarray`: just "x".
    - `transform(df)`: transform_inputs plus "y", the encoded label (training and evaluation).
    - `decode(outputs)`: model outputs -> labels in the data's own terms.
    """

    task: str  # classification | regression
    label: str
    input: InputKind
    classes: Optional[list[Any]] = None
    class_counts: Optional[list[int]] = None  # rows of each class in the training split (counted for train.class_weights: balanced)
    target_mean: float = 0.0
    target_std: float = 1.0
    train_rows: int = 0

    # ---- shape of what the model sees
    @property
    def kind(self) -> str:
        """The input kind's name: table, image, text, sequence, series or a registered one."""
        return self.input.name

    @property
    def input_shape(self) -> list[int]:
        """Shape of one row of "x" (at most; text and sequence batches may be trimmed to their longest row)."""
        return self.input.input_shape()

    @property
    def vocab_size(self) -> Optional[int]:
        """Token ids are below this (text input); None for other inputs."""
        return self.input.vocab()

    @property
    def max_length(self) -> Optional[int]:
        """The longest input in tokens or steps (text, sequence, series); None for other inputs."""
        return self.input.longest()

    @property
    def num_outputs(self) -> int:
        if self.task == "classification":
            return len(self.classes or [])
        return self.input.label_width()

    @property
    def feature_columns(self) -> list[str]:
        return self.input.columns()

    # ---- transforms
    def transform_inputs(self, df: pd.DataFrame, *, truncate: bool = True) -> dict[str, np.ndarray]:
        """The model's inputs for the rows of `df` (its feature_columns): {"x"} or {"x", "len"}.

        A text or sequence longer than max_length keeps its head (text) or its most recent steps
        (sequence); with `truncate=False` (serving) it is a ValueError instead. Every bad value is a
        ValueError naming the column (and the row, or the file of an image)."""
        return self.input.transform(df, truncate=truncate)

    def transform_features(self, df: pd.DataFrame) -> np.ndarray:
        """Just the "x" of `transform_inputs`."""
        return self.transform_inputs(df)["x"]

    def transform_labels(self, values: pd.Series) -> np.ndarray:
        if self.task == "classification":
            index = {c: i for i, c in enumerate(self.classes or [])}
            return np.asarray([index.get(plain_value(v), UNKNOWN_LABEL) for v in values], dtype=np.int64)
        width = self.input.label_width()
        if width > 1:  # a list of the next `width` values per row (a forecast's horizon)
            y = np.stack([np.asarray(v, dtype=np.float64).reshape(-1) for v in values]) if len(values) else np.zeros((0, width))
        else:
            y = values.astype(np.float64).to_numpy()
        return ((y - self.target_mean) / self.target_std).astype(np.float32)

    def transform(self, df: pd.DataFrame) -> dict[str, np.ndarray]:
        """transform_inputs plus "y", the encoded label."""
        return {**self.transform_inputs(df), "y": self.transform_labels(df[self.label])}

    def decode(self, outputs: np.ndarray) -> list[Any]:
        """Model outputs (logits or a standardised value) -> labels in the data's own terms
        (a forecast of horizon > 1 gives a list of `horizon` values per row)."""
        if self.task == "classification":
            classes = self.classes or []
            return [classes[i] for i in outputs.argmax(axis=1)]
        values = outputs * self.target_std + self.target_mean
        if self.num_outputs > 1:
            return values.reshape(len(values), -1).tolist()
        return values.reshape(-1).tolist()

    # ---- persistence
    def to_dict(self) -> dict:
        return {
            "task": self.task,
            "label": self.label,
            "input": self.input.to_dict(),
            "classes": self.classes,
            "class_counts": self.class_counts,
            "target_mean": self.target_mean,
            "target_std": self.target_std,
            "train_rows": self.train_rows,
        }

    @classmethod
    def from_dict(cls, d: dict) -> "Preprocessor":
        """A fitted preprocessing saved by to_dict(), or by a version before input kinds (from_legacy)."""
        d = dict(d) if "input" in d else from_legacy(d)
        state = d.pop("input")
        if not isinstance(state, dict) or not isinstance(state.get("kind"), str):
            raise TypeError(f"input: expected the input kind's state with its `kind`, got {type(state).__name__}")
        return cls(input=kinds.from_dict(state), **d)

    def save(self, path: str | Path) -> None:
        Path(path).write_text(json.dumps(self.to_dict(), indent=2))

    @classmethod
    def load(cls, path: str | Path) -> "Preprocessor":
        return cls.from_dict(json.loads(Path(path).read_text()))
