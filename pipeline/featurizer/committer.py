"""The writer stage's driver: featurized batches -> the store, in order, a second of work per commit.

In the background (``background=True``) one thread commits while the network and the reader
work on; batches done within COMMIT_EVERY_S are committed as one part (one set of fsyncs), so a
run killed with -9 loses at most about a second of work however fast the batches come, and a
failed batch stops the later ones: the store then holds every batch before it, and only those.
Without it (Ray: one partition per submit) every batch is committed at once. Rows whose features
are NaN or infinite are skipped with the reason ``nonfinite_features``.
"""
from __future__ import annotations

import logging
import time
from collections import deque
from concurrent.futures import Future, ThreadPoolExecutor

import numpy as np

from .stages import StageClock

log = logging.getLogger(__name__)


class Committer:
    """Commits (features, rows) to a store writer: `submit` in order, then `finish`."""

    COMMIT_EVERY_S = 1.0

    def __init__(self, writer, skipped: list, clock: StageClock, background: bool = False):
        self.writer, self.skipped, self.clock = writer, skipped, clock
        self.done, self.last_commit = [], time.perf_counter()  # featurized batches not yet committed
        self.pending = deque()  # futures of the batches handed to the thread
        self.thread = ThreadPoolExecutor(1, thread_name_prefix="write") if background else None
        self.computed = 0
        self.broken = False

    def set_spec(self, spec) -> None:
        self.writer.set_spec(spec)

    def submit(self, features, rows: list[dict]) -> None:
        """Commit a batch: `features` is an array or a Future of one (its forward pass in flight)."""
        if self.thread is None:
            return self._store(features.result() if isinstance(features, Future) else features, rows)
        self.pending.append(self.thread.submit(self._store_when_done, features, rows))
        while len(self.pending) > 2:  # features waiting for the store stay few; errors surface here
            self.pending.popleft().result()

    def finish(self, failed: bool = False) -> None:
        """Wait for the thread, then commit what is featurized but not committed yet (after a failure
        too, when the store allows: nothing done is lost)."""
        try:
            for future in self.pending:
                future.exception() if failed else future.result()
        finally:
            self.pending.clear()
            if self.thread is not None:
                self.thread.shutdown(wait=True)
        try:
            self._commit_done()
        except Exception:
            if not failed:
                raise
            log.warning("could not commit the last featurized batches", exc_info=True)

    def _store_when_done(self, features, rows: list[dict]) -> None:
        if self.broken:
            return
        try:
            self._store(features.result() if isinstance(features, Future) else features, rows)
        except BaseException:
            self.broken = True
            raise

    def _store(self, feats: np.ndarray, rows: list[dict]) -> None:
        finite = np.isfinite(feats).all(axis=1)
        for row in (r for r, ok in zip(rows, finite) if not ok):
            self.skipped.append({"path": row["path"], "reason": "nonfinite_features",
                                 "detail": "the network gave NaN or infinity for this image"})
        self.done.append((feats[finite], [r for r, ok in zip(rows, finite) if ok]))
        if self.thread is None or time.perf_counter() - self.last_commit >= self.COMMIT_EVERY_S:
            self._commit_done()

    def _commit_done(self) -> None:
        """Append the featurized batches not yet committed to the store, as one part."""
        if self.done:
            feats = self.done[0][0] if len(self.done) == 1 else np.concatenate([f for f, _ in self.done])
            rows = [r for _, batch_rows in self.done for r in batch_rows]
            self.done = []
            with self.clock.timed("write"):
                self.writer.append(feats, rows)
            self.computed += len(rows)
        self.last_commit = time.perf_counter()
