"""Image files as model input: where a path points, reading a file safely, decoding it to pixels.

Pure numpy and PIL (imported when first needed): used by the image input kind in training and
serving, by the row checks and by the prediction client.
"""

from __future__ import annotations

import os
import stat
from typing import Optional

import numpy as np

IMAGE_MODES = {1: "L", 3: "RGB", 4: "RGBA"}  # decoded image files: channels -> PIL mode

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
