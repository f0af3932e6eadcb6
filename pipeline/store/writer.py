"""Writing a store: :class:`StoreWriter` (commit, recover, merge, withdraw, prune); opened by store/opening.py."""
from __future__ import annotations

import contextlib
import json
import os
import shutil
import time
from pathlib import Path

import numpy as np

from ..errors import PipelineError, StoreError, WriteError
from ..jsontext import loads
from ..outputs import write_failure
from ..spec import FeatureSpec
from .log import RowBlock, _block_line, _log_lines, _read_rows, _rows_path, live_indices, log_has_path
from .pathset import PathSet
from .pieces import (
    _STAGING,
    _atomic_write,
    _check_part,
    _check_sizes,
    _link_piece,
    _manifest,
    _part_checksums,
    _part_manifest_file,
    _parts,
    _piece_len,
    _read_piece,
    _remove_part,
    _segment_dir,
    _write_piece,
    chunklen_for,
)
from .copies import copied_blocks, source_indices
from .reader import FORMAT, FeatureStore, RowSummary, read_committed, read_report, write_report
from .sealed import open_append, read_text

SKIPS_FILE = "skips.json"  # the skip cache: files a run could not use, with their stat
MERGE_ROWS = 65536  # a run's parts become a segment once they hold this many rows (or 1/8 of the store)
ADOPT_ROWS = 2048  # at close, parts at least this big each become a segment as they are (no rewrite)
COPY_ROWS = 4096  # rows copied from rows of the same content (copy_rows), read back and committed at a time
HELD_BYTES = 16 << 20  # featurize's features not yet merged, kept in memory up to this: merged without reading back
KEPT = "the rows committed so far are kept: run the same command again to resume from them"


class RepeatedPath(StoreError):
    """A block of rows that must add only new paths repeats `path` (:meth:`StoreWriter.append_block`)."""

    def __init__(self, path: str):
        super().__init__(f"the path {path!r} is already in the store, or twice in the rows to add")
        self.path = path


class StoreWriter:
    """Appends committed batches of rows to a store; created by :func:`open_writer`.

    Each commit is a part of its own; parts are merged into a segment during the run, once they
    hold MERGE_ROWS rows or an eighth of the store, and at close: long runs keep few files and
    segments grow with the store. At close, parts of ADOPT_ROWS rows or more (a fast run commits a
    second of work at a time) become segments as they are, through hard links: rewriting them
    would cost as much as writing them did, at the end of the run when nothing overlaps it. Smaller
    parts are merged from the copies :meth:`append` kept of their features (HELD_BYTES at most),
    not read back and checked again: a short run's close only writes its segment.

    Rows come one dict each (:meth:`append`, featurize's, kept in memory as ``rows``) or as columns
    (:meth:`append_block`, an import's: one log line per block and nothing of it kept, so a writer of
    millions of rows holds one batch at a time, plus 8 bytes a row to know which paths are new).
    """

    def __init__(self, root: Path, meta: dict, lock_fd: int):
        self.root, self.meta, self._lock_fd = root, meta, lock_fd
        self.created = False  # open_writer: True when this run made the folder
        self._merges_held = False  # True while copy_rows reads the committed pieces
        self._failed = None  # why writing failed (a full disk...): the log may end mid-batch, nothing more is added
        self.meta.setdefault("rows_file", "rows.jsonl")
        rows_path = _rows_path(root, self.meta)
        self._rows_path = rows_path
        self._rows, end = _read_rows(rows_path)  # None once blocks are committed: read back when asked for
        self._count = len(self._rows)  # committed rows (lines of the log, a block's rows each)
        self._live = self._paths = self._labels = None  # kept from the first block on: see _index_paths
        self._base = self._adopt_legacy()
        self._check_segments(rows_path)
        self._next = self._recover()
        # the features of this run's parts, in commit order, while they cover every part since the last segment
        self._held: list[np.ndarray] | None = [] if self._next == self._base else None
        self._held_bytes = 0
        (root / "parts").mkdir(exist_ok=True)
        self._rows_file = open_append(rows_path)  # never through a link, never a file with a second name
        self._rows_file.truncate(end)

    def _adopt_legacy(self) -> int:
        """Rows held by segments; a store-1 carray becomes the first segment, as is."""
        if "segments" not in self.meta:
            legacy = self.root / "features.bcolz"
            self.meta["segments"] = ([{"name": "features.bcolz", "rows": self._count}]
                                     if legacy.exists() and self._count else [])
            self.meta["format"] = FORMAT
        return sum(s["rows"] for s in self.meta["segments"])

    def _check_segments(self, rows_path: Path) -> None:
        """Refuse to build on a damaged store (appending would only bury the damage): segments holding more
        rows than the log lists (its lines were lost), or segment files missing or of another size."""
        if self._base > self._count:
            raise StoreError(f"{rows_path} lists {self._count} rows but the store's segments hold {self._base}: "
                             f"lines were removed from the log; featurize again with --overwrite")
        for seg in self.meta["segments"]:
            _check_sizes(self.root, _segment_dir(self.root, seg["name"]), seg.get("files"))

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
        parts = _parts(self.root)
        for start, folder in parts:
            length = _piece_len(folder) if start == have else 0
            if start == have and have < self._count:
                _check_part(folder)  # flipped bytes in a killed run's part must not be merged and re-checksummed
                if start + length > self._count:  # only some of its lines were committed
                    keep = _read_piece(folder, self._count - start, self.meta["spec"]["dim"])
                    _remove_part(folder)
                    _write_piece(folder, [keep], keep.shape[1], max(1, len(keep)), _part_manifest_file(folder))
                    length = len(keep)
                have += length
            else:
                _remove_part(folder)  # merged already, or never committed
        known = {_part_manifest_file(f).name for _, f in parts}
        if (self.root / "parts").is_dir():
            for f in (self.root / "parts").glob("*.bcolz.json"):
                if f.name not in known or not f.with_name(f.name[:-5]).exists():
                    f.unlink(missing_ok=True)  # checksums of a part that was never renamed into place
        if have < self._count:
            raise StoreError(f"{self.root} lists {self._count} rows but holds features for {have}; "
                             f"the store is damaged: featurize again with --overwrite")
        return have

    @property
    def rows(self) -> list[dict]:
        """Every committed row, in log order (read back from the log once blocks were committed)."""
        if self._rows is None:
            self._rows, _ = _read_rows(self._rows_path)
        return self._rows

    def append(self, features: np.ndarray, rows: list[dict]) -> None:
        """Commit a batch: its features as a new part (atomic rename), then its lines in the log."""
        x = self._batch(features, len(rows))
        if not len(x):
            return
        keep = self._held is not None and self._held_bytes + x.nbytes <= HELD_BYTES
        if keep and (x is features or not x.flags.owndata):  # the caller's memory (an array, a view of one, a
            x = x.copy()  # memoryview...), which it may reuse: the part and the copy kept are one array of our own
        held = self.rows  # read back before this batch's lines are in the log
        self._commit(x, _log_lines(rows, self._count))
        held.extend(rows)
        self._hold(x if keep else None)
        self._live = self._paths = self._labels = None
        self._merge_due()

    def append_block(self, features: np.ndarray, block: RowBlock, new_paths: bool = False) -> None:
        """Commit a batch whose rows come as columns (an import's): its features as a new part, then one log
        line for the whole block. Nothing of the block is kept: ``rows`` reads the log again if asked for.
        With `new_paths`, a block repeating a path (a committed row's, or its own) is refused before anything
        of it is written: :class:`RepeatedPath` names the path."""
        if not len(block.label) == len(block.sha256) == len(block) or None in block.path or "" in block.path:
            raise StoreError(f"cannot append a block of rows to {self.root}: every row needs a path, a label (or "
                             f"None) and a sha256")
        x = self._batch(features, len(block))
        if not len(x):
            return
        self._index_paths()
        repeated = self._repeated(block, self._paths.add(block.path), new_paths)
        if repeated:
            self._live = self._paths = self._labels = None  # count from the rows when needed
            if new_paths:
                raise RepeatedPath(repeated)
        self._commit(x, _block_line(block, self._count))
        self._hold(None)  # nothing of a block is kept: its parts are read back when merged
        self._rows = None
        if self._live is not None:
            self._live += len(x)
            self._labels.update(block.label)
        self._merge_due()

    def _repeated(self, block: RowBlock, maybe: list[int], confirm: bool) -> str | None:
        """The first path of `block` at positions `maybe` (whose hash was seen) that is really a repeat: of an
        earlier one in the block or of a committed row (checked in the log); without `confirm`, more than a
        few candidates are taken as repeats unchecked (the live count is then taken from the rows)."""
        if not confirm and len(maybe) > 8:
            return block.path[maybe[0]]
        for k in maybe:
            p = block.path[k]
            if p in block.path[:k] or self.has_path(p):
                return p
        return None

    def has_path(self, path: str) -> bool:
        """True when a committed row (live or not) has this path; read from the log, a line at a time."""
        return log_has_path(self._rows_path, path)

    def _index_paths(self) -> None:
        """From the first block on, the writer knows without the rows how many are live and their labels
        (what meta.json and the store it hands back need), while each block adds only new paths."""
        if self._paths is None:
            live = self.live_rows()
            self._paths, self._live = PathSet(), len(live)
            self._labels = {r.get("label") for r in live}
            self._paths.add([r["path"] for r in self.rows])

    def _batch(self, features: np.ndarray, n: int) -> np.ndarray:
        x = np.ascontiguousarray(features, dtype=np.float32)
        if x.ndim != 2 or x.shape[0] != n or x.shape[1] != self.meta["spec"]["dim"]:
            raise StoreError(f"cannot append features of shape {x.shape} for {n} rows to "
                             f"{self.root} (D={self.meta['spec']['dim']})")
        if not np.all(np.isfinite(x)):
            raise StoreError("refusing to store non-finite features")
        if len(x) and self._failed:
            raise StoreError(self._failed)
        return x

    def _commit(self, x: np.ndarray, lines: bytes) -> None:
        """The features as a new part (atomic rename), then the log lines appended and fsynced: the commit."""
        part = self.root / "parts" / f"{self._next:012d}.bcolz"
        with self._writing(part):
            _write_piece(part, [x], x.shape[1], min(len(x), chunklen_for(x.shape[1])), _part_manifest_file(part))
        with self._writing(self._rows_path):
            self._rows_file.write(lines)
            self._rows_file.flush()
            os.fsync(self._rows_file.fileno())
        self._count += len(x)
        self._next += len(x)

    def _hold(self, x: np.ndarray | None) -> None:
        """Keep a committed part's features (an array of the writer's own) for the merge; None (a part not
        kept: an import's block, or one past HELD_BYTES) leaves the merge to read the parts back."""
        if self._held is None or x is None:
            self._held = None
        else:
            self._held.append(x)
            self._held_bytes += x.nbytes

    def _merge_due(self) -> None:
        if not self._merges_held and self._next - self._base >= max(MERGE_ROWS, self._count // 8):
            self._merge_parts()

    def live_rows(self) -> list[dict]:
        """The rows in force (the last of each path, withdrawn paths left out)."""
        return [self.rows[i] for i in live_indices(self.rows)]

    def copy_rows(self, rows: list[dict], sources: list[str]) -> None:
        """Commit `rows` with the features of the rows of the paths `sources` (one each) holding the same content:
        files the store holds already (a new label, a moved or copied file; pipeline/store/copies.py), read
        back in one pass over the pieces, during which no merge rewrites them."""
        want = source_indices(self.rows, rows, sources, self.root)
        self._merges_held = True
        try:
            for x, block in copied_blocks(self.root, self.meta, self._count, want, rows, COPY_ROWS):
                self.append(x, block)
        finally:
            self._merges_held = False
        self._merge_due()

    def remove(self, withdrawn: dict[str, str]) -> None:
        """Withdraw the rows of these paths ({path: reason}): files that can no longer be used.

        Appends a ``removed`` row (with a zero feature row, so log and features stay aligned)
        for each path that has a row in force; nothing is rewritten in place.
        """
        live = {r["path"] for r in self.live_rows()}
        rows = [{"path": p, "removed": reason} for p, reason in withdrawn.items() if p in live]
        if rows:
            self.append(np.zeros((len(rows), self.meta["spec"]["dim"]), np.float32), rows)

    def set_spec(self, spec: FeatureSpec | dict) -> None:
        """Record the loaded backbone's full spec (tensor, D); it must match what is stored."""
        old, new = FeatureSpec.of(self.meta["spec"]), FeatureSpec.of(spec)
        if old.loaded and old.differences(new):
            raise StoreError(f"{self.root} holds features of {old.describe()}, not of {new.describe()}; "
                             f"use another --out, or --overwrite to replace it")
        self.meta["spec"] = new.to_dict()
        self._write_meta()

    @contextlib.contextmanager
    def _writing(self, path: Path):
        """A failed write (a full disk, no permission...) becomes a StoreError naming the file and what to do;
        the writer then adds nothing more (what is committed stays, and the next run resumes from it)."""
        try:
            yield
        except OSError as e:
            if isinstance(e, PipelineError) and not isinstance(e, WriteError):
                raise
            self._failed = f"{e}; {KEPT}" if isinstance(e, WriteError) else write_failure(path, e, KEPT)
            raise StoreError(self._failed) from e

    def write_report(self, report: dict) -> None:
        with self._writing(self.root / "report.json"):
            write_report(self.root, report)

    def write_skips(self, skipped: list[dict]) -> None:
        """Record the files this run could not use, with their stat: the next run skips them unread
        while their stat is unchanged (``skips.json``; the report is an output, not read back)."""
        entries = [s for s in skipped if s.get("stat")]
        with self._writing(self.root / SKIPS_FILE):
            _atomic_write(self.root / SKIPS_FILE, json.dumps(entries, ensure_ascii=False))

    def skip_cache(self) -> list[dict]:
        """The files the last run could not use ({path, reason, detail, stat}); stores written before
        ``skips.json`` existed kept them in report.json."""
        try:
            entries = loads(read_text(self.root / SKIPS_FILE))
        except FileNotFoundError:
            entries = read_report(self.root).get("skipped", [])
        except (OSError, ValueError) as e:
            raise StoreError(f"{self.root / SKIPS_FILE} is damaged ({e}); featurize again with --overwrite") from None
        return [e for e in entries if isinstance(e, dict) and e.get("stat") and e.get("path")]

    def _merge_parts(self, adopt: bool = False) -> None:
        """Merge this run's parts into one new immutable segment listed in meta.json (with `adopt`,
        parts of ADOPT_ROWS rows or more each become a segment as they are)."""
        # committed parts only: one written before a failed log append (a full disk) holds no committed row
        parts = [(s, f) for s, f in _parts(self.root) if self._base <= s < self._next]
        if not parts:
            return
        seg_dir = self.root / "segments"
        seg_dir.mkdir(exist_ok=True)
        # parts too few rows in all for each to hold ADOPT_ROWS are merged without opening each to count them
        adopt = adopt and self._next - self._base >= ADOPT_ROWS * len(parts)
        lengths = [_piece_len(f) for _, f in parts] if adopt else []
        if adopt and min(lengths) >= ADOPT_ROWS:
            self._held, self._held_bytes = None, 0
            self._adopt_parts(parts, lengths, seg_dir)
            self._held = []
            return
        dim = self.meta["spec"]["dim"]
        name = f"seg-{len(self.meta['segments']):06d}-{self._base:012d}.bcolz"
        held, self._held, self._held_bytes = self._held, None, 0  # [] again once the segment is listed
        if held is not None and len(held) == len(parts) and sum(map(len, held)) == self._next - self._base:
            blocks = iter(held)  # the arrays each part was written from, one per commit, in order
        else:
            for _, f in parts:
                _check_part(f)
            blocks = (_read_piece(f, None, dim) for _, f in parts)  # each part opened once, all its rows read
        with self._writing(seg_dir / name):
            n = _write_piece(seg_dir / name, blocks, dim, chunklen_for(dim))
        if n != self._next - self._base:  # a part gone (or one too many): the rows would shift against the log
            raise StoreError(f"{self.root}: the parts from row {self._base} on hold {n} rows but the log lists "
                             f"{self._next - self._base}; the store is damaged: featurize again with --overwrite")
        self.meta["segments"].append({"name": name, "rows": n, "files": _manifest(seg_dir / name)})
        self._base += n
        self._write_meta()
        self._held = []
        for _, f in parts:
            _remove_part(f)

    def _adopt_parts(self, parts: list, lengths: list[int], seg_dir: Path) -> None:
        """Each part becomes a segment under a second name, keeping the checksums written with it (every
        read checks them); then meta.json lists them."""
        for (start, f), n in zip(parts, lengths):
            name = f"seg-{len(self.meta['segments']):06d}-{start:012d}.bcolz"
            with self._writing(seg_dir / name):
                _link_piece(f, seg_dir / name)
            self.meta["segments"].append({"name": name, "rows": n, "files": _part_checksums(f)})
            self._base += n
        self._write_meta()
        for _, f in parts:
            _remove_part(f)

    def prune(self, keep_paths: set[str]) -> int:
        """Drop the rows of files not in `keep_paths` (and superseded rows): rewrite into one segment."""
        self._merge_parts()
        keep = [i for i in live_indices(self.rows) if self.rows[i]["path"] in keep_paths]
        dropped = len(self.rows) - len(keep)
        if dropped == 0:
            return 0
        x = read_committed(self.root, self.meta, len(self.rows))[keep] if keep else None
        gen = int(self.meta.get("generation", 0)) + 1
        rows = [self.rows[i] for i in keep]
        rows_file = f"rows-{gen}.jsonl"
        with self._writing(self.root / rows_file):
            _atomic_write(self.root / rows_file, _log_lines(rows, 0).decode("utf-8"))
        dim = self.meta["spec"]["dim"]
        name = f"seg-g{gen}.bcolz"
        with self._writing(self.root / "segments" / name):
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
        self._rows, self._count, self._base, self._next = rows, n, n, n
        self._live = self._paths = self._labels = None
        self._rows_path = self.root / rows_file
        self._rows_file = open_append(self._rows_path)
        return dropped

    def _write_meta(self) -> None:
        self.meta["updated"] = time.strftime("%Y-%m-%dT%H:%M:%S%z")
        self.meta["rows"] = self._live if self._live is not None else len(live_indices(self.rows))
        with self._writing(self.root / "meta.json"):
            _atomic_write(self.root / "meta.json", json.dumps(self.meta, indent=1))

    def close(self) -> FeatureStore:
        try:
            self._merge_parts(adopt=True)
            self._write_meta()
        finally:
            self.abort()
        if self._rows is None and self._live is not None:  # blocks: the store reads its rows when asked for
            return FeatureStore(self.root, self.meta, None, RowSummary(self._live, frozenset(self._labels)))
        return FeatureStore(self.root, self.meta, self.rows)

    def abort(self) -> None:
        """Release the store; committed rows stay (as parts, merged by the next run)."""
        if not self._rows_file.closed:
            try:
                self._rows_file.close()
            except OSError:  # the disk is full: the bytes it still held were never committed
                pass
        if self._lock_fd is not None:
            os.close(self._lock_fd)
            self._lock_fd = None

    @property
    def discardable(self) -> bool:
        """True for a store this run created and has committed nothing to."""
        return not self._count and self.created

    def discard_if_empty(self) -> bool:
        """After a failed first run that stored nothing: remove the folder it created (True if removed)."""
        if not self.discardable:
            return False
        self.abort()
        shutil.rmtree(self.root, ignore_errors=True)
        return True
