"""The files of a data source, local or behind a URI (pure listing, no Ray): which files a folder
holds, how a listed file is shown to the user, the folder relative image paths resolve against, and
the source's size."""

from __future__ import annotations

import os
from typing import Optional

from orchestrator.spec import is_uri


def hidden(rel: str) -> bool:
    """_SUCCESS, .crc, _temporary/...: files that writers such as Spark leave beside the data."""
    return any(part.startswith((".", "_")) for part in rel.split("/") if part)


def shown(src: str, path: str) -> str:
    """A listed file as the user would write it (pyarrow drops the URI scheme)."""
    scheme = src.split("://", 1)[0] + "://" if is_uri(src) else ""
    return path if not scheme or path.startswith(scheme) else scheme + path


def image_root(src: str) -> str:
    """The folder relative image paths resolve against: the source's folder (or the source, a folder)."""
    if is_uri(src):
        last = src.rstrip("/").rsplit("/", 1)
        return last[0] if src.endswith("/") is False and "." in last[-1] else src.rstrip("/")
    return src if os.path.isdir(src) else os.path.dirname(src)


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


def list_files(src: str) -> list[tuple[str, object, str]]:
    """(path as the user would write it, pyarrow filesystem, path in it) of the source's data files
    (hidden ones aside), in sorted order; a file source is its own one file."""
    import pyarrow.fs as pafs

    fs, path = pafs.FileSystem.from_uri(src) if is_uri(src) else (pafs.LocalFileSystem(), os.path.abspath(src))
    info = fs.get_file_info(path)
    if info.type != pafs.FileType.Directory:
        return [(src, fs, path)]
    found = sorted(f.path for f in fs.get_file_info(pafs.FileSelector(path, recursive=True))
                   if f.type == pafs.FileType.File and not hidden(f.path[len(path):]))
    return [(shown(src, f) if is_uri(src) else f, fs, f) for f in found]
