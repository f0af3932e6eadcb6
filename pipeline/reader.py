"""The reader stage: which files must be read (the store's stat cache), then read, hash and decode them.

A file whose stat (size, mtime, ctime, inode) is unchanged since its row (or its skip) was recorded
has not been written since: it is reused, or skipped again, unread. Any other file is read and
hashed, and its content decides (a touched but identical file is reused too). Files to decode go
to a pool of threads (Pillow releases the GIL for most of a decode) or of worker processes
(:mod:`pipeline.decodepool`, from 8 cores on), at most a few batches ahead of the network, so
memory follows the batch and not the folder. Decoding is always :func:`pipeline.images.decode`,
for training, scoring and serving alike. A bad file is an :class:`~pipeline.errors.ImageError`
item, never a crash.

Per-image backbones (TFLite: one interpreter per thread) are the other strategy: they featurize
each image in the reading thread itself, so their items carry a feature row instead of pixels.
"""
from __future__ import annotations

import os
from collections import deque
from concurrent.futures import ThreadPoolExecutor

from .decodepool import DecodePool, choose_decode, default_workers
from .errors import ImageError
from .images import decode, read_bytes
from .listing import ImageRecord
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


def prepare(record: ImageRecord, bb, known: dict, clock: StageClock | None = None):
    """(record, sha256, stat, result, notes). result: None when cached, an ImageError, the decoded
    uint8 image (H, W, 3), or, for a backbone that featurizes one image at a time in the calling
    thread (TFLite), the feature row (D,) itself. `clock` adds up the seconds spent reading,
    decoding and (per image) featurizing."""
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


def bounded_map(fn, items, workers: int, window: int):
    """Ordered map over a thread pool with at most `window` results in flight."""
    with ThreadPoolExecutor(workers, thread_name_prefix="decode") as pool:
        pending = deque()
        for item in items:
            pending.append(pool.submit(fn, item))
            if len(pending) >= window:
                yield pending.popleft().result()
        while pending:
            yield pending.popleft().result()


class Reader:
    """Prepared items of `records` in order: (record, sha256, stat, result, notes), as :func:`prepare`.

    `decode`: "thread", "process" or "auto"; `workers`: threads or processes (None: the cores this
    process may use, less one for processes). A decoded image from the process pool is a view of its
    shared-memory slot, valid until the next item is asked for: the consumer copies it at once.
    """

    def __init__(self, bb, known: dict, workers: int | None = None, decode: str = "auto",
                 clock: StageClock | None = None):
        self.bb, self.known, self.clock = bb, known, clock or StageClock()
        self.mode = choose_decode(decode, bb.per_image)
        self.workers = workers or default_workers(self.mode)

    def read(self, records):
        window = max(2 * self.bb.batch_size, 4 * self.workers)
        if self.mode == "process":  # the workers' read/decode time comes back to the clock
            # a ring of 4 batches: the workers decode on while the network holds both batch buffers
            pool = DecodePool(self.bb.preprocess, self.workers, 2 * window, chunk=16, clock=self.clock)
            return pool.map(records, self.known, views=True)
        return bounded_map(lambda r: prepare(r, self.bb, self.known, self.clock), records, self.workers, window)
