"""The reader stage: which files must be read (the store's stat cache), then read, hash and decode them.

A file whose stat (size, mtime, ctime, inode) is unchanged since its row (or its skip) was recorded
has not been written since: it is reused, or skipped again, unread. Any other file is read and
hashed, and its content decides (a touched but identical file is reused too). Files to decode go
to a pool of threads (Pillow releases the GIL for most of a decode) or of worker processes
(:mod:`pipeline.featurizer.decodepool`, from 8 cores on), at most a few batches ahead of the network, so
memory follows the batch and not the folder. Decoding is always :func:`pipeline.decode.images.decode`,
for training, scoring and serving alike. A bad file is an :class:`~pipeline.errors.ImageError`
item, never a crash.

A file whose content the store already holds (the same path with a new label, or another path: a moved or
copied file) is neither decoded nor featurized: its item is a :class:`~pipeline.featurizer.prepare.Copy` of that
row (a decode process, handed the store's contents as digests, answers ``HELD``; the pool names the row).

Per-image backbones (TFLite: one interpreter per thread) are the other strategy: they featurize
each image in the reading thread itself, so their items carry a feature row instead of pixels.
"""
from __future__ import annotations

from collections import deque
from concurrent.futures import ThreadPoolExecutor

from .decodepool import DecodePool, choose_decode, default_workers
from .prepare import prepare
from .stages import StageClock


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
        # gpu (chosen by pipeline.featurizer.gpumapper.decide): threads read, hash and parse headers; the GPU decodes
        self.mode = "gpu" if decode == "gpu" else choose_decode(decode, bb.per_image)
        self.workers = workers or default_workers("thread" if self.mode == "gpu" else self.mode)

    def read(self, records):
        window = max(2 * self.bb.batch_size, 4 * self.workers)
        if self.mode == "process":  # the workers' read/decode time comes back to the clock
            # a ring of 4 batches: the workers decode on while the network holds both batch buffers
            pool = DecodePool(self.bb.preprocess, self.workers, 2 * window, chunk=16, clock=self.clock)
            return pool.map(records, self.known, views=True)
        gpu = self.mode == "gpu"
        return bounded_map(lambda r: prepare(r, self.bb, self.known, self.clock, gpu), records, self.workers, window)
