"""image: one image per row (data.image), as a flat numeric array, an image file's path or its bytes.

The column's Arrow type decides the form: a list of numbers (array), a string (path, relative to
the source's folder) or binary (an encoded file). Files decode with PIL to data.image.shape's
channels and size. Pixels are standardised with the training split's mean and std over all values.
A served request sends an array as its flat list, and a file base64-encoded (never a path).
"""

from __future__ import annotations

import base64
import binascii
import io
import math
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Annotated, Any, Callable, Optional

import numpy as np
import pandas as pd
import pyarrow as pa
from pydantic import Field

from orchestrator.data.images import IMAGE_MODES, decode_image, image_header_problem, read_image_file, resolve_image_path
from orchestrator.data.kinds.base import (
    FLOAT32_MAX,
    ColumnCheck,
    Columns,
    InputKind,
    RequestTooLarge,
    TrainSplit,
    Where,
    is_list_type,
    is_number_type,
    is_text_type,
    list_cell,
)
from orchestrator.data.values import is_missing
from orchestrator.errors import DataError, OrchestratorError, shown_value
from orchestrator.spec import ImageSpec

if TYPE_CHECKING:
    from pathlib import Path

    from orchestrator.spec import JobSpec

# Image files in requests are measured from their headers before any pixel is decoded. Decoding
# cost about 75 ms per 4096 x 4096 PNG in issue 20's report (45 of them: 3.4 s), and a highly compressible PNG of that
# size fits in 16 KB, so without a bound per request one 1 MB body could ask for seconds of decoding
# (45 such images: 3.4 s) and delay every request batched behind it (docs/reliability.md).
MAX_IMAGE_PIXELS = 4096 * 4096  # one image, whatever the model's input size
MIN_IMAGE_PIXELS_CAP = 1024 * 1024  # the per-image cap is never below this...
IMAGE_PIXELS_PER_INPUT_PIXEL = 256  # ...and otherwise 256 x the model's input pixels (16 x its width and height)
MAX_REQUEST_PIXELS = 4096 * 4096  # all images of one request together


@dataclass
class ImageInput(InputKind):
    name = "image"
    section = ImageSpec
    section_description = "Image input instead of tabular features."

    column: str = ""
    shape: list[int] = None  # type: ignore[assignment]  # [channels, height, width]
    mean: float = 0.0
    std: float = 1.0
    source: str = "array"  # array: flat numbers; path: image file paths; bytes: encoded image files
    root: Optional[str] = None  # folder that relative image paths resolve against (the source's folder)

    # ---------------------------------------------------------------- spec and source columns
    @classmethod
    def check_type(cls, check: ColumnCheck, column: str, t: pa.DataType) -> str:
        shape = cls.section_of(check.spec.data).shape
        if is_list_type(t) and is_number_type(t.value_type):
            source = "array"
        elif is_text_type(t):
            source = "path"
        elif pa.types.is_binary(t) or pa.types.is_large_binary(t) or pa.types.is_binary_view(t):
            source = "bytes"
        else:
            raise DataError(
                f"{check.src}: column {column!r} (data.image.column) has type {t}; it must be a list of numbers, "
                "an image file path (a string) or an encoded image file (binary)"
            )
        if source != "array" and shape[0] not in (1, 3, 4):
            raise DataError(
                f"{check.src}: data.image.shape {shape}: image files decode to 1 (grey), 3 (RGB) or 4 (RGBA) channels, not {shape[0]}"
            )
        return source

    @classmethod
    def row_check(cls, spec: JobSpec, columns: Columns, src: str) -> Optional[Callable[[Any, str], Optional[str]]]:
        from orchestrator.data.files import image_root

        if columns.form not in ("path", "bytes"):
            return None
        source, root = columns.form, image_root(src)

        def check(v: Any, where: str) -> Optional[str]:
            if source == "path":
                if is_missing(v) or v == "":
                    return "missing image file path (an empty cell)"
                if not isinstance(v, str) or not v.strip():
                    return f"expected an image file path, got {shown_value(v)}"
                try:
                    resolve_image_path(v, root)
                except ValueError as e:
                    return str(e)
                return None
            if is_missing(v):
                return "missing image (no bytes)"
            if not isinstance(v, (bytes, bytearray)):
                return f"expected encoded image bytes, got {type(v).__name__}"
            if not v:
                return "empty image bytes (0 bytes: no image file)"
            return image_header_problem(bytes(v))

        return check

    @classmethod
    def expands(cls, columns: Columns) -> bool:
        return columns.form != "array"

    # ----------------------------------------------------------------------------- fitting
    @classmethod
    def fit(cls, train: TrainSplit) -> ImageInput:
        from orchestrator.data.files import image_root

        d, cols = train.spec.data, train.columns
        state = cls(column=cols.inputs[0], shape=list(cls.section_of(d).shape), source=cols.form, root=image_root(train.src))
        if state.source == "array":
            stats = train.sums(array_moments, None, ["__s", "__ss", "__n"], column=state.column)
        else:
            stats = train.sums(file_moments, [state.column], ["__s", "__ss", "__n"], state=state.to_dict())
        n = stats["sum(__n)"] or 0
        if n == 0:
            raise DataError(f"{d.source}: the training split is empty")
        mean = stats["sum(__s)"] / n
        var = max(stats["sum(__ss)"] / n - mean * mean, 0.0)
        state.mean, state.std = float(mean), float(np.sqrt(var)) or 1.0
        return state

    # ------------------------------------------------------------------ what the model sees
    def columns(self) -> list[str]:
        return [self.column]

    def input_shape(self) -> list[int]:
        return list(self.shape)

    def transform(self, df: pd.DataFrame, *, truncate: bool = True) -> dict[str, np.ndarray]:
        x = self.pixels(df[self.column])
        return {"x": ((x - self.mean) / self.std).astype(np.float32)}

    def pixels(self, values: pd.Series) -> np.ndarray:
        """Image cells -> float32 [n, channels, height, width], not yet standardised. Arrays are
        reshaped; paths and bytes are decoded with PIL to the channels of `shape` and resized."""
        c, h, w = self.shape
        col = self.column
        if self.source == "array":
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
                raise ValueError(f"column {col!r} holds {x.shape[1]} values per row; data.image.shape {self.shape} needs {flat}")
            return x.reshape(len(x), c, h, w)
        out: np.ndarray = np.zeros((len(values), c, h, w), dtype=np.float32)
        for i, v in enumerate(values):
            if self.source == "path":
                if not isinstance(v, str) or not v.strip():
                    raise ValueError(f"column {col!r}: row {i}: expected an image file path, got {v!r}")
                try:
                    path = resolve_image_path(v, self.root)
                except ValueError as e:
                    raise ValueError(f"{e} (column {col!r})") from None
                data, where = read_image_file(path, col), f"{path} (column {col!r})"
            else:
                if not isinstance(v, (bytes, bytearray)):
                    raise ValueError(f"column {col!r}: row {i}: expected encoded image bytes, got {type(v).__name__}")
                if not v:
                    raise ValueError(f"column {col!r}: row {i}: empty image bytes (0 bytes: no image file)")
                where, data = f"column {col!r}: row {i}", bytes(v)
            out[i] = decode_image(data, self.shape, where)
        return out

    # ---------------------------------------------------------------------------- serving
    def files(self) -> bool:
        """Whether the model was trained on image files (paths or encoded bytes): requests send the file, base64-encoded."""
        return self.source != "array"

    def record_fields(self) -> dict[str, Any]:
        if self.files():
            return {
                "f0": (
                    Annotated[str, Field(strict=True, min_length=1)],
                    Field(
                        alias=self.column,
                        description=f"image file (PNG, JPEG, ...) as base64 text, decoded and resized to {self.shape} (channels, height, width)",
                        json_schema_extra={"contentEncoding": "base64", "contentMediaType": "image/*"},
                    ),
                )
            }
        n = int(math.prod(self.shape))
        item = Annotated[float, Field(strict=True, allow_inf_nan=False)]
        return {
            "f0": (
                list[item],  # type: ignore[valid-type]
                Field(
                    alias=self.column,
                    min_length=n,
                    max_length=n,
                    description=f"image {self.shape} (channels, height, width) as a flat list of {n} numbers",
                ),
            )
        }

    def example_file(self) -> bytes:
        """A PNG of the trained shape, every pixel at the training mean."""
        from PIL import Image

        c, h, w = self.shape
        level = int(min(255, max(0, round(float(self.mean)))))
        mode = IMAGE_MODES.get(c, "RGB")
        buf = io.BytesIO()
        Image.new(mode, (w, h), level if c == 1 else (level,) * len(mode)).save(buf, format="PNG")
        return buf.getvalue()

    def example(self) -> dict[str, Any]:
        if self.files():
            return {self.column: base64.b64encode(self.example_file()).decode("ascii")}
        return {self.column: [round(float(self.mean), 4)] * int(math.prod(self.shape))}

    def describe(self) -> dict[str, Any]:
        out: dict[str, Any] = {"kind": self.name, "column": self.column, "shape": self.shape, "source": self.source}
        if self.files():
            out.update(type="string", encoding="base64 of an image file (PNG, JPEG, ...), decoded and resized to shape")
        else:
            out.update(type="list of numbers", encoding=f"flat list of {int(math.prod(self.shape))} numbers (channels, height, width)")
        return out

    def note(self) -> str:
        return f"Input: an image. Each record's `{self.column}` is " + (
            f"an image file (PNG, JPEG, ...) as base64 text, decoded and resized to {self.shape}."
            if self.files()
            else f"a flat list of {int(math.prod(self.shape))} numbers, shape {self.shape}."
        )

    def value_bounds(self) -> dict[str, tuple[float, float]]:
        if self.files():  # decoded pixels are 0..255
            return {}
        m, s = float(self.mean), float(self.std)  # the pixels are cast to float32 before they are standardised
        return {self.column: (max(-FLOAT32_MAX, m - FLOAT32_MAX * s), min(FLOAT32_MAX, m + FLOAT32_MAX * s))}

    def for_requests(self) -> ImageInput:
        return replace(self, source="bytes", root=None) if self.files() else self

    def pixel_cap(self) -> int:
        """Most pixels one image file in a request may hold."""
        return image_pixel_cap(self.shape)

    def decode_requests(self, records: list[dict], where: Where) -> list[dict]:
        """base64 text -> the image file's bytes, in place; an error for text that is not base64 or bytes
        that are not an image (only the header is read here; transform decodes the pixels)."""
        if not self.files():
            return []
        from PIL import Image

        col, cap = self.column, self.pixel_cap()
        errors, total = [], 0
        for i, rec in enumerate(records):
            text = rec[col]
            if text.startswith("data:") and "," in text[:200]:  # a data URL: data:image/png;base64,....
                text = text.split(",", 1)[1]
            try:
                data = base64.b64decode("".join(text.split()), validate=True)
            except (binascii.Error, ValueError):
                errors.append(
                    {
                        "field": where(i, col),
                        "type": "base64",
                        "message": "not valid base64: send the image file's bytes base64-encoded (standard alphabet)",
                    }
                )
                continue
            try:
                with Image.open(io.BytesIO(data)) as img:
                    width, height = img.size
            except Image.DecompressionBombError:  # the header announces more pixels than PIL opens at all
                errors.append(
                    {
                        "field": where(i, col),
                        "type": "image_size",
                        "message": f"image of more than {2 * Image.MAX_IMAGE_PIXELS} pixels; this server decodes at most "
                        f"{cap} pixels per image: scale the image down before sending it",
                    }
                )
                continue
            except Exception:  # PIL's UnidentifiedImageError, truncated files, ...
                errors.append(
                    {
                        "field": where(i, col),
                        "type": "image_format",
                        "message": f"not an image file PIL can read ({len(data)} bytes after base64 decoding)",
                    }
                )
                continue
            if width * height > cap:
                errors.append(
                    {
                        "field": where(i, col),
                        "type": "image_size",
                        "message": f"image of {width} x {height} pixels ({width * height}); this server decodes at most {cap} "
                        f"pixels per image (the model takes {self.shape[2]} x {self.shape[1]}): "
                        "scale the image down before sending it",
                    }
                )
                continue
            total += width * height
            records[i] = {**rec, col: data}
        if not errors and total > MAX_REQUEST_PIXELS:
            raise RequestTooLarge(
                f"the {len(records)} images of this request hold {total} pixels in all; the server decodes at most "
                f"{MAX_REQUEST_PIXELS} pixels per request: send fewer or smaller images per request"
            )
        return errors

    def limits(self) -> dict[str, int]:
        return {"max_image_pixels": self.pixel_cap(), "max_request_pixels": MAX_REQUEST_PIXELS} if self.files() else {}

    def rows_are_requests(self) -> bool:
        return not self.files()

    # ------------------------------------------------------------------- predicting files
    def path_column(self) -> Optional[str]:
        return self.column if self.source == "path" else None

    def rooted(self, root: Optional[str]) -> ImageInput:
        return replace(self, root=root)

    @classmethod
    def request_value(cls, info: dict, value: Any, file: Path, row: int) -> Any:
        column = info.get("column") or ""
        if info.get("source") == "array":
            return list_cell(value, file, row, column)
        if isinstance(value, (bytes, bytearray)):
            return base64.b64encode(bytes(value)).decode("ascii")
        if info.get("source") == "path" and isinstance(value, str) and value.strip():
            try:
                path = resolve_image_path(value, str(file.parent))
                data = read_image_file(path, column)
                if image_header_problem(data):  # a file that is no image is never sent to the server
                    raise ValueError(f"{path}: not an image file PIL can read (column {column!r}); it was not sent")
            except ValueError as e:
                raise OrchestratorError(f"{file}: row {row}: {e}") from None
            return base64.b64encode(data).decode("ascii")
        return value  # base64 text already, or a mistake the server names


def image_pixel_cap(shape: list[int]) -> int:
    """Most pixels one image file in a request may hold, for a model taking `shape` (c, h, w)."""
    return min(MAX_IMAGE_PIXELS, max(MIN_IMAGE_PIXELS_CAP, IMAGE_PIXELS_PER_INPUT_PIXEL * shape[1] * shape[2]))


def array_moments(df: pd.DataFrame, *, column: str) -> pd.DataFrame:
    """Per row, the sum and the sum of squares of its values, and their count (Ray Data batch function)."""
    flat = [np.asarray(v, dtype=np.float64).reshape(-1) for v in df[column]]
    return pd.DataFrame(
        {
            "__s": [float(a.sum()) for a in flat],
            "__ss": [float((a * a).sum()) for a in flat],
            "__n": [a.size for a in flat],
        }
    )


def file_moments(df: pd.DataFrame, *, state: dict) -> pd.DataFrame:
    """array_moments of image files or bytes, decoded as the transform decodes them."""
    fields = {k: v for k, v in state.items() if k != "kind"}
    p = ImageInput(**fields)
    flat: np.ndarray = p.pixels(df[p.column]).astype(np.float64).reshape(len(df), int(np.prod(p.shape)))
    return pd.DataFrame({"__s": flat.sum(axis=1), "__ss": (flat * flat).sum(axis=1), "__n": [flat.shape[1]] * len(df)})


KIND = ImageInput
