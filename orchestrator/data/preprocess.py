"""Preprocessing fitted on the training split and replayed at inference.

Pure numpy/pandas: the same object transforms Ray Data batches during training and request
payloads in the serving replica. Its fitted state is plain JSON, saved in every checkpoint,
so loading a model never unpickles anything.
"""

from __future__ import annotations

import json
import math
import os
import stat
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Optional

import numpy as np
import pandas as pd

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


SERIES_TARGET = "__target"  # column of a series' windows that holds the values to forecast
IMAGE_MODES = {1: "L", 3: "RGB", 4: "RGBA"}  # decoded image files: channels -> PIL mode


@dataclass
class Preprocessor:
    """The fitted state of one job's input kind (`kind`: table, image, text, sequence or series) and its label.

    Entry points (the same for training, evaluation and serving):
    - `transform_inputs(df) -> dict[str, np.ndarray]`: the model's inputs for every kind, {"x": ...} for
      table and image input, {"x": ..., "len": ...} for text (int64 token ids [n, max_length]), sequence
      (float32 [n, max_length, features]) and series (float32 [n, window, 1]); "len" (int64 [n]) counts
      each row's real steps. Hand it to `models.build.forward` as tensors.
    - `transform_features(df) -> np.ndarray`: just "x" (what table and image callers used before).
    - `transform(df)`: transform_inputs plus "y", the encoded label (training and evaluation).
    - `decode(outputs)`: model outputs -> labels in the data's own terms.
    """

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
    image_source: str = "array"  # array: flat numbers; path: image file paths; bytes: encoded image files
    image_root: Optional[str] = None  # folder that relative image paths resolve against (the source's folder)
    text_column: Optional[str] = None
    tokenizer: Optional[dict] = None  # orchestrator.data.text state (a bpe one holds its tokenizer.json)
    text_max_length: int = 0  # tokens per text, the leading CLS included
    text_lowercase: bool = False
    text_vocab_size: int = 0
    sequence_column: Optional[str] = None
    sequence_max_length: int = 0
    sequence_features: int = 0
    sequence_means: list[float] = field(default_factory=list)  # per feature, over every real step of the training split
    sequence_stds: list[float] = field(default_factory=list)
    series_column: Optional[str] = None
    series_window: int = 0
    series_horizon: int = 0
    series_mean: float = 0.0  # of the training period's points
    series_std: float = 1.0
    classes: Optional[list[Any]] = None
    class_counts: Optional[list[int]] = None  # rows of each class in the training split (counted for train.class_weights: balanced)
    target_mean: float = 0.0
    target_std: float = 1.0
    train_rows: int = 0

    # ---- shape of what the model sees
    @property
    def kind(self) -> str:
        """The input kind: table, image, text, sequence or series."""
        if self.text_column:
            return "text"
        if self.sequence_column:
            return "sequence"
        if self.series_column:
            return "series"
        return "image" if self.image_column else "table"

    @property
    def input_shape(self) -> list[int]:
        """Shape of one row of "x" (at most; text and sequence batches may be trimmed to their longest row)."""
        kind = self.kind
        if kind == "text":
            return [self.text_max_length]
        if kind == "sequence":
            return [self.sequence_max_length, self.sequence_features]
        if kind == "series":
            return [self.series_window, 1]
        if self.image_shape:
            return list(self.image_shape)
        return [len(self.numeric) + sum(len(v) for v in self.categorical.values())]

    @property
    def vocab_size(self) -> Optional[int]:
        """Token ids are below this (text input); None for other inputs."""
        return self.text_vocab_size if self.kind == "text" else None

    @property
    def max_length(self) -> Optional[int]:
        """The longest input in tokens or steps (text, sequence, series); None for other inputs."""
        return self.input_shape[0] if self.kind in ("text", "sequence", "series") else None

    @property
    def num_outputs(self) -> int:
        if self.task == "classification":
            return len(self.classes)
        return self.series_horizon if self.series_column else 1

    @property
    def feature_columns(self) -> list[str]:
        column = self.text_column or self.sequence_column or self.series_column or self.image_column
        if column:
            return [column]
        return list(self.numeric) + list(self.categorical)

    # ---- transforms
    def transform_inputs(self, df: pd.DataFrame, *, truncate: bool = True) -> dict[str, np.ndarray]:
        """The model's inputs for the rows of `df` (its feature_columns), for every input kind:
        {"x"} (table, image) or {"x", "len"} (text, sequence, series); see the class docstring.

        A text or sequence longer than max_length keeps its head (text) or its most recent steps
        (sequence); with `truncate=False` (serving) it is a ValueError instead. Every bad value is a
        ValueError naming the column (and the row, or the file of an image)."""
        kind = self.kind
        if kind == "text":
            return self._text_inputs(df[self.text_column], truncate)
        if kind == "sequence":
            return self._sequence_inputs(df[self.sequence_column], truncate)
        if kind == "series":
            return self._series_inputs(df[self.series_column])
        return {"x": self._features(df)}

    def transform_features(self, df: pd.DataFrame) -> np.ndarray:
        """Just the "x" of `transform_inputs` (table and image input need nothing else)."""
        return self.transform_inputs(df)["x"]

    def _text_inputs(self, values: pd.Series, truncate: bool) -> dict[str, np.ndarray]:
        from orchestrator.data.text import TextInputError, tokenizer_from_state

        tok = getattr(self, "_tokenizer", None)
        if tok is None:  # built once per Preprocessor (a bpe one parses its tokenizer.json)
            tok = self._tokenizer = tokenizer_from_state(self.tokenizer)
        texts = list(values)
        if self.text_lowercase:
            texts = [t.lower() if isinstance(t, str) else t for t in texts]
        try:
            ids, lengths = tok.encode(texts, self.text_max_length, add_cls=True, truncate=truncate)
        except TextInputError as e:
            raise ValueError(f"column {self.text_column!r}: row {e.index}: {str(e).split(': ', 1)[1]}") from None
        return {"x": ids, "len": lengths}

    def _sequence_inputs(self, values: pd.Series, truncate: bool) -> dict[str, np.ndarray]:
        from orchestrator.data.sequences import SequenceInputError, pad_sequences

        rows = [v.tolist() if isinstance(v, np.ndarray) and v.dtype == object else v for v in values]
        try:
            x, lengths = pad_sequences(rows, self.sequence_max_length, num_features=self.sequence_features, truncate=truncate)
        except SequenceInputError as e:
            raise ValueError(f"column {self.sequence_column!r}: {e}") from None
        except TypeError as e:
            raise ValueError(f"column {self.sequence_column!r}: {e}") from None
        # One fixed length for every batch (Ray Data stacks rows into one tensor column); forward()
        # trims each batch back to its longest real row, so the padding costs no compute.
        out = np.zeros((len(rows), self.sequence_max_length, self.sequence_features), dtype=np.float32)
        real = np.arange(x.shape[1])[None, :] < lengths[:, None]
        std = (x - np.asarray(self.sequence_means, np.float32)) / np.asarray(self.sequence_stds, np.float32)
        out[:, : x.shape[1]] = np.where(real[:, :, None], std, 0.0)
        return {"x": out, "len": lengths}

    def _series_inputs(self, values: pd.Series) -> dict[str, np.ndarray]:
        w, col = self.series_window, self.series_column
        rows = []
        for i, v in enumerate(values):
            try:
                a = np.asarray(v, dtype=np.float64).reshape(-1)
            except (TypeError, ValueError):
                raise ValueError(f"column {col!r}: row {i}: a window must be a list of {w} numbers") from None
            if a.size != w:
                raise ValueError(f"column {col!r}: row {i}: a window holds {w} values (data.series.window), got {a.size}")
            if not np.isfinite(a).all():
                raise ValueError(f"column {col!r}: row {i}: a window holds a missing or infinite value")
            rows.append(a)
        x = np.stack(rows) if rows else np.zeros((0, w))
        x = ((x - self.series_mean) / self.series_std).astype(np.float32)[:, :, None]
        return {"x": x, "len": np.full(len(rows), w, dtype=np.int64)}

    def image_pixels(self, values: pd.Series) -> np.ndarray:
        """Image cells -> float32 [n, channels, height, width], not yet standardised. Arrays are
        reshaped; paths and bytes are decoded with PIL to the channels of image_shape and resized."""
        c, h, w = self.image_shape
        col = self.image_column
        if self.image_source == "array":
            flat = c * h * w
            try:
                x = (
                    np.stack([np.asarray(v, dtype=np.float32).reshape(-1) for v in values])
                    if len(values)
                    else np.zeros((0, flat), np.float32)
                )
            except (TypeError, ValueError) as e:
                raise ValueError(f"column {col!r} must hold numeric arrays: {e}") from None
            if x.shape[1] != flat:
                raise ValueError(f"column {col!r} holds {x.shape[1]} values per row; data.image.shape {self.image_shape} needs {flat}")
            return x.reshape(len(x), c, h, w)
        out = np.zeros((len(values), c, h, w), dtype=np.float32)
        for i, v in enumerate(values):
            if self.image_source == "path":
                if not isinstance(v, str) or not v.strip():
                    raise ValueError(f"column {col!r}: row {i}: expected an image file path, got {v!r}")
                try:
                    path = resolve_image_path(v, self.image_root)
                except ValueError as e:
                    raise ValueError(f"{e} (column {col!r})") from None
                data, where = read_image_file(path, col), f"{path} (column {col!r})"
            else:
                if not isinstance(v, (bytes, bytearray)):
                    raise ValueError(f"column {col!r}: row {i}: expected encoded image bytes, got {type(v).__name__}")
                if not v:
                    raise ValueError(f"column {col!r}: row {i}: empty image bytes (0 bytes: no image file)")
                where, data = f"column {col!r}: row {i}", bytes(v)
            out[i] = decode_image(data, self.image_shape, where)
        return out

    def _features(self, df: pd.DataFrame) -> np.ndarray:
        n = len(df)
        if self.image_column:
            x = self.image_pixels(df[self.image_column])
            return ((x - self.image_mean) / self.image_std).astype(np.float32)
        parts = []
        if self.numeric:
            num = df[self.numeric].astype(np.float64).to_numpy()
            if np.isinf(num).any():  # missing values are imputed below, but nothing can stand in for +/-inf
                bad = [c for c, b in zip(self.numeric, np.isinf(num).any(axis=0)) if b]
                raise ValueError(
                    f"column{'s' * (len(bad) > 1)} {', '.join(map(repr, bad))}: +inf/-inf values cannot be standardised; replace or drop them"
                )
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
        if self.series_column and self.series_horizon > 1:  # a list of the next `horizon` values per window
            y = (
                np.stack([np.asarray(v, dtype=np.float64).reshape(-1) for v in values])
                if len(values)
                else np.zeros((0, self.series_horizon))
            )
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
            return [self.classes[i] for i in outputs.argmax(axis=1)]
        values = outputs * self.target_std + self.target_mean
        if self.num_outputs > 1:
            return values.reshape(len(values), -1).tolist()
        return values.reshape(-1).tolist()

    # ---- persistence
    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "Preprocessor":
        return cls(**d)  # fields added later keep their defaults for older checkpoints

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


MAX_IMAGE_FILE_BYTES = 64 << 20  # one image file; larger ones (and anything not a regular file) are refused unread


def resolve_image_path(path: str, root: Optional[str]) -> str:
    """An image path of the data: a URI or an absolute path as is; a relative path resolves against
    `root` (the data file's folder) and must stay inside it: `..` that climbs out of it is refused
    (symbolic links inside it are followed, as the data's author laid them)."""
    from orchestrator.spec import is_uri

    if is_uri(path) or os.path.isabs(path) or not root:
        return path
    rel = os.path.normpath(path)  # only the relative part: a URI root's "//" must survive
    if rel == ".." or rel.startswith(".." + os.sep):
        raise ValueError(
            f"{path}: a relative image path must stay inside the data's folder {root} (use an absolute path to reach elsewhere)"
        )
    return os.path.join(root, rel)


def read_image_file(path: str, column: str, limit: int = MAX_IMAGE_FILE_BYTES) -> bytes:
    """The bytes of one image file (local path or any URI pyarrow reads); a ValueError names the file.

    Only a regular file of at most `limit` bytes is read: a FIFO, a device such as /dev/zero or a
    folder is refused before a byte is read, and a file that grows past the limit while being
    read is refused too."""
    from orchestrator.spec import is_uri

    def too_large(n: str) -> ValueError:
        return ValueError(f"{path}: image file of {n} bytes (column {column!r}); at most {limit} bytes are read")

    try:
        if is_uri(path):
            import pyarrow.fs as pafs

            fs, inner = pafs.FileSystem.from_uri(path)
            info = fs.get_file_info(inner)
            if info.type == pafs.FileType.NotFound:
                raise FileNotFoundError(path)
            if info.type != pafs.FileType.File:
                raise ValueError(f"{path}: not a regular file (column {column!r})")
            if info.size is not None and info.size > limit:
                raise too_large(str(info.size))
            with fs.open_input_stream(inner) as f:
                data = f.read(limit + 1)
        else:
            # O_NONBLOCK: opening a FIFO must not wait for a writer; fstat judges what was opened
            fd = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_CLOEXEC", 0))
            try:
                st = os.fstat(fd)
            except OSError:
                os.close(fd)
                raise
            if not stat.S_ISREG(st.st_mode):
                os.close(fd)
                what = "a folder" if stat.S_ISDIR(st.st_mode) else "a FIFO" if stat.S_ISFIFO(st.st_mode) else "a device or special file"
                raise ValueError(f"{path}: {what}, not an image file (column {column!r})")
            with os.fdopen(fd, "rb") as f:
                if st.st_size > limit:
                    raise too_large(str(st.st_size))
                data = f.read(limit + 1)
        if len(data) > limit:
            raise too_large(f"more than {limit}")
        return data
    except FileNotFoundError:
        raise ValueError(f"{path}: image file not found (column {column!r})") from None
    except ValueError:
        raise
    except OSError as e:
        raise ValueError(f"{path}: cannot read the image file (column {column!r}): {e.strerror or e}") from None


def image_header_problem(data: bytes) -> Optional[str]:
    """What is wrong with an encoded image's header (no pixel is decoded), or None when PIL reads it."""
    import io

    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(io.BytesIO(data)):
            return None
    except UnidentifiedImageError:
        return f"not a readable image ({len(data)} bytes in no image format PIL knows)"
    except Image.DecompressionBombError as e:
        return f"not a readable image ({e})"
    except Exception as e:  # truncated or damaged headers
        return f"not a readable image ({type(e).__name__}: {e})"


def decode_image(data: bytes, shape: list[int], where: str) -> np.ndarray:
    """Encoded image (PNG, JPEG, ...) -> float32 [channels, height, width] in 0..255, converted to
    the channels of `shape` (1 grey, 3 RGB, 4 RGBA) and resized to its height x width."""
    import io

    from PIL import Image, UnidentifiedImageError

    c, h, w = shape
    if c not in IMAGE_MODES:
        raise ValueError(f"{where}: image files decode to 1, 3 or 4 channels; data.image.shape asks for {c}")
    try:
        with Image.open(io.BytesIO(data)) as img:
            if img.mode.startswith("I;16") or (img.mode == "I" and img.format == "PNG"):
                return _sixteen_bit(img, shape)
            img = img.convert(IMAGE_MODES[c])
            if img.size != (w, h):
                img = img.resize((w, h), Image.Resampling.BILINEAR)
            a = np.asarray(img, dtype=np.float32)
    except UnidentifiedImageError:
        raise ValueError(f"{where}: not a readable image (unknown or broken image format)") from None
    except Exception as e:  # PIL raises OSError, SyntaxError, ... for truncated or damaged files
        raise ValueError(f"{where}: not a readable image ({type(e).__name__}: {e})") from None
    return a.reshape(h, w, c).transpose(2, 0, 1)


def _sixteen_bit(img, shape: list[int]) -> np.ndarray:
    """A 16-bit grey image -> float32 [channels, height, width] on the same 0..255 scale as 8-bit
    images (value / 257), resized in floating point; PIL's own conversion to 8 bits clips instead
    (0..65535 became 68..255). Grey fills every colour channel; alpha is opaque."""
    from PIL import Image

    c, h, w = shape
    a = np.asarray(img, dtype=np.float32) * (255.0 / 65535.0)
    if a.shape != (h, w):
        a = np.asarray(Image.fromarray(a, mode="F").resize((w, h), Image.Resampling.BILINEAR), dtype=np.float32)
    channels = [a] * min(c, 3) + ([np.full_like(a, 255.0)] if c == 4 else [])
    return np.stack(channels)
