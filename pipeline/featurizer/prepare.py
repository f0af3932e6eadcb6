"""One file's work before the network: its stat against the store's caches, then read, hash and decode.

Shared by the reader's threads (:mod:`pipeline.featurizer.reader`) and the decode pool's worker
processes (:mod:`pipeline.featurizer.decodepool`).
"""
from __future__ import annotations

import os

from ..dataset.listing import ImageRecord
from ..decode.images import decode, read_bytes
from ..errors import ImageError
from .stages import StageClock


def file_stat(path) -> list[int]:
    """[size, mtime_ns, ctime_ns, inode]: ctime changes on every write, and no tool can set it back."""
    st = os.stat(path)
    return [st.st_size, st.st_mtime_ns, st.st_ctime_ns, st.st_ino]


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


def known_files(writer) -> dict:
    """What the store knows: rows (path -> (sha256, stat, label)) and files it skipped (path -> entry with stat)."""
    return {"rows": {r["path"]: (r["sha256"], r.get("stat"), r.get("label")) for r in writer.live_rows()},
            "bad": {b["path"]: b for b in writer.skip_cache()}}


def prepare(record: ImageRecord, bb, known: dict, clock: StageClock | None = None, gpu: bool = False):
    """(record, sha256, stat, result, notes). result: None when cached, an ImageError, the decoded
    uint8 image (H, W, 3), or, for a backbone that featurizes one image at a time in the calling
    thread (TFLite), the feature row (D,) itself. With `gpu` (``--decode gpu``) a JPEG is not decoded
    here: result is its :class:`~pipeline.decode.gpujpeg.Encoded` bytes, for the GPU. `clock` adds up
    the seconds spent reading, decoding and (per image) featurizing."""
    notes, stat = [], None
    clock = clock or StageClock()
    try:
        with clock.timed("read"):
            stat = file_stat(record.path)
            hit = cached(record, stat, known)
            if hit is None:
                data, sha = read_bytes(record.path)
        if hit is not None:
            return record, hit[0], stat, hit[1], notes
        old = known_row(record, known)
        if old is not None and old[0] == sha:
            return record, sha, stat, None, notes
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
