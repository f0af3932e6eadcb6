"""The mapper stage: prepared images -> features, a batch at a time, through the backbone.

Images are copied into batch arrays allocated once, never stacked from a fresh list: at
thousands of images per second, allocating 70 MB a batch cost more than the network
(BENCHMARKS.md, "GPU"). With ``ahead=True`` the forward pass runs in a background thread while
the caller fills the next batch (two buffers), and each batch's features go to the
:class:`~pipeline.featurizer.committer.Committer` in order. Items that are feature rows already (a per-image
backbone featurized them in the reader's threads) pass through unchanged.
"""
from __future__ import annotations

from collections import deque
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor

import numpy as np

from ..errors import PipelineError
from .stages import StageClock


class Mapper:
    """Batches prepared items, runs the backbone on full batches, hands features to `committer`."""

    def __init__(self, backbone, committer, clock: StageClock, ahead: bool = False):
        self.backbone, self.committer, self.clock = backbone, committer, clock
        self.buffers, self.slot, self.fill, self.rows = [], 0, 0, []
        self.forwards = deque()  # futures of the batches in the forward thread, oldest first
        self.thread = ThreadPoolExecutor(1, thread_name_prefix="forward") if ahead else None
        self.spec_recorded = False

    @property
    def computed(self) -> int:
        return self.committer.computed

    def _record_spec(self):
        if not self.spec_recorded:  # builds the network at the first item that needs it: that fixes the batch size
            self.committer.set_spec(self.backbone.spec())
            self.spec_recorded = True

    def add(self, image, row: dict) -> None:
        """Book one item; `image` may be a view that changes after this returns (it is copied here)."""
        self._record_spec()
        image = np.asarray(image)
        if not self.buffers:
            self.buffers = [np.empty((self.backbone.batch_size, *image.shape), image.dtype)
                            for _ in range(2 if self.thread else 1)]
        buffer = self.buffers[self.slot]
        if image.shape != buffer.shape[1:] or image.dtype != buffer.dtype:  # never broadcast or cast silently
            raise PipelineError(f"{row.get('path', 'an item')} was prepared as {image.dtype} {image.shape}, the "
                                f"batch holds {buffer.dtype} {buffer.shape[1:]}: every item of a run must be alike; "
                                f"this is a bug, please report it")
        buffer[self.fill] = image
        self.fill += 1
        self.rows.append(row)
        if self.fill == len(self.buffers[self.slot]):
            self.flush()

    def flush(self) -> None:
        """Map the items booked so far and hand them on (from the background with `ahead`)."""
        if not self.fill:
            return
        batch, rows = self.buffers[self.slot][:self.fill], self.rows
        self.fill, self.rows = 0, []
        if self.thread is None:
            return self.committer.submit(self.features(batch), rows)
        features = self.thread.submit(self.features, batch)
        self.forwards.append(features)
        self.committer.submit(features, rows)
        self.slot = (self.slot + 1) % len(self.buffers)
        while len(self.forwards) >= len(self.buffers):  # the buffer to fill next is free again
            self.forwards.popleft().result()

    def finish(self, failed: bool = False) -> None:
        """Wait for the batches in flight, stop the thread, let the committer commit what is done; an
        error is raised unless `failed` (the run fails already)."""
        try:
            for future in self.forwards:
                future.exception() if failed else future.result()
        finally:
            self.forwards.clear()
            if self.thread is not None:
                self.thread.shutdown(wait=True)
        self.committer.finish(failed)

    def features(self, batch: np.ndarray) -> np.ndarray:
        """The features of a batch of images (a copy of rows featurized already: the buffer is refilled)."""
        self._record_spec()  # builds the network on the first batch that needs it
        if batch.ndim == 2:
            return batch.copy()
        with self.clock.timed("forward"):
            return self.backbone(batch)


def map_in_batches(backbone, n: int, pixels: Callable[[int, int], np.ndarray]) -> np.ndarray:
    """Features (n, D) of n images held by the caller, a backbone batch at a time: ``pixels(start, stop)``
    gives the uint8 batch of images start..stop, decoded only then (memory follows the batch). What
    ``Classifier.features`` and ``predict_imagenet`` run; a folder goes through :class:`Mapper` instead."""
    step = backbone.batch_size
    out = [backbone(pixels(i, min(i + step, n))) for i in range(0, n, step)]
    return np.concatenate(out) if out else np.zeros((0, backbone.dim or 0), np.float32)
