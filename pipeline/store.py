"""The feature store: one directory per featurization. The only module that touches bcolz.

Layout of a store directory::

    meta.json            backbone spec (name, source, layer, tensor, preprocessing, D), versions,
                         the committed segments with a sha256 per file, the name of the rows file
    segments/*.bcolz     immutable N x D float32 bcolz carrays, one per finished run
    parts/<row>.bcolz    one immutable carray per batch of a run in progress (or killed)
    rows.jsonl           one JSON object per committed row: path (relative, forward slashes),
                         label, sha256; row i of the log is row i of segments + parts
    report.json          what the last run skipped (path, reason), ignored, found duplicated
    .lock                held (flock) while a run writes

No bcolz file is ever written in place. A batch is written to a staging folder, flushed and
fsynced, then renamed to ``parts/<first row>.bcolz``; only then are its lines appended to
rows.jsonl (fsynced): that append is the commit. At the end of a run its parts are merged
into a new segment the same way (staging, fsync, rename), and meta.json (written atomically)
starts to list it. A run killed at any moment leaves committed rows readable, and the next
writer removes staging folders, uncommitted parts and parts already merged.
"""
from __future__ import annotations

import fcntl
import hashlib
import json
import logging
import os
import platform
import shutil
import time
from pathlib import Path

import numpy as np

from .errors import StoreError
from .backbones.base import describe, identity

log = logging.getLogger(__name__)
FORMAT = "tf-feature-pipeline/store-2"
_CHUNK_BYTES = 1 << 20
_STAGING = ".staging-"


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


# ---- immutable bcolz pieces: written to staging, fsynced, renamed into place --------------------
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


def _write_piece(final: Path, blocks, dim: int, chunklen: int) -> int:
    """Write the row blocks as one carray at `final` atomically; return its row count."""
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
        os.rename(tmp, final)
        _fsync(final.parent)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return n


def _manifest(folder: Path) -> dict:
    """{relative file: [size, sha256]} of every file of a piece."""
    out = {}
    for f in sorted(folder.rglob("*")):
        if f.is_file():
            out[f.relative_to(folder).as_posix()] = [f.stat().st_size, hashlib.sha256(f.read_bytes()).hexdigest()]
    return out


def _check_manifest(folder: Path, manifest: dict) -> None:
    """Refuse a segment whose files are missing or changed, before bcolz decompresses anything."""
    for rel, (size, sha) in manifest.items():
        f = folder / rel
        if not f.is_file():
            raise StoreError(f"{f} is missing: the store {folder.parent.parent} is damaged; "
                             f"featurize again with --overwrite")
        if f.stat().st_size != size or hashlib.sha256(f.read_bytes()).hexdigest() != sha:
            raise StoreError(f"{f} does not match its checksum: the store {folder.parent.parent} is damaged; "
                             f"featurize again with --overwrite")


def _read_piece(folder: Path, rows: int, dim: int) -> np.ndarray:
    try:
        arr = _bcolz().open(str(folder), mode="r")
        if len(arr) < rows:
            raise StoreError(f"{folder} holds {len(arr)} rows, {rows} expected")
        x = np.asarray(arr[:rows], dtype=np.float32)
    except StoreError:
        raise
    except Exception as e:
        raise StoreError(f"the feature array {folder} is damaged ({type(e).__name__}: {e}); "
                         f"featurize again with --overwrite") from e
    if x.shape != (rows, dim):
        raise StoreError(f"{folder} has shape {x.shape}, expected ({rows}, {dim})")
    return x


def _piece_len(folder: Path) -> int:
    return len(_bcolz().open(str(folder), mode="r"))


def _segment_dir(root: Path, name: str) -> Path:
    """Where segment `name` lives (a store-1 carray, 'features.bcolz', sits in the store's root)."""
    return root / name if name == "features.bcolz" else root / "segments" / name


def _rows_path(root: Path, meta: dict) -> Path:
    """The commit log named by meta.json (a prune starts a new one)."""
    return root / meta.get("rows_file", "rows.jsonl")


def _log_lines(rows: list[dict]) -> bytes:
    return "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows).encode("utf-8")


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
        meta = _read_meta(root)
        rows, _ = _read_rows(_rows_path(root, meta))
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
    def rows(self) -> list[dict]:
        return list(self._rows)

    @property
    def classes(self) -> list[str]:
        return sorted({r["label"] for r in self._rows if r.get("label") is not None})

    @property
    def report(self) -> dict:
        """The last run's report (skipped, ignored, duplicates, label conflicts...)."""
        report = read_report(self.root)
        if report:
            return report
        legacy = self.root / "skipped.json"
        return {"skipped": json.loads(legacy.read_text()) if legacy.exists() else []}

    @property
    def skipped(self) -> list[dict]:
        return self.report.get("skipped", [])

    @property
    def features(self) -> np.ndarray:
        if self._features is None:
            self._features = self._load_features()
        return self._features

    def _load_features(self) -> np.ndarray:
        for attempt in range(3):
            try:
                x = self._read_all()
                return x if len(self._live) == len(x) else x[self._live]
            except StoreError:
                fresh = _read_meta(self.root)
                same_log = _rows_path(self.root, fresh) == _rows_path(self.root, self.meta)
                if attempt == 2 or not same_log or fresh.get("segments") == self.meta.get("segments"):
                    raise
                self.meta = fresh  # a run merged its parts into a new segment while we read: read again

    def _read_all(self) -> np.ndarray:
        """Every committed row, superseded ones included, in log order."""
        n, dim = self._committed, self.spec["dim"] or 0
        blocks, have = [], 0
        for seg in _segments(self.meta, self.root):
            folder = _segment_dir(self.root, seg["name"])
            rows = seg["rows"] if seg["rows"] is not None else n
            if seg.get("files"):
                _check_manifest(folder, seg["files"])
            blocks.append(_read_piece(folder, min(rows, n - have), dim))
            have += len(blocks[-1])
        for start, folder in _parts(self.root):
            if start < have or have >= n:
                continue  # already merged into a segment, or not committed
            if start != have:
                raise StoreError(f"rows {have}..{start - 1} of {self.root} are missing (no part holds them); "
                                 f"featurize again with --overwrite")
            length = _piece_len(folder)
            blocks.append(_read_piece(folder, min(length, n - have), dim))
            have += len(blocks[-1])
        if have < n:
            raise StoreError(f"{self.root} holds features for {have} rows but its log lists {n}; "
                             f"featurize again with --overwrite")
        return np.concatenate(blocks) if blocks else np.zeros((0, dim), np.float32)

    def labelled(self, with_rows: bool = False):
        """(X, y) for the rows that have a label, (X, y, rows) with `with_rows`.

        Images that appear under two labels (same content) are left out, with a warning.
        """
        from .quality import conflict_mask

        y = self.labels
        conflicts = conflict_mask(self._rows)
        if conflicts.any():
            log.warning("%s: %d images appear under two labels (same content) and are left out; "
                        "see `python -m pipeline verify %s`", self.root, int(conflicts.sum()), self.root)
        keep = np.array([v is not None for v in y], dtype=bool) & ~conflicts
        X, y = self.features[keep], y[keep].astype(str)
        return (X, y, [r for r, k in zip(self._rows, keep) if k]) if with_rows else (X, y)

    def __repr__(self):
        return f"<FeatureStore {self.root} n={len(self)} {describe(self.spec)}>"


def _read_meta(root: Path) -> dict:
    meta_path = root / "meta.json"
    if not meta_path.is_file():
        from .hints import not_a_store

        raise StoreError(not_a_store(root))
    try:
        meta = json.loads(meta_path.read_text())
    except ValueError as e:
        raise StoreError(f"{meta_path} is damaged ({e}); featurize again with --overwrite") from e
    if not isinstance(meta, dict) or "spec" not in meta:
        raise StoreError(f"{meta_path} is not a feature store's meta file; featurize again with --overwrite")
    return meta


def verify(root) -> list[str]:
    """Problems found in a store (empty when it is sound): meta, commit log, checksums, shape, values."""
    root = Path(root)
    try:
        store = FeatureStore.open(root)
        raw_path = _rows_path(root, store.meta)
        raw = raw_path.read_bytes() if raw_path.exists() else b""
    except (StoreError, ValueError) as e:
        return [str(e)]
    problems = []
    if raw and not raw.endswith(b"\n"):
        problems.append(f"{raw_path} ends with a partial line (a run was killed mid-commit; "
                        f"the next featurize run trims it)")
    bad = [r for r in store._rows if not {"path", "sha256"} <= set(r)]
    if bad:
        problems.append(f"{len(bad)} rows of {raw_path} lack a path or sha256, e.g. {bad[0]}")
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
        self.meta.setdefault("rows_file", "rows.jsonl")
        rows_path = root / self.meta["rows_file"]
        self.rows, end = _read_rows(rows_path)
        self._base = self._adopt_legacy()
        self._next = self._recover()
        (root / "parts").mkdir(exist_ok=True)
        self._rows_file = open(rows_path, "ab")
        self._rows_file.truncate(end)

    def _adopt_legacy(self) -> int:
        """Rows held by segments; a store-1 carray becomes the first segment, as is."""
        if "segments" not in self.meta:
            legacy = self.root / "features.bcolz"
            self.meta["segments"] = ([{"name": "features.bcolz", "rows": len(self.rows)}]
                                     if legacy.exists() and self.rows else [])
            self.meta["format"] = FORMAT
        return sum(s["rows"] for s in self.meta["segments"])

    def _recover(self) -> int:
        """Remove what a killed run left half done; return the next row index to write."""
        for d in (self.root, self.root / "segments", self.root / "parts"):
            if d.is_dir():
                for f in d.iterdir():
                    if f.name.startswith(_STAGING):
                        shutil.rmtree(f, ignore_errors=True)
        listed = {s["name"] for s in self.meta["segments"]}
        if (self.root / "segments").is_dir():
            for f in (self.root / "segments").iterdir():
                if f.name not in listed:  # merged but never listed in meta.json: its parts are still there
                    shutil.rmtree(f, ignore_errors=True)
        have = self._base
        for start, folder in _parts(self.root):
            length = _piece_len(folder) if start == have else 0
            if start == have and have < len(self.rows):
                if start + length > len(self.rows):  # only some of its lines were committed
                    keep = _read_piece(folder, len(self.rows) - start, self.meta["spec"]["dim"])
                    shutil.rmtree(folder)
                    _write_piece(folder, [keep], keep.shape[1], max(1, len(keep)))
                    length = len(keep)
                have += length
            else:
                shutil.rmtree(folder, ignore_errors=True)  # merged already, or never committed
        if have < len(self.rows):
            raise StoreError(f"{self.root} lists {len(self.rows)} rows but holds features for {have}; "
                             f"the store is damaged: featurize again with --overwrite")
        return have

    def append(self, features: np.ndarray, rows: list[dict]) -> None:
        """Commit a batch: its features as a new part (atomic rename), then its lines in the log."""
        x = np.ascontiguousarray(features, dtype=np.float32)
        if x.ndim != 2 or x.shape[0] != len(rows) or x.shape[1] != self.meta["spec"]["dim"]:
            raise StoreError(f"cannot append features of shape {x.shape} for {len(rows)} rows to "
                             f"{self.root} (D={self.meta['spec']['dim']})")
        if not np.all(np.isfinite(x)):
            raise StoreError("refusing to store non-finite features")
        if not len(x):
            return
        _write_piece(self.root / "parts" / f"{self._next:012d}.bcolz", [x], x.shape[1], len(x))
        self._rows_file.write(_log_lines(rows))
        self._rows_file.flush()
        os.fsync(self._rows_file.fileno())
        self.rows.extend(rows)
        self._next += len(x)

    def set_spec(self, spec: dict) -> None:
        """Record the loaded backbone's full spec (tensor, D); it must match what is stored."""
        old = self.meta["spec"]
        if old.get("dim") is not None and identity(old) != identity(spec):
            raise StoreError(f"{self.root} holds features of {describe(old)}, not of {describe(spec)}; "
                             f"use another --out, or --overwrite to replace it")
        self.meta["spec"] = spec
        self._write_meta()

    def write_report(self, report: dict) -> None:
        write_report(self.root, report)

    def _merge_parts(self) -> None:
        """Merge this run's parts into one new immutable segment listed in meta.json."""
        parts = [(s, f) for s, f in _parts(self.root) if s >= self._base]
        if not parts:
            return
        dim = self.meta["spec"]["dim"]
        seg_dir = self.root / "segments"
        seg_dir.mkdir(exist_ok=True)
        name = f"seg-{len(self.meta['segments']):06d}-{self._base:012d}.bcolz"
        blocks = (_read_piece(f, _piece_len(f), dim) for _, f in parts)
        n = _write_piece(seg_dir / name, blocks, dim, chunklen_for(dim))
        self.meta["segments"].append({"name": name, "rows": n, "files": _manifest(seg_dir / name)})
        self._base += n
        self._write_meta()
        for _, f in parts:
            shutil.rmtree(f, ignore_errors=True)

    def prune(self, keep_paths: set[str]) -> int:
        """Drop the rows of files not in `keep_paths` (and superseded rows): rewrite into one segment."""
        self._merge_parts()
        store = FeatureStore(self.root, self.meta, self.rows)
        keep = [i for i, r in zip(store._live, store._rows) if r["path"] in keep_paths]
        dropped = len(self.rows) - len(keep)
        if dropped == 0:
            return 0
        x = store._read_all()[keep] if keep else None
        gen = int(self.meta.get("generation", 0)) + 1
        rows = [self.rows[i] for i in keep]
        rows_file = f"rows-{gen}.jsonl"
        _atomic_write(self.root / rows_file, _log_lines(rows).decode("utf-8"))
        dim = self.meta["spec"]["dim"]
        name = f"seg-g{gen}.bcolz"
        n = _write_piece(self.root / "segments" / name, [x] if x is not None else [], dim, chunklen_for(dim))
        old = [s["name"] for s in self.meta["segments"]]
        old_rows = self.meta["rows_file"]
        self.meta.update(segments=[{"name": name, "rows": n, "files": _manifest(self.root / "segments" / name)}],
                         rows_file=rows_file, generation=gen)
        self._write_meta()  # the switch: readers now see the pruned store
        self._rows_file.close()
        for name_ in old:
            shutil.rmtree(_segment_dir(self.root, name_), ignore_errors=True)
        (self.root / old_rows).unlink(missing_ok=True)
        self.rows, self._base, self._next = rows, n, n
        self._rows_file = open(self.root / rows_file, "ab")
        return dropped

    def _write_meta(self) -> None:
        self.meta["updated"] = time.strftime("%Y-%m-%dT%H:%M:%S%z")
        self.meta["rows"] = len({r["path"] for r in self.rows})
        _atomic_write(self.root / "meta.json", json.dumps(self.meta, indent=1))

    def close(self) -> FeatureStore:
        try:
            self._merge_parts()
            self._write_meta()
        finally:
            self.abort()
        return FeatureStore(self.root, self.meta, self.rows)

    def abort(self) -> None:
        """Release the store; committed rows stay (as parts, merged by the next run)."""
        if not self._rows_file.closed:
            self._rows_file.close()
        if self._lock_fd is not None:
            os.close(self._lock_fd)
            self._lock_fd = None


def read_report(root) -> dict:
    """The last run's report of the store at `root` ({} when there is none or it is unreadable)."""
    try:
        return json.loads((Path(root) / "report.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}


def write_report(root, report: dict) -> None:
    """Write a run's report (skipped files and reasons...) as ``report.json`` in the store, atomically."""
    _atomic_write(Path(root) / "report.json", json.dumps(report, indent=1, ensure_ascii=False))


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


_STORE_FILES = ("segments", "parts", "features.bcolz", "rows.jsonl", "report.json", "skipped.json", "meta.json")


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
        return StoreWriter(root, meta, fd)
    except BaseException:
        os.close(fd)
        raise


def _check_writable(root: Path) -> None:
    probe = root / f".write-test-{os.getpid()}"
    probe.write_bytes(b"")
    probe.unlink()


def _existing_meta(root: Path, request: dict, overwrite: bool) -> dict | None:
    """The meta of a store to append to, None to start afresh; refuses other settings."""
    if overwrite or not (root / "meta.json").exists():
        return None
    existing = FeatureStore.open(root)
    if len(existing) == 0 and existing.spec.get("dim") is None:
        return None  # an empty store (a run that failed before its first batch) holds nothing to keep
    old = existing.meta
    if identity(old["spec"], full=False) != identity(request, full=False):
        raise StoreError(f"{root} holds features of {describe(old['spec'])}, not of {describe(request)}; "
                         f"use another --out, or --overwrite to replace it")
    return old
