"""The files of a data source, local or behind a URI (pure listing, no Ray): which files a folder
holds, how a listed file is shown to the user, the folder relative image paths resolve against, and
the source's size."""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any, Optional

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


@dataclass(frozen=True)
class Listing:
    """One listing of a source: each check that needs its files reads this rather than listing
    the folder again (on an object store, every listing is a round trip)."""

    src: str
    fs: object  # pyarrow filesystem
    path: str  # the source in `fs`
    is_dir: bool
    files: tuple  # pyarrow FileInfo of its data files (hidden ones aside), sorted by path; a file source: itself, if it is a file

    @property
    def bytes(self) -> int:
        return sum(f.size or 0 for f in self.files)

    def entries(self) -> list[tuple[str, Any, str]]:
        """list_files's rows."""
        if not self.is_dir:
            return [(self.src, self.fs, self.path)]
        return [(shown(self.src, f.path) if is_uri(self.src) else f.path, self.fs, f.path) for f in self.files]


def list_source(src: str) -> Listing:
    """The source listed once (raises what pyarrow raises when it cannot be)."""
    import pyarrow.fs as pafs

    fs, path = pafs.FileSystem.from_uri(src) if is_uri(src) else (pafs.LocalFileSystem(), os.path.abspath(src))
    info = fs.get_file_info(path)
    if info.type != pafs.FileType.Directory:
        return Listing(src, fs, path, False, (info,) if info.type == pafs.FileType.File else ())
    found = sorted(
        (
            f
            for f in fs.get_file_info(pafs.FileSelector(path, recursive=True))
            if f.type == pafs.FileType.File and not hidden(f.path[len(path) :])
        ),
        key=lambda f: f.path,
    )
    return Listing(src, fs, path, True, tuple(found))


def source_bytes(src: str) -> Optional[int]:
    """Total size of the source's data files, or None when it cannot be listed (or is not there)."""
    try:
        listing = list_source(src)
    except Exception:
        return None
    return listing.bytes if listing.is_dir or listing.files else None


def list_files(src: str) -> list[tuple[str, object, str]]:
    """(path as the user would write it, pyarrow filesystem, path in it) of the source's data files
    (hidden ones aside), in sorted order; a file source is its own one file."""
    return list_source(src).entries()
