"""Reading a store: :class:`FeatureStore`, its meta and report files, and :func:`verify`."""
from __future__ import annotations

import json
import logging
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..decode.formats import IMAGE_EXTENSIONS
from ..errors import StoreError
from ..jsontext import loads
from ..spec import FeatureSpec
from .duplicates import conflict_mask
from .log import _read_rows, _rows_path, live_indices
from .pieces import (
    _atomic_write,
    _check_manifest,
    _check_part,
    _parts,
    _piece_len,
    _read_piece,
    _segment_dir,
    _segments,
)
from .sealed import (
    check_meta_names,
    link_message,
    links_in,
    open_read,
    read_text,
    refuse_links,
)

log = logging.getLogger(__name__)
FORMAT = "tf-feature-pipeline/store-2"
CHUNK_ROWS = 16384  # rows of features read at a time by FeatureStore.feature_chunks (D=2048: 128 MiB)


def committed_pieces(root: Path, meta: dict, n: int, strict: bool = True):
    """(folder, rows) of each piece holding the first `n` rows of the log, in log order.

    Segments and parts are checked against their checksums as they come; rows the log lists but no
    piece holds, or pieces holding more rows than the log lists, are refused. Not `strict`: a reader
    whose run merged while it read may find a last segment holding rows appended after it opened
    the log; it reads the first `n`.
    """
    have = 0
    for seg in _segments(meta, root):
        folder = _segment_dir(root, seg["name"])
        rows = seg["rows"] if seg["rows"] is not None else n
        if not strict and seg["rows"] is not None and have + rows > n:
            rows = n - have
            if rows <= 0:
                break
        if seg["rows"] is not None and have + rows > n:
            raise StoreError(f"{_rows_path(root, meta)} lists {n} rows but the store's segments hold "
                             f"{have + rows}: lines were removed from the log; featurize again with --overwrite")
        if seg.get("files"):
            _check_manifest(folder, seg["files"])
        yield folder, rows
        have += rows
    for start, folder in _parts(root):
        if start < have or have >= n:
            continue  # already merged into a segment, or not committed
        if start != have:
            raise StoreError(f"rows {have}..{start - 1} of {root} are missing (no part holds them); "
                             f"featurize again with --overwrite")
        _check_part(folder)
        rows = min(_piece_len(folder), n - have)
        yield folder, rows
        have += rows
    if have < n:
        raise StoreError(f"{root} holds features for {have} rows but its log lists {n}; "
                         f"featurize again with --overwrite")


def read_committed(root: Path, meta: dict, n: int) -> np.ndarray:
    """The features of the first `n` rows of the log, superseded ones included, in log order
    (each piece checked first, see :func:`committed_pieces`)."""
    dim = meta["spec"]["dim"] or 0
    blocks = [_read_piece(folder, rows, dim) for folder, rows in committed_pieces(root, meta, n)]
    return np.concatenate(blocks) if blocks else np.zeros((0, dim), np.float32)


def live_chunks(root: Path, meta: dict, n: int, live: np.ndarray, size: int, strict: bool = True):
    """The features of the `live` rows (sorted log indices below `n`), in order, `size` rows of the
    log at a time: a store far larger than memory is read piece by piece, never whole."""
    dim, start = meta["spec"]["dim"] or 0, 0
    for folder, rows in committed_pieces(root, meta, n, strict):
        for lo in range(0, rows, size):
            hi = min(rows, lo + size)
            a, b = np.searchsorted(live, [start + lo, start + hi])
            if b > a:
                x = _read_piece(folder, hi, dim, lo)
                yield x if b - a == hi - lo else x[live[a:b] - start - lo]
        start += rows


@dataclass(frozen=True)
class RowSummary:
    """What a writer knows of the rows it committed without holding them: how many are live, their labels."""

    live: int
    labels: frozenset


class FeatureStore:
    """Read access to a feature store: ``features`` (N x D numpy), ``paths``, ``labels``, ``meta``.

    `rows` None: the rows are read from the commit log when first needed; a writer that committed
    blocks of rows hands back their `summary`, which answers ``len`` and ``classes`` without reading them."""

    def __init__(self, root: Path, meta: dict, rows: list[dict] | None, summary: RowSummary | None = None):
        self.root = Path(root)
        self.meta = meta
        self._summary = summary
        self._features = None
        if rows is not None:
            self._take(rows)

    def _take(self, rows: list[dict]) -> None:
        # a re-featurized (changed) file appends a new row: the last row for a path wins, and a
        # row marked `removed` (the file could not be read any more) withdraws the path
        self._committed = len(rows)
        self._live = np.array(live_indices(rows), dtype=np.int64)
        self._rows = [rows[i] for i in self._live]

    def __getattr__(self, name):
        """The rows, read from the log the first time one of them is needed (see `rows` None above)."""
        if name in ("_rows", "_live", "_committed") and "meta" in self.__dict__:
            self._take(_read_rows(_rows_path(self.root, self.meta))[0])
            return self.__dict__[name]
        raise AttributeError(f"{type(self).__name__!r} object has no attribute {name!r}")

    def _summarized(self) -> RowSummary | None:
        return self._summary if "_rows" not in self.__dict__ else None

    @classmethod
    def open(cls, root) -> "FeatureStore":
        root = Path(root)
        refuse_links(root)  # a store holding a link is refused before anything in it is read
        meta = _read_meta(root)
        rows, _ = _read_rows(_rows_path(root, meta))
        return cls(root, meta, rows)

    @property
    def committed_rows(self) -> int:
        """Lines of the commit log, superseded and withdrawn rows included."""
        return self._committed

    def __len__(self) -> int:
        summary = self._summarized()
        return summary.live if summary else len(self._rows)

    @property
    def spec(self) -> dict:
        """The feature spec as stored in meta.json (a dict); :attr:`feature_spec` is its typed form."""
        return self.meta["spec"]

    @property
    def feature_spec(self) -> FeatureSpec:
        return FeatureSpec.from_dict(self.meta["spec"])

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
    def multi_label(self) -> bool:
        """True when each label is a set of tags joined by spaces (featurize --multi-label)."""
        return bool(self.meta.get("multi_label"))

    @property
    def classes(self) -> list[str]:
        """The labels used (for a multi-label store: the tags)."""
        summary = self._summarized()
        labels = ({v for v in summary.labels if v is not None} if summary else
                  {r["label"] for r in self._rows if r.get("label") is not None})
        return sorted({t for v in labels for t in v.split(" ") if t}) if self.multi_label else sorted(labels)

    @property
    def report(self) -> dict:
        """The last run's report (skipped, ignored, duplicates, label conflicts...)."""
        report = read_report(self.root)
        if report:
            return report
        try:
            return {"skipped": loads(read_text(self.root / "skipped.json"))}
        except (OSError, ValueError):
            return {"skipped": []}

    @property
    def skipped(self) -> list[dict]:
        return self.report.get("skipped", [])

    @property
    def features(self) -> np.ndarray:
        if self._features is None:
            self._features = self._load_features()
        return self._features

    def feature_chunks(self, size: int | None = None):
        """The features of the live rows, in order, at most `size` (default CHUNK_ROWS) rows at a time:
        what scoring a store larger than memory reads (``features`` holds them all at once).

        A run that merges its parts into a segment while this reads (and removes the parts) is
        followed: the reading goes on from the new segment, where it had got to."""
        size = size or CHUNK_ROWS
        if self._features is not None:
            for s in range(0, len(self), size):
                yield self._features[s:s + size]
            return
        done, merged = 0, False
        for attempt in range(3):
            try:
                for x in live_chunks(self.root, self.meta, self._committed, self._live[done:], size, not merged):
                    done += len(x)
                    yield x
                return
            except StoreError:
                fresh = _read_meta(self.root)
                same_log = _rows_path(self.root, fresh) == _rows_path(self.root, self.meta)
                if attempt == 2 or not same_log or fresh.get("segments") == self.meta.get("segments"):
                    raise
                self.meta, merged = fresh, True

    def _load_features(self) -> np.ndarray:
        """The live rows' features, filled a chunk at a time into one array (no second copy)."""
        x = np.empty((len(self._live), self.meta["spec"]["dim"] or 0), np.float32)
        at = 0
        for chunk in self.feature_chunks():
            x[at:at + len(chunk)] = chunk
            at += len(chunk)
        return x

    def labelled(self, with_rows: bool = False):
        """(X, y) for the rows that have a label, (X, y, rows) with `with_rows`.

        Images that appear under two labels (same content) are left out, with a warning.
        """
        keep, y, rows = self.labelled_rows()
        X = self.features[keep]
        return (X, y, rows) if with_rows else (X, y)

    def labelled_rows(self):
        """(positions, y, rows) of the rows :meth:`labelled` uses, without reading any feature."""
        y = self.labels
        conflicts = conflict_mask(self._rows)
        if conflicts.any():
            log.warning("%s: %d images appear under two labels (same content) and are left out; "
                        "see `python -m pipeline verify %s`", self.root, int(conflicts.sum()), self.root)
        keep = np.flatnonzero(np.array([v is not None for v in y], dtype=bool) & ~conflicts)
        return keep, y[keep].astype(str), [self._rows[i] for i in keep]

    def __repr__(self):
        return f"<FeatureStore {self.root} n={len(self)} {self.feature_spec.describe()}>"


def _read_meta(root: Path, names: bool = True) -> dict:
    """meta.json, read without following a link; with `names`, every name it gives (rows file, segments,
    their files) must be a plain name inside the store (see :mod:`pipeline.store.sealed`)."""
    meta_path = root / "meta.json"
    if not os.path.lexists(meta_path):
        raise StoreError(not_a_store(root))
    try:
        meta = loads(read_text(meta_path))
    except (ValueError, UnicodeDecodeError) as e:
        raise StoreError(f"{meta_path} is damaged ({e}); featurize again with --overwrite") from None
    except OSError as e:
        raise StoreError(f"{meta_path} cannot be read ({e.strerror or e})") from None
    if not isinstance(meta, dict) or "spec" not in meta or not isinstance(meta["spec"], dict):
        raise StoreError(f"{meta_path} is not a feature store's meta file; featurize again with --overwrite")
    if names:
        check_meta_names(root, meta)
    return meta


def verify(root) -> list[str]:
    """Problems found in a store (empty when it is sound): meta, commit log, checksums, shape, values."""
    root = Path(root)
    links = sorted(links_in(root)) if root.is_dir() else []
    if links:  # every one of them, none followed
        return [link_message(root, *found) for found in links[:20]] + (
            [f"... and {len(links) - 20} more links or special files in {root}"] if len(links) > 20 else [])
    try:
        store = FeatureStore.open(root)
        raw_path = _rows_path(root, store.meta)
        partial = os.path.lexists(raw_path) and _ends_partial(raw_path)
    except (StoreError, ValueError) as e:
        return [str(e)]
    problems = []
    if partial:
        problems.append(f"{raw_path} ends with a partial line (a run was killed mid-commit; "
                        f"the next featurize run trims it)")
    bad = [r for r in store.rows if not {"path", "sha256"} <= set(r)]
    if bad:
        problems.append(f"{len(bad)} rows of {raw_path} lack a path or sha256, e.g. {bad[0]}")
    if not store.feature_spec.dim:
        if len(store) or store.committed_rows:
            problems.append(f"{root / 'meta.json'} records no feature dimension")
        else:
            problems.append(f"{root} is empty and unusable: no run has stored a row in it yet (featurize into it)")
        return problems
    try:  # a chunk of rows at a time: a store larger than memory is verified too
        nonfinite = sum(int((~np.isfinite(x)).any(axis=1).sum()) for x in store.feature_chunks())
    except StoreError as e:
        return problems + [str(e)]
    if nonfinite:
        problems.append(f"{nonfinite} feature rows in {root} hold NaN or infinity")
    return problems


def _ends_partial(path: Path) -> bool:
    """True when the log's last byte is not a newline (its last line was cut short); read without a link."""
    with open_read(path) as f:
        size = os.fstat(f.fileno()).st_size
        if not size:
            return False
        f.seek(size - 1)
        return f.read(1) != b"\n"


def read_report(root) -> dict:
    """The last run's report of the store at `root` ({} when there is none or it is unreadable)."""
    try:
        return loads(read_text(Path(root) / "report.json"))
    except (OSError, ValueError):
        return {}


def write_report(root, report: dict) -> None:
    """Write a run's report (skipped files and reasons...) as ``report.json`` in the store, atomically."""
    _atomic_write(Path(root) / "report.json", json.dumps(report, indent=1, ensure_ascii=False))


def not_a_store(root: Path) -> str:
    """Why `root` cannot be opened as a store, and what to run instead (an image folder is featurized first)."""
    if _holds_images(root):
        out = Path("features") / root.resolve().name
        return (f"{root} is a folder of images, not a feature store; featurize it first into a store folder "
                f"(`python -m pipeline featurize {root} --out {out}`) and pass {out} instead")
    what = "does not exist" if not root.exists() else "is not a feature store (no meta.json)"
    return f"{root} {what}; create a store with `python -m pipeline featurize DATA_DIR --out {root}`"


def _holds_images(root: Path, limit: int = 2000) -> bool:
    """True when image files sit in `root` or in its sub-folders (class folders); looks at `limit` entries."""

    folders, seen = [root], 0
    for _ in range(2):
        subs = []
        for folder in folders:
            try:
                entries = list(os.scandir(folder))
            except OSError:
                continue
            for e in entries:
                seen += 1
                if seen > limit:
                    return False
                if e.is_file() and os.path.splitext(e.name)[1].lower() in IMAGE_EXTENSIONS:
                    return True
                if e.is_dir(follow_symlinks=False) and not e.name.startswith("."):
                    subs.append(e.path)
        folders = subs
    return False
