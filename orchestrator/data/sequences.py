"""Numeric sequences and time-series windows (pure numpy, no torch, no Ray).

- `pad_sequences`: variable-length rows (lists of numbers, or lists of equal-length vectors) ->
  one float32 batch [n, T, F] plus lengths, padded per batch; models mask by the lengths.
- `make_windows`: one ordered series -> (input window, the next `horizon` values) pairs.
- `chronological_split`: train/validation/test index ranges over those windows, in time order,
  with a gap so no validation or test window shares a single point with a training window.

Nothing here is fitted, so there is no state to save: the parameters (max_length, window, horizon)
live in the job spec that every checkpoint already carries.
"""

from __future__ import annotations

import math
from numbers import Real
from typing import Any, Optional, Sequence

import numpy as np

SPLITS = ("train", "validation", "test")


class SequenceInputError(ValueError):
    """A row that cannot become a sequence; `index` is its position in the rows passed in."""

    def __init__(self, index: int, message: str):
        self.index = index
        super().__init__(f"row {index}: {message}")


def _is_vector(step: Any) -> bool:
    return isinstance(step, (Sequence, np.ndarray)) and not isinstance(step, (str, bytes))


def row_array(i: int, row: Any) -> np.ndarray:
    """One row -> float64 [steps, features], or a SequenceInputError naming the row (and step)."""
    if not _is_vector(row):
        raise SequenceInputError(i, f"expected a list of numbers or a list of equal-length vectors, got {type(row).__name__}")
    if len(row) == 0:
        raise SequenceInputError(i, "empty sequence (it needs at least one step)")
    try:  # fast path: a well-formed numeric row converts in one go
        a = np.asarray(row)
    except ValueError:  # ragged vectors
        a = None
    if a is not None and a.dtype.kind in "iuf" and a.ndim in (1, 2) and a.size:
        a = a.astype(np.float64).reshape(len(a), -1)
        # numpy quietly turns True into 1 when it sits among numbers; a bool is not a reading
        hidden_bool = not isinstance(row, np.ndarray) and any(
            isinstance(v, (bool, np.bool_)) for step in row for v in (step if _is_vector(step) else (step,))
        )
        if np.isfinite(a).all() and not hidden_bool:
            return a
    # slow path: find the first bad step and say what is wrong with it
    vectors = _is_vector(row[0])
    width = len(row[0]) if vectors else 1
    if vectors and width == 0:
        raise SequenceInputError(i, "step 0 is an empty vector")
    for s, step in enumerate(row):
        if _is_vector(step) != vectors:
            raise SequenceInputError(i, f"step {s} mixes numbers and vectors; use one or the other")
        vals = list(step) if vectors else [step]
        if len(vals) != width:
            raise SequenceInputError(i, f"step {s} has {len(vals)} values, earlier steps have {width}")
        for v in vals:
            if v is None:  # a null inside an Arrow list (pandas writes NaN in a list as null)
                raise SequenceInputError(i, f"step {s}: missing value")
            if isinstance(v, (bool, np.bool_)) or not isinstance(v, (Real, np.number)):
                raise SequenceInputError(i, f"step {s}: non-numeric value {v!r}")
            if not math.isfinite(float(v)):
                raise SequenceInputError(i, f"step {s}: value {float(v)} is not finite")
    raise SequenceInputError(i, "expected a list of numbers or a list of equal-length vectors")  # e.g. deeper nesting


def pad_sequences(
    rows: list,
    max_length: Optional[int] = None,
    *,
    num_features: Optional[int] = None,
    truncate: bool = True,
) -> tuple[np.ndarray, np.ndarray]:
    """Rows -> (values float32 [n, T, F], lengths int64 [n]).

    A row is a list of numbers (F = 1) or a list of equal-length vectors (F = their length); every
    row must have the same F (and F == `num_features` when given, e.g. the F seen in training).
    T is the longest row, capped at `max_length`. Padding is 0.0 after each row's last step.
    Rows longer than `max_length` keep their most recent `max_length` steps (the end of a
    reading is closest to what is predicted), or, with `truncate=False` (serving), raise.
    Every problem raises `SequenceInputError` (a ValueError) naming the row index.
    """
    if isinstance(rows, (str, bytes)) or not isinstance(rows, (Sequence, np.ndarray)):
        raise TypeError(f"rows must be a list of sequences, got {type(rows).__name__}")
    if max_length is not None and (isinstance(max_length, bool) or not isinstance(max_length, (int, np.integer)) or max_length < 1):
        raise ValueError(f"max_length must be a positive integer or None, got {max_length!r}")
    arrays = []
    features = num_features
    for i, row in enumerate(rows):
        a = row_array(i, row)
        if features is None:
            features = a.shape[1]
        elif a.shape[1] != features:
            what = f"{num_features} (as in training)" if num_features is not None else f"{features} like the rows before"
            raise SequenceInputError(i, f"steps have {a.shape[1]} values, expected {what}")
        if max_length is not None and len(a) > max_length:
            if not truncate:
                raise SequenceInputError(i, f"{len(a)} steps, more than max_length {max_length}")
            a = a[-max_length:]
        arrays.append(a)
    features = features if features is not None else 1
    t = max((len(a) for a in arrays), default=0)
    values: np.ndarray = np.zeros((len(arrays), t, features), dtype=np.float32)
    lengths: np.ndarray = np.zeros(len(arrays), dtype=np.int64)
    for i, a in enumerate(arrays):
        values[i, : len(a)] = a
        lengths[i] = len(a)
    return values, lengths


def _positive_int(name: str, v: Any) -> int:
    if isinstance(v, bool) or not isinstance(v, (int, np.integer)) or v < 1:
        raise ValueError(f"{name} must be a positive integer, got {v!r}")
    return int(v)


def make_windows(values: np.ndarray, window: int, horizon: int) -> tuple[np.ndarray, np.ndarray]:
    """One ordered series -> (X float32 [m, window, 1], y float32 [m] if horizon == 1 else [m, horizon]).

    Window i reads points i .. i+window-1 and targets the next `horizon` points,
    i+window .. i+window+horizon-1; m = len(values) - window - horizon + 1. Windows are in time
    order, so index i is also the window's position in time (what `chronological_split` splits).
    """
    window, horizon = _positive_int("window", window), _positive_int("horizon", horizon)
    try:
        v = np.asarray(values, dtype=np.float64)
    except (TypeError, ValueError) as e:
        raise ValueError(f"series values must be numeric: {e}") from None
    if v.ndim != 1:
        raise ValueError(f"series values must be one-dimensional, got shape {v.shape}")
    bad = np.flatnonzero(~np.isfinite(v))
    if bad.size:
        raise ValueError(f"series point {int(bad[0])} is {v[bad[0]]}; fill or drop missing values before windowing")
    m = len(v) - window - horizon + 1
    if m < 1:
        raise ValueError(f"a series of {len(v)} points is too short for window {window} + horizon {horizon}")
    span = np.lib.stride_tricks.sliding_window_view(v, window + horizon)[:m]
    x = span[:, :window, None].astype(np.float32)
    y = span[:, window:].astype(np.float32)
    return x, (y[:, 0] if horizon == 1 else y)


def chronological_split(n_windows: int, fractions: tuple[float, float, float], window: int, horizon: int) -> dict[str, range]:
    """Window index ranges {"train", "validation", "test"}, in time order, that share no point.

    The windows are cut in order by `fractions` (of `n_windows`); then the first
    window + horizon - 1 windows of the validation and of the test block are dropped. Window i
    touches points i .. i+window+horizon-1, so after the gap no later window's inputs or targets
    touch any point (input or target) of an earlier split: nothing from the training period leaks
    into validation or test. A split whose fraction is 0 is an empty range; a split with a
    positive fraction that the gap empties raises ValueError.
    """
    n_windows = _positive_int("n_windows", n_windows)
    window, horizon = _positive_int("window", window), _positive_int("horizon", horizon)
    f = [float(x) for x in fractions]
    if len(f) != 3 or any(not math.isfinite(x) or x < 0 for x in f) or f[0] <= 0 or abs(sum(f) - 1.0) > 1e-6:
        raise ValueError(f"fractions must be three non-negative numbers summing to 1 with train > 0, got {tuple(fractions)}")
    gap = window + horizon - 1
    cut1 = int(round(n_windows * f[0]))
    cut2 = int(round(n_windows * (f[0] + f[1])))
    cut2 = max(cut2, cut1)
    out = {
        "train": range(0, cut1),
        "validation": range(min(cut1 + gap, cut2), cut2),
        "test": range(min(cut2 + gap, n_windows), n_windows),
    }
    for name, frac in zip(SPLITS, f):
        if frac > 0 and len(out[name]) == 0:
            raise ValueError(
                f"{n_windows} windows are too few for a {name} split: with window {window} and horizon {horizon} "
                f"each split boundary drops {gap} windows so no point is shared; use a longer series, a smaller "
                f"window or a larger {name} fraction"
            )
    return out
