"""The feature store: one directory per featurization. The only module that touches bcolz.

Layout of a store directory::

    meta.json         backbone spec (name, source, layer, tensor, preprocessing, D), versions, times
    features.bcolz/   N x D float32 bcolz carray, appended in chunks as rows are computed
    rows.jsonl        one JSON object per committed row: path (relative, forward slashes), label, sha256
    skipped.json      the files the last run could not use, with the reason
    .lock             held (flock) while a run writes

Commit protocol for a batch: append the rows to the carray and flush it, then append their
lines to rows.jsonl and fsync. rows.jsonl is the commit record: a reader uses exactly as many
carray rows as there are complete lines, so a run killed at any moment leaves a readable store,
and reopening for append trims rows that were never committed.
"""
from __future__ import annotations

import fcntl
import json
import os
import platform
import shutil
import time
from pathlib import Path

import numpy as np

from .errors import StoreError
from .backbones.base import describe, identity

FORMAT = "tf-feature-pipeline/store-1"
_CHUNK_BYTES = 1 << 20


def _bcolz():
    import bcolz

    bcolz.set_nthreads(1)
    return bcolz


def chunklen_for(dim: int) -> int:
    """Rows per bcolz chunk: about 1 MiB of float32, never the tiny default bcolz picks for wide rows."""
    return int(max(16, _CHUNK_BYTES // (4 * max(1, dim))))


def versions() -> dict:
    """Library versions recorded in every artifact."""
    import importlib.metadata as md

    out = {"python": platform.python_version()}
    for dist in ("tensorflow", "keras", "ai-edge-litert", "numpy", "scikit-learn", "bcolz-zipline",
                 "joblib", "pillow", "tf-feature-pipeline"):
        try:
            out[dist] = md.version(dist)
        except md.PackageNotFoundError:
            pass
    return out


def _read_rows(path: Path) -> tuple[list[dict], int]:
    """Committed rows and the byte length they occupy (a partial last line is not committed)."""
    if not path.exists():
        return [], 0
    data = path.read_bytes()
    end = data.rfind(b"\n") + 1
    rows = [json.loads(line) for line in data[:end].decode("utf-8").splitlines() if line]
    return rows, end


class FeatureStore:
    """Read access to a feature store: ``features`` (N x D numpy), ``paths``, ``labels``, ``meta``."""

    def __init__(self, root: Path, meta: dict, rows: list[dict]):
        self.root = Path(root)
        self.meta = meta
        # a re-featurized (changed) file appends a new row: the last row for a path wins
        last = {r["path"]: i for i, r in enumerate(rows)}
        self._committed = len(rows)
        self._live = np.array(sorted(last.values()), dtype=np.int64)
        self._rows = [rows[i] for i in self._live]
        self._features = None

    @classmethod
    def open(cls, root) -> "FeatureStore":
        root = Path(root)
        meta_path = root / "meta.json"
        if not meta_path.is_file():
            raise StoreError(f"{root} is not a feature store (no meta.json); create one with "
                             f"`python -m pipeline featurize DATA_DIR --out {root}`")
        try:
            meta = json.loads(meta_path.read_text())
        except ValueError as e:
            raise StoreError(f"{meta_path} is damaged ({e}); featurize again with --overwrite") from e
        rows, _ = _read_rows(root / "rows.jsonl")
        return cls(root, meta, rows)

    def __len__(self) -> int:
        return len(self._rows)

    @property
    def spec(self) -> dict:
        return self.meta["spec"]

    @property
    def paths(self) -> list[str]:
        return [r["path"] for r in self._rows]

    @property
    def labels(self) -> np.ndarray:
        """Labels as an object array (None for unlabelled images)."""
        return np.array([r.get("label") for r in self._rows], dtype=object)

    @property
    def sha256(self) -> list[str]:
        return [r["sha256"] for r in self._rows]

    @property
    def classes(self) -> list[str]:
        return sorted({r["label"] for r in self._rows if r.get("label") is not None})

    @property
    def skipped(self) -> list[dict]:
        p = self.root / "skipped.json"
        return json.loads(p.read_text()) if p.exists() else []

    @property
    def features(self) -> np.ndarray:
        if self._features is None:
            self._features = self._load_features()
        return self._features

    def _load_features(self) -> np.ndarray:
        n, dim = self._committed, self.spec["dim"] or 0
        carray_dir = self.root / "features.bcolz"
        if n == 0:
            return np.zeros((0, dim), np.float32)
        try:
            arr = _bcolz().open(str(carray_dir), mode="r")
            if len(arr) < n:
                raise StoreError(f"{carray_dir} holds {len(arr)} rows but rows.jsonl lists {n}")
            x = np.asarray(arr[:n], dtype=np.float32)
        except StoreError:
            raise
        except Exception as e:
            raise StoreError(f"the feature array in {carray_dir} is damaged ({type(e).__name__}: {e}); "
                             f"featurize again with --overwrite") from e
        if x.shape != (n, dim):
            raise StoreError(f"{carray_dir} has shape {x.shape}, expected ({n}, {dim})")
        return x if len(self._live) == n else x[self._live]

    def labelled(self) -> tuple[np.ndarray, np.ndarray]:
        """(X, y) for the rows that have a label."""
        y = self.labels
        keep = np.array([v is not None for v in y], dtype=bool)
        return self.features[keep], y[keep].astype(str)

    def __repr__(self):
        return f"<FeatureStore {self.root} n={len(self)} {describe(self.spec)}>"


def verify(root) -> list[str]:
    """Problems found in a store (empty when it is sound): meta, commit log, array shape and values."""
    root = Path(root)
    try:
        store = FeatureStore.open(root)
        raw = (root / "rows.jsonl").read_bytes() if (root / "rows.jsonl").exists() else b""
    except (StoreError, ValueError) as e:
        return [str(e)]
    problems = []
    if raw and not raw.endswith(b"\n"):
        problems.append(f"{root / 'rows.jsonl'} ends with a partial line (a run was killed mid-commit; "
                        f"the next featurize run trims it)")
    bad = [r for r in store._rows if not {"path", "sha256"} <= set(r)]
    if bad:
        problems.append(f"{len(bad)} rows of {root / 'rows.jsonl'} lack a path or sha256, e.g. {bad[0]}")
    if len(store) and not store.spec.get("dim"):
        problems.append(f"{root / 'meta.json'} records no feature dimension")
        return problems
    try:
        x = store.features
    except StoreError as e:
        return problems + [str(e)]
    if not np.isfinite(x).all():
        problems.append(f"{int((~np.isfinite(x)).any(axis=1).sum())} feature rows in {root} hold NaN or infinity")
    return problems


class StoreWriter:
    """Appends committed batches of rows to a store; created by :func:`open_writer`."""

    def __init__(self, root: Path, meta: dict, lock_fd: int):
        self.root, self.meta, self._lock_fd = root, meta, lock_fd
        rows, end = _read_rows(root / "rows.jsonl")
        self.rows = rows
        self._carray = None
        carray_dir = root / "features.bcolz"
        if carray_dir.exists():
            self._carray = _bcolz().open(str(carray_dir), mode="a")
            extra = len(self._carray) - len(rows)
            if extra > 0:  # rows appended but never committed by a killed run
                self._carray.trim(extra)
                self._carray.flush()
            elif extra < 0:
                raise StoreError(f"{carray_dir} has fewer rows ({len(self._carray)}) than committed "
                                 f"({len(rows)}); the store is damaged: featurize again with --overwrite")
        self._rows_file = open(root / "rows.jsonl", "ab")
        self._rows_file.truncate(end)

    def append(self, features: np.ndarray, rows: list[dict]) -> None:
        x = np.ascontiguousarray(features, dtype=np.float32)  # a fresh array: see bcolz append note
        if x.ndim != 2 or x.shape[0] != len(rows) or x.shape[1] != self.meta["spec"]["dim"]:
            raise StoreError(f"cannot append features of shape {x.shape} for {len(rows)} rows to "
                             f"{self.root} (D={self.meta['spec']['dim']})")
        if not np.all(np.isfinite(x)):
            raise StoreError("refusing to store non-finite features")
        if self._carray is None:
            bcolz = _bcolz()
            self._carray = bcolz.carray(x, rootdir=str(self.root / "features.bcolz"), mode="w",
                                        chunklen=chunklen_for(x.shape[1]),
                                        cparams=bcolz.cparams(clevel=3, cname="lz4"))
        else:
            self._carray.append(x)
        self._carray.flush()
        payload = "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows).encode("utf-8")
        self._rows_file.write(payload)
        self._rows_file.flush()
        os.fsync(self._rows_file.fileno())
        self.rows.extend(rows)

    def set_spec(self, spec: dict) -> None:
        """Record the loaded backbone's full spec (tensor, D); it must match what is stored."""
        old = self.meta["spec"]
        if old.get("dim") is not None and identity(old) != identity(spec):
            raise StoreError(f"{self.root} holds features of {describe(old)}, not of {describe(spec)}; "
                             f"use another --out, or --overwrite to replace it")
        self.meta["spec"] = spec
        _atomic_write(self.root / "meta.json", json.dumps(self.meta, indent=1))

    def write_skipped(self, skipped: list[dict]) -> None:
        _atomic_write(self.root / "skipped.json", json.dumps(skipped, indent=1, ensure_ascii=False))

    def close(self) -> FeatureStore:
        self.meta["updated"] = time.strftime("%Y-%m-%dT%H:%M:%S%z")
        self.meta["rows"] = len({r["path"] for r in self.rows})
        _atomic_write(self.root / "meta.json", json.dumps(self.meta, indent=1))
        self._rows_file.close()
        os.close(self._lock_fd)
        return FeatureStore.open(self.root)

    def abort(self) -> None:
        self._rows_file.close()
        os.close(self._lock_fd)


def _atomic_write(path: Path, text: str) -> None:
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "w", encoding="utf-8") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def _lock(root: Path) -> int:
    fd = os.open(root / ".lock", os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        raise StoreError(f"{root} is being written by another run; wait for it or use another --out") from None
    return fd


def open_writer(root, request: dict, overwrite: bool = False) -> StoreWriter:
    """Open `root` for appending rows for backbone `request`, creating it if needed.

    An existing store made with another backbone, weights, layer or preprocessing is refused
    unless `overwrite` is set, so stale rows can never mix with new ones. Call
    :meth:`StoreWriter.set_spec` with the loaded backbone's spec before the first append.
    """
    root = Path(root)
    try:
        root.mkdir(parents=True, exist_ok=True)
        fd = _lock(root)
    except PermissionError as e:
        raise StoreError(f"cannot write the feature store {root}: {e.strerror}") from e
    meta_path = root / "meta.json"
    existing = FeatureStore.open(root) if meta_path.exists() and not overwrite else None
    if existing is not None and len(existing) == 0 and not (root / "features.bcolz").exists():
        existing = None  # an empty store (a run that failed before its first batch) holds nothing to keep
    if existing is not None:
        old = existing.meta
        if identity(old["spec"], full=False) != identity(request, full=False):
            os.close(fd)
            raise StoreError(f"{root} holds features of {describe(old['spec'])}, not of {describe(request)}; "
                             f"use another --out, or --overwrite to replace it")
        meta = old
    else:
        for name in ("features.bcolz", "rows.jsonl", "skipped.json", "meta.json"):
            p = root / name
            shutil.rmtree(p) if p.is_dir() else p.unlink(missing_ok=True)
        meta = {"format": FORMAT, "spec": dict(request, tensor=None, dim=None), "versions": versions(),
                "created": time.strftime("%Y-%m-%dT%H:%M:%S%z")}
        _atomic_write(meta_path, json.dumps(meta, indent=1))
    return StoreWriter(root, meta, fd)
