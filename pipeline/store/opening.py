"""Opening a store for writing: :func:`open_writer` (create, resume, or refuse a store made otherwise) and the
lock that keeps one run per store."""
from __future__ import annotations

import fcntl
import json
import os
import shutil
import time
from pathlib import Path

from ..errors import StoreError
from ..spec import FeatureSpec
from ..versions import versions
from .pieces import _atomic_write
from .reader import FORMAT, FeatureStore, _read_meta
from .sealed import refuse_links
from .writer import SKIPS_FILE, StoreWriter

def _lock(root: Path) -> int:
    fd = os.open(root / ".lock", os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        raise StoreError(f"{root} is being written by another run; wait for it or use another --out") from None
    return fd


_STORE_FILES = ("segments", "parts", "features.bcolz", "rows.jsonl", "report.json", "skipped.json", SKIPS_FILE,
                "meta.json")


def open_writer(root, request: dict, overwrite: bool = False) -> StoreWriter:
    """Open `root` for appending rows for backbone `request`, creating it if needed.

    An existing store made with another backbone, weights, layer or preprocessing is refused
    unless `overwrite` is set, so stale rows can never mix with new ones. Call
    :meth:`StoreWriter.set_spec` with the loaded backbone's spec before the first append.
    """
    root = Path(root)
    refuse_links(root)  # nothing is read, written or deleted through a link, even with overwrite
    _refuse_foreign_folder(root)
    created = not root.exists()
    try:
        root.mkdir(parents=True, exist_ok=True)
        fd = _lock(root)
        _check_writable(root)
    except PermissionError as e:
        raise StoreError(f"cannot write the feature store {root}: {e.strerror}") from e
    try:
        meta = _existing_meta(root, request, overwrite)
    except BaseException:
        os.close(fd)
        raise
    if meta is None:
        for name in _STORE_FILES + tuple(f.name for f in root.glob("rows-*.jsonl")):
            p = root / name
            shutil.rmtree(p) if p.is_dir() else p.unlink(missing_ok=True)
        meta = {"format": FORMAT, "spec": dict(request, tensor=None, dim=None), "versions": versions(),
                "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "segments": [], "rows_file": "rows.jsonl"}
        _atomic_write(root / "meta.json", json.dumps(meta, indent=1))
    try:
        writer = StoreWriter(root, meta, fd)
    except BaseException:
        os.close(fd)
        raise
    writer.created = created
    return writer


def _refuse_foreign_folder(root: Path) -> None:
    """A store is only ever written into a new or empty folder, or over a store: never over other files."""
    if root.exists() and not root.is_dir():
        raise StoreError(f"{root} exists and is not a folder; give --out a new folder for the feature store")
    if not root.is_dir() or (root / "meta.json").exists():
        if (root / "meta.json").exists():
            _read_meta(root, names=False)  # a meta.json that is not a store's is refused, with or without overwrite
        return
    others = sorted(f.name for f in root.iterdir() if f.name != ".lock")
    if others:
        raise StoreError(f"{root} is a folder that is not a feature store (it holds {', '.join(others[:3])}"
                         f"{' ...' if len(others) > 3 else ''}); featurize into a new or empty folder "
                         f"(--overwrite only replaces feature stores)")


def _check_writable(root: Path) -> None:
    probe = root / f".write-test-{os.getpid()}"
    os.close(os.open(probe, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600))
    probe.unlink()


def _existing_meta(root: Path, request: dict, overwrite: bool) -> dict | None:
    """The meta of a store to append to, None to start afresh; refuses other settings."""
    if overwrite or not (root / "meta.json").exists():
        return None
    existing = FeatureStore.open(root)
    if len(existing) == 0 and existing.spec.get("dim") is None:
        return None  # an empty store (a run that failed before its first batch) holds nothing to keep
    old, asked = existing.feature_spec, FeatureSpec.of(request)
    if old.differences(asked, full=False):
        raise StoreError(f"{root} holds features of {old.describe()}, not of {asked.describe()}; "
                         f"use another --out, or --overwrite to replace it")
    return existing.meta
