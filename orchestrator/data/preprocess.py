"""Preprocessing fitted on the training split and replayed at inference.

Pure numpy/pandas: the same object transforms Ray Data batches during training and request
payloads in the serving replica. Its fitted state is plain JSON, saved in every checkpoint,
so loading a model never unpickles anything.
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Optional

import numpy as np
import pandas as pd

SPLIT_COLUMN = "__split"
SPLITS = ("train", "validation", "test")
UNKNOWN_LABEL = -1  # label not seen in training: ignored by the loss, counted wrong by accuracy


def _hashable_frame(df: pd.DataFrame) -> pd.DataFrame:
    """Array-valued cells (images) become bytes so pandas can hash them."""
    out = {}
    for col in sorted(df.columns):
        s = df[col]
        first = s.dropna().iloc[0] if s.notna().any() else None
        if isinstance(first, (list, tuple, np.ndarray)):
            s = s.map(lambda v: np.asarray(v, dtype=np.float64).tobytes())
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


@dataclass
class Preprocessor:
    task: str  # classification | regression
    label: str
    numeric: list[str] = field(default_factory=list)
    means: list[float] = field(default_factory=list)
    stds: list[float] = field(default_factory=list)
    categorical: dict[str, list[Any]] = field(default_factory=dict)
    image_column: Optional[str] = None
    image_shape: Optional[list[int]] = None
    image_mean: float = 0.0
    image_std: float = 1.0
    classes: Optional[list[Any]] = None
    target_mean: float = 0.0
    target_std: float = 1.0
    train_rows: int = 0

    # ---- shape of what the model sees
    @property
    def input_shape(self) -> list[int]:
        if self.image_shape:
            return list(self.image_shape)
        return [len(self.numeric) + sum(len(v) for v in self.categorical.values())]

    @property
    def num_outputs(self) -> int:
        return len(self.classes) if self.task == "classification" else 1

    @property
    def feature_columns(self) -> list[str]:
        if self.image_column:
            return [self.image_column]
        return list(self.numeric) + list(self.categorical)

    # ---- transforms
    def transform_features(self, df: pd.DataFrame) -> np.ndarray:
        n = len(df)
        if self.image_column:
            flat = int(np.prod(self.image_shape))
            try:
                x = np.stack([np.asarray(v, dtype=np.float32).reshape(-1) for v in df[self.image_column]]) if n else np.zeros((0, flat), np.float32)
            except (TypeError, ValueError) as e:
                raise ValueError(f"column {self.image_column!r} must hold numeric arrays: {e}") from None
            if x.shape[1] != flat:
                raise ValueError(
                    f"column {self.image_column!r} holds {x.shape[1]} values per row; data.image.shape "
                    f"{self.image_shape} needs {flat}"
                )
            x = (x - self.image_mean) / self.image_std
            return x.reshape(n, *self.image_shape).astype(np.float32)
        parts = []
        if self.numeric:
            num = df[self.numeric].astype(np.float64).to_numpy()
            if np.isinf(num).any():  # missing values are imputed below, but nothing can stand in for +/-inf
                bad = [c for c, b in zip(self.numeric, np.isinf(num).any(axis=0)) if b]
                raise ValueError(f"column{'s' * (len(bad) > 1)} {', '.join(map(repr, bad))}: +inf/-inf values cannot be standardised; replace or drop them")
            means = np.asarray(self.means)
            num = np.where(np.isnan(num), means, num)  # impute with the training mean
            parts.append((num - means) / np.asarray(self.stds))
        for col, cats in self.categorical.items():
            values = df[col].astype(object).to_numpy()
            onehot = np.zeros((n, len(cats)), dtype=np.float64)
            index = {c: i for i, c in enumerate(cats)}
            for r, v in enumerate(values):
                i = index.get(plain_value(v))
                if i is not None:  # unseen category: all zeros
                    onehot[r, i] = 1.0
            parts.append(onehot)
        return np.concatenate(parts, axis=1).astype(np.float32) if parts else np.zeros((n, 0), np.float32)

    def transform_labels(self, values: pd.Series) -> np.ndarray:
        if self.task == "classification":
            index = {c: i for i, c in enumerate(self.classes or [])}
            return np.asarray([index.get(plain_value(v), UNKNOWN_LABEL) for v in values], dtype=np.int64)
        y = values.astype(np.float64).to_numpy()
        return ((y - self.target_mean) / self.target_std).astype(np.float32)

    def transform(self, df: pd.DataFrame) -> dict[str, np.ndarray]:
        return {"x": self.transform_features(df), "y": self.transform_labels(df[self.label])}

    def decode(self, outputs: np.ndarray) -> list[Any]:
        """Model outputs (logits or a standardised value) -> labels in the data's own terms."""
        if self.task == "classification":
            return [self.classes[i] for i in outputs.argmax(axis=1)]
        return (outputs.reshape(-1) * self.target_std + self.target_mean).tolist()

    # ---- persistence
    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "Preprocessor":
        return cls(**d)

    def save(self, path: str | Path) -> None:
        Path(path).write_text(json.dumps(self.to_dict(), indent=2))

    @classmethod
    def load(cls, path: str | Path) -> "Preprocessor":
        return cls.from_dict(json.loads(Path(path).read_text()))


def plain_value(v: Any, *, nan_as_none: bool = False) -> Any:
    """numpy scalars and arrays -> Python scalars and lists (all the way down), so values compare
    and serialise as JSON values; with `nan_as_none`, NaN becomes None (JSON has no NaN)."""
    if isinstance(v, np.ndarray):
        v = v.tolist()
    if isinstance(v, (list, tuple)):
        return [plain_value(x, nan_as_none=nan_as_none) for x in v]
    if isinstance(v, np.generic):
        v = v.item()
    if nan_as_none and isinstance(v, float) and math.isnan(v):
        return None
    return v
