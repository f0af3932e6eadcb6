"""Immutable bcolz pieces (segments and parts): written to staging, fsynced, renamed; checksummed.

The only module that touches bcolz.
"""
from __future__ import annotations

import hashlib
import json
import os
import shutil
import sys
from pathlib import Path

import numpy as np

from ..errors import StoreError
from ..jsontext import loads
from .sealed import check_manifest_names, check_name, check_tree, read_bytes, read_text

_CHUNK_BYTES = 1 << 20
_STAGING = ".staging-"


_NOT_FOR_BCOLZ = ("pandas", "bcolz.tests")


def _bcolz():
    """bcolz, imported without pandas or its own test suite: bcolz imports pandas only to offer DataFrame
    conversions, which the store never uses (that import was ~0.5 s of CPU in every featurize run,
    BENCHMARKS.md), and ``bcolz.tests`` (with unittest, ~25 ms) only to offer ``bcolz.test()``.
    While bcolz is imported (once per process, ~35 ms) another thread's first `import pandas` would fail."""
    if "bcolz" not in sys.modules:
        blocked = [name for name in _NOT_FOR_BCOLZ if name not in sys.modules]
        for name in blocked:
            sys.modules[name] = None  # what `import pandas` inside bcolz then meets: an ImportError
        try:
            import bcolz
        finally:
            for name in blocked:
                if sys.modules.get(name, 0) is None:
                    del sys.modules[name]
    import bcolz

    bcolz.set_nthreads(1)
    return bcolz


def chunklen_for(dim: int) -> int:
    """Rows per bcolz chunk: about 1 MiB of float32, never the tiny default bcolz picks for wide rows."""
    return int(max(16, _CHUNK_BYTES // (4 * max(1, dim))))


def _fsync(path) -> None:
    """fsync a file or a folder (a folder's entries: names created or renamed in it)."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _fsync_tree(folder: Path) -> None:
    for dirpath, _, files in os.walk(folder):
        for name in files:
            _fsync(os.path.join(dirpath, name))
    _fsync(folder)


def _write_piece(final: Path, blocks, dim: int, chunklen: int, manifest_file: Path | None = None) -> int:
    """Write the row blocks as one carray at `final` atomically; return its row count.

    With `manifest_file`, the sha256 of every file of the piece is written there (atomically)
    before the piece is renamed into place, so the piece can be checked before it is read.
    """
    bcolz = _bcolz()
    tmp = final.with_name(f"{_STAGING}{final.name}-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    arr, n = None, 0
    try:
        for x in blocks:
            x = np.ascontiguousarray(x, dtype=np.float32)  # a fresh array: bcolz mis-appends some views
            if arr is None:
                arr = bcolz.carray(x, rootdir=str(tmp), mode="w", chunklen=chunklen, expectedlen=chunklen,
                                   cparams=bcolz.cparams(clevel=3, cname="lz4"))
            else:
                arr.append(x)
            n += len(x)
        if arr is None:
            arr = bcolz.carray(np.zeros((0, dim), np.float32), rootdir=str(tmp), mode="w", chunklen=chunklen)
        arr.flush()
        del arr
        _fsync_tree(tmp)
        if manifest_file is not None:
            _atomic_write(manifest_file, json.dumps(_manifest(tmp)))
        os.rename(tmp, final)
        _fsync(final.parent)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return n


def _link_piece(src: Path, final: Path) -> None:
    """Give the piece `src` a second name `final` (hard links to its files, no copy): a big part
    becomes a segment without being decompressed and written again. Staged, fsynced, renamed."""
    tmp = final.with_name(f"{_STAGING}{final.name}-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        for f in sorted(src.rglob("*")):
            target = tmp / f.relative_to(src)
            if f.is_dir():
                target.mkdir(parents=True, exist_ok=True)
            else:
                target.parent.mkdir(parents=True, exist_ok=True)
                os.link(f, target)
        tmp.mkdir(exist_ok=True)
        for dirpath, _, _ in os.walk(tmp):
            _fsync(dirpath)
        os.rename(tmp, final)
        _fsync(final.parent)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def _manifest(folder: Path) -> dict:
    """{relative file: [size, sha256]} of every file of a piece (a link in it is refused, never followed)."""
    check_tree(folder)
    out = {}
    for f in sorted(folder.rglob("*")):
        if f.is_file():
            data = read_bytes(f)
            out[f.relative_to(folder).as_posix()] = [len(data), hashlib.sha256(data).hexdigest()]
    return out


def _check_manifest(folder: Path, manifest: dict) -> None:
    """Refuse a segment or part whose files are missing, changed or added, before bcolz decompresses anything.
    Every name stays inside the piece and no file is read through a link."""
    store = folder.parent.parent
    check_manifest_names(store / "meta.json", f"the checksums of {folder.name}", manifest)
    check_tree(folder)
    for rel, (size, sha) in manifest.items():
        f = folder / rel
        try:
            data = read_bytes(f) if os.lstat(f).st_size == size else None
        except FileNotFoundError:
            raise StoreError(f"{f} is missing: the store {store} is damaged; featurize again with --overwrite") from None
        if data is None or hashlib.sha256(data).hexdigest() != sha:
            raise StoreError(f"{f} does not match its checksum: the store {store} is damaged; "
                             f"featurize again with --overwrite")
    extra = [f for f in folder.rglob("*") if f.is_file() and f.relative_to(folder).as_posix() not in manifest]
    if extra:
        raise StoreError(f"{extra[0]} is not part of {folder}'s checksummed files: the store {store} is damaged; "
                         f"featurize again with --overwrite")


def _check_sizes(store: Path, folder: Path, manifest: dict | None) -> None:
    """The check of a segment each run makes before building on it: its files are there, at their recorded
    sizes (their bytes are checked when read, and by `verify`), none of them a link."""
    check_tree(folder)
    check_manifest_names(store / "meta.json", f"segment {folder.name!r}", manifest or {})
    for rel, (size, _) in (manifest or {}).items():
        f = folder / rel
        try:
            same = os.lstat(f).st_size == size
        except FileNotFoundError:
            same = False
        if not same:
            raise StoreError(f"{f} is missing or changed: the store {store} is damaged; featurize again with "
                             f"--overwrite")


def _part_manifest_file(folder: Path) -> Path:
    return folder.with_name(folder.name + ".json")


def _read_part_manifest(folder: Path) -> dict | None:
    """The checksums written beside a part (None for parts of older runs, which have none)."""
    mf = _part_manifest_file(folder)
    try:
        manifest = loads(read_text(mf))
    except FileNotFoundError:
        return None
    except ValueError as e:
        raise StoreError(f"{mf} is damaged ({e}); featurize again with --overwrite") from None
    return check_manifest_names(mf, "the part's checksums", manifest)


def _part_checksums(folder: Path) -> dict:
    """The checksums written beside a part (computed now for parts of older runs, which have none)."""
    manifest = _read_part_manifest(folder)
    return _manifest(folder) if manifest is None else manifest


def _check_part(folder: Path) -> None:
    """Check a part against the checksums written beside it (parts of older runs have none)."""
    manifest = _read_part_manifest(folder)
    if manifest is not None:
        _check_manifest(folder, manifest)


def _remove_part(folder: Path) -> None:
    shutil.rmtree(folder, ignore_errors=True)
    _part_manifest_file(folder).unlink(missing_ok=True)


def _open_piece(folder: Path):
    """The bcolz carray of a piece, opened (its JSON metadata read, no chunk yet) and refused unless it holds
    float32 rows: bcolz unpickles the chunks of an object array when they are read, which runs any code.
    bcolz opens its files by name: the folder is checked first (a real folder, no link in it)."""
    check_tree(folder)
    try:
        arr = _bcolz().open(str(folder), mode="r")
    except Exception as e:  # noqa: BLE001 (bcolz raises anything on a damaged folder: its JSON too deep, missing...)
        raise StoreError(f"the feature array {folder} is damaged ({type(e).__name__}: {e}); "
                         f"featurize again with --overwrite") from None
    if arr.dtype != np.float32 or arr.ndim != 2:
        raise StoreError(f"the feature array {folder} holds {arr.dtype} {arr.shape}, not float32 rows; it was not "
                         f"written by this tool and is not read (reading some kinds runs code): featurize again "
                         f"with --overwrite")
    return arr


def _read_piece(folder: Path, rows: int | None, dim: int, start: int = 0) -> np.ndarray:
    """Rows [start, rows) of a piece's feature array (it must hold at least `rows`; None: all it holds)."""
    try:
        arr = _open_piece(folder)
        rows = len(arr) if rows is None else rows
        if len(arr) < rows:
            raise StoreError(f"{folder} holds {len(arr)} rows, {rows} expected")
        x = np.asarray(arr[start:rows], dtype=np.float32)
    except StoreError:
        raise
    except Exception as e:
        raise StoreError(f"the feature array {folder} is damaged ({type(e).__name__}: {e}); "
                         f"featurize again with --overwrite") from e
    if x.shape != (rows - start, dim):
        raise StoreError(f"{folder} has shape {x.shape}, expected ({rows - start}, {dim})")
    return x


def _piece_len(folder: Path) -> int:
    return len(_open_piece(folder))


def _segment_dir(root: Path, name: str) -> Path:
    """Where segment `name` lives (a store-1 carray, 'features.bcolz', sits in the store's root); a name
    that is not a plain name inside the store is refused."""
    check_name(root / "meta.json", "a segment", name)
    return root / name if name == "features.bcolz" else root / "segments" / name


def _part_start(folder: Path) -> int | None:
    name = folder.name
    return int(name[:-6]) if name.endswith(".bcolz") and name[:-6].isdigit() else None


def _parts(root: Path) -> list[tuple[int, Path]]:
    d = root / "parts"
    if not d.is_dir():
        return []
    found = [(_part_start(f), f) for f in d.iterdir()]
    return sorted((s, f) for s, f in found if s is not None)


def _segments(meta: dict, root: Path) -> list[dict]:
    if "segments" in meta:
        return meta["segments"]
    legacy = root / "features.bcolz"  # format store-1: one carray appended in place
    return [{"name": "features.bcolz", "rows": None}] if legacy.exists() else []


def _atomic_write(path: Path, text: str) -> None:
    """Write `text` to `path` through a new temp file (O_EXCL, never an existing link) and a rename."""
    from ..outputs import atomic_open

    with atomic_open(path) as f:
        f.write(text)
