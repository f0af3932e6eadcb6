"""One file's work before the network: its stat against the store's caches, then read, hash and decode.

Shared by the reader's threads (:mod:`pipeline.featurizer.reader`) and the decode pool's worker
processes (:mod:`pipeline.featurizer.decodepool`). A file whose content the store holds already, under
its own path with another label (a corrected labels CSV) or under another path (a file moved to another
class folder, or copied), is neither decoded nor featurized here: its item is a :class:`Copy` of that
row's features, committed with the file's own path, label and stat. (A decode process knows its own files'
rows and the store's contents as an index of digests, :func:`content_index`: a file whose content is held
elsewhere comes back as :data:`HELD`, undecoded, and the pool names the row that holds it,
:func:`known_content`.)
"""
from __future__ import annotations

import os
import re
from dataclasses import dataclass

import numpy as np

from ..dataset.listing import ImageRecord
from ..decode.images import decode, read_bytes
from ..errors import ImageError
from .stages import StageClock


def file_stat(path) -> list[int]:
    """[size, mtime_ns, ctime_ns, inode]: ctime changes on every write, and no tool can set it back."""
    st = os.stat(path)
    return [st.st_size, st.st_mtime_ns, st.st_ctime_ns, st.st_ino]


@dataclass(frozen=True)
class Copy:
    """The result of a file whose content a store holds: its row takes those features instead of a forward
    pass. `store` None: this store, under the path `source` (a row in force); else the index of the
    ``--reuse-from`` store that holds it (found there by content)."""

    source: str | None
    store: int | None = None


# A decode process's answer for content the store (or a --reuse-from store) holds under another path: the
# process knows only that it is held (``known["index"]``), the pool's parent finds where (:func:`known_content`).
HELD = Copy(None, None)

_HEX64 = re.compile(r"[0-9a-f]{64}")  # a sha256 as hashlib writes it


def content_index(known: dict) -> np.ndarray | None:
    """The contents a run can copy (:func:`known_files`' ``by_sha`` and ``other``) as sorted 32-byte sha256s, for
    processes that are not handed the whole map (decode pool workers, Ray tasks): 32 bytes a content, looked up
    with :func:`holds`. None when there are none. Lowercase hex digests only: what a file hashes to (an
    imported store's other ids match no file)."""
    keys = [sha for sha in (*known.get("by_sha", ()), *known.get("other", ())) if _HEX64.fullmatch(sha)]
    if not keys:
        return None
    return np.sort(np.frombuffer(bytes.fromhex("".join(keys)), dtype="S32"))


def holds(index: np.ndarray | None, sha: str) -> bool:
    """Whether `sha` (hex) is in `index` (:func:`content_index`)."""
    if index is None or not sha:
        return False
    key = np.array(bytes.fromhex(sha), dtype="S32")
    i = int(np.searchsorted(index, key))
    return i < len(index) and index[i] == key


def content_source(record: ImageRecord, sha: str, known: dict) -> Copy | None:
    """Where this content (sha256) is held: the record's own row first, then another row of this store, then a
    ``--reuse-from`` store; None when none holds it. A decode pool worker has its own file's row and the
    content index (``known["index"]``) instead of the maps: :data:`HELD` when the index holds it."""
    old = known["rows"].get(record.relpath)
    if old is not None and old[0] == sha:
        return Copy(record.relpath)
    path = known.get("by_sha", {}).get(sha)
    if path is not None:
        return Copy(path)
    k = known.get("other", {}).get(sha)
    if k is not None:
        return Copy(None, k)
    return HELD if holds(known.get("index"), sha) else None


def known_row(record: ImageRecord, known: dict):
    """The store's (sha256, stat, label) for `record`'s path, or None when it has none or its label is
    no longer the record's (a corrected labels CSV): such a row is featurized again, never kept as it was."""
    old = known["rows"].get(record.relpath)
    return old if old is not None and old[2] == record.label else None


def cached(record: ImageRecord, stat, known: dict):
    """(sha256, None) to reuse the stored row, (None, ImageError) to skip the file again as before (its
    bytes were bad), or None: the file's stat (size, mtime, ctime, inode) or its label is not what the store
    recorded, or reading it failed (``io_error:*``), which may not happen again."""
    old = known_row(record, known)
    if old is not None and old[1] == stat:
        return old[0], None
    bad = known["bad"].get(record.relpath)
    if bad is not None and bad["stat"] == stat and not bad["reason"].startswith("io_error:"):
        return None, ImageError(record.path, bad["reason"], bad.get("detail", ""))
    return None  # an I/O error (too many open files, a network mount) says nothing of the file: read it again


def known_files(writer, sources=()) -> dict:
    """What the store knows: rows (path -> (sha256, stat, label)), files it skipped (path -> entry with stat),
    which path holds each content (sha256 -> path, the first row in force with it), and which ``--reuse-from``
    store (`sources`, :class:`pipeline.store.copies.Source`) holds each content this store lacks (``other``)."""
    rows = {r["path"]: (r["sha256"], r.get("stat"), r.get("label")) for r in writer.live_rows()}
    by_sha = {}
    for path, (sha, _, _) in rows.items():
        by_sha.setdefault(sha, path)
    other = {}
    for k, source in enumerate(sources):
        for sha in source.contents:
            if sha not in by_sha:
                other.setdefault(sha, k)
    return {"rows": rows, "bad": {b["path"]: b for b in writer.skip_cache()}, "by_sha": by_sha, "other": other}


def relabelled(record: ImageRecord, stat, known: dict):
    """(sha256, Copy of its own row) for a file unchanged since its row (same stat) whose label is no longer
    the row's: the features stand, the label is new. None otherwise."""
    old = known["rows"].get(record.relpath)
    if old is not None and old[1] == stat and old[2] != record.label:
        return old[0], Copy(record.relpath)
    return None


def known_content(item, known: dict):
    """A decode pool worker's `item` with a :data:`HELD` result as the :class:`Copy` of the row that holds its
    content (found in `known`, :func:`known_files`); any other item as it is."""
    record, sha, stat, result, notes = item
    if not (isinstance(result, Copy) and result == HELD):
        return item
    copy = content_source(record, sha, known)
    if copy is None or copy == HELD:
        raise AssertionError(f"{record.path}: the content index holds {sha}, the store's contents do not")
    return record, sha, stat, copy, notes


def prepare(record: ImageRecord, bb, known: dict, clock: StageClock | None = None, gpu: bool = False):
    """(record, sha256, stat, result, notes). result: None when cached, a :class:`Copy` when the store holds the
    content under the same path with another label or under another path, an ImageError, the decoded
    uint8 image (H, W, 3), or, for a backbone that featurizes one image at a time in the calling
    thread (TFLite), the feature row (D,) itself. With `gpu` (``--decode gpu``) a JPEG is not decoded
    here: result is its :class:`~pipeline.decode.gpujpeg.Encoded` bytes, for the GPU. `clock` adds up
    the seconds spent reading, decoding and (per image) featurizing."""
    notes, stat = [], None
    clock = clock or StageClock()
    try:
        with clock.timed("read"):
            stat = file_stat(record.path)
            hit = cached(record, stat, known) or relabelled(record, stat, known)
            if hit is None:
                data, sha = read_bytes(record.path)
        if hit is not None:
            return record, hit[0], stat, hit[1], notes
        old = known_row(record, known)
        if old is not None and old[0] == sha:
            return record, sha, stat, None, notes  # touched, not changed: the row stands
        copy = content_source(record, sha, known)
        if copy is not None:
            return record, sha, stat, copy, notes
        with clock.timed("decode"):
            if gpu:  # --decode gpu: a JPEG's header is checked here, its bytes decoded on the GPU
                from ..decode.gpujpeg import inspect

                image = inspect(data, bb.preprocess, record.path, notes)
            else:
                image = decode(data, bb.preprocess, record.path, notes)
        if bb.per_image:
            bb.load()  # built once, outside the timed forward pass
            with clock.timed("forward"):
                image = bb.featurize_one(image)
        return record, sha, stat, image, notes
    except OSError as e:
        return record, None, stat, ImageError(record.path, f"io_error:{type(e).__name__}", e.strerror or str(e)), notes
    except ImageError as e:
        return record, None, stat, e, notes
