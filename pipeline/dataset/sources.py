"""Images read through pyarrow's file systems: ``s3://``, ``gs://`` and ``file://`` URIs.

Only the images come from there; the feature store stays a local or mounted folder. A URI is
listed like a local folder (sorted relative paths, top-level sub-folders as classes, hidden
names and other extensions ignored with the same reasons), read with the same size limit and
hashed the same way. A file's stat on object storage is ``[size, mtime_ns]``: enough for the
store's cache to reuse a row without reading the object again. ``file://`` and ``s3://`` (against
a moto server) are tested here; ``gs://`` goes through the same pyarrow calls, untested
(credentials as pyarrow finds them).
"""
from __future__ import annotations

import hashlib
import os
from functools import lru_cache

from ..decode.formats import IMAGE_EXTENSIONS, MAX_FILE_BYTES
from ..errors import ImageError, UsageError
from .listing import Listing, _csv_listing, _is_hidden, folder_records


def is_uri(data_dir) -> bool:
    """True for ``scheme://...`` inputs read through pyarrow (a local folder is a plain path)."""
    return isinstance(data_dir, str) and "://" in data_dir


@lru_cache(maxsize=8)
def filesystem(uri: str):
    """(pyarrow FileSystem, path of `uri` inside it); one per process and URI."""
    from pyarrow import fs

    try:
        return fs.FileSystem.from_uri(uri)
    except (ValueError, OSError) as e:
        raise UsageError(f"cannot open the image location {uri!r}: {e}; give a local folder or an "
                         f"s3://, gs:// or file:// URI that pyarrow can reach") from e


def _stat(info) -> list[int]:
    return [int(info.size), int(info.mtime_ns or 0)]


def list_uri(uri: str, labelled: bool | None = None, labels=None) -> Listing:
    """The images below `uri` in a stable sorted order (see :func:`pipeline.dataset.listing.list_images`).

    Records carry the path inside the file system (read with :func:`read_uri`); ``Listing.stats``
    holds each image's ``[size, mtime_ns]`` as the listing gave it.
    """
    from pyarrow import fs

    filesys, base = filesystem(uri)
    base = base.rstrip("/")
    try:
        infos = filesys.get_file_info(fs.FileSelector(base, recursive=True))
    except (FileNotFoundError, OSError) as e:
        raise UsageError(f"image location {uri!r} cannot be listed: {e}") from e
    found, ignored, stats = [], [], {}
    for info in infos:
        if info.type != fs.FileType.File:
            continue
        rel = info.path[len(base):].lstrip("/")
        folders, name = rel.split("/")[:-1], rel.rsplit("/", 1)[-1]
        if any(_is_hidden(part) for part in folders):
            continue  # hidden folders are not walked, as in a local folder
        if _is_hidden(name):
            ignored.append((rel, "ignored_hidden"))
        elif os.path.splitext(rel)[1].lower() not in IMAGE_EXTENSIONS:
            ignored.append((rel, "ignored_extension"))
        else:
            found.append((rel, info.path))
            stats[info.path] = _stat(info)
    found.sort(key=lambda item: item[0])
    ignored.sort()
    listing = (_csv_listing(found, ignored, [], labels) if labels is not None
               else _folder_listing(uri, found, ignored, labelled))
    listing.stats = stats  # what the store's cache compares: no request per object on a rerun
    return listing


def _folder_listing(uri: str, found, ignored, labelled) -> Listing:
    records, classes, labelled = folder_records(uri, found, ignored, labelled)
    return Listing(records, ignored, classes, labelled)


def stat_uri(uri: str, path: str) -> list[int]:
    """[size, mtime_ns] of one object (OSError when it is gone)."""
    filesys, _ = filesystem(uri)
    info = filesys.get_file_info(path)
    if info.type != _file_type():
        raise FileNotFoundError(2, "no such file", path)
    return _stat(info)


def _file_type():
    from pyarrow import fs

    return fs.FileType.File


def read_uri(uri: str, path: str, size: int) -> tuple[bytes, str]:
    """The object's bytes and their sha256; `size` (from its stat) over MAX_FILE_BYTES is refused unread."""
    if size > MAX_FILE_BYTES:
        raise ImageError(path, "file_too_large", f"{size} bytes exceeds the limit of {MAX_FILE_BYTES}")
    filesys, _ = filesystem(uri)
    try:
        with filesys.open_input_file(path) as f:
            data = f.read()
    except OSError as e:
        raise ImageError(path, f"io_error:{type(e).__name__}", str(e)) from e
    return data, hashlib.sha256(data).hexdigest()
