"""The batcher of ``serve``: one thread running the predictor on the images of concurrent requests together."""
from __future__ import annotations

import queue
import threading
import time
from concurrent.futures import Future
from dataclasses import dataclass

import numpy as np


@dataclass
class _Job:
    pixels: np.ndarray  # (k, h, w, 3) uint8
    future: Future


class Batcher:
    """One thread running the backbone and the head on the images of concurrent requests together.

    It takes the first waiting job, then keeps gathering up to `batch_size` images while other
    requests are still being decoded (`decoding()` > 0), for at most `wait_s`: a lone request is
    never kept waiting, and under load one network call serves many requests.
    """

    def __init__(self, predictor, batch_size: int, wait_s: float, decoding=lambda: 0):
        self.predictor, self.batch_size, self.wait_s, self.decoding = predictor, batch_size, wait_s, decoding
        self._queue: queue.Queue = queue.Queue()
        self._thread = threading.Thread(target=self._run, name="batcher", daemon=True)

    def start(self) -> "Batcher":
        self._thread.start()
        return self

    def stop(self) -> None:
        self._queue.put(None)
        self._thread.join()

    def submit(self, pixels: np.ndarray) -> Future:
        job = _Job(pixels, Future())
        self._queue.put(job)
        return job.future

    def _gather(self, first: _Job) -> list[_Job]:
        jobs, n = [first], len(first.pixels)
        deadline = time.monotonic() + self.wait_s
        while n < self.batch_size:
            try:
                job = self._queue.get_nowait()
            except queue.Empty:
                left = deadline - time.monotonic()
                if left <= 0 or self.decoding() <= 0:
                    break
                try:
                    job = self._queue.get(timeout=min(left, 0.001))
                except queue.Empty:
                    continue
            if job is None:  # stop() was called: finish this batch, then stop
                self._queue.put(None)
                break
            jobs.append(job)
            n += len(job.pixels)
        return jobs

    def _run(self) -> None:
        while (first := self._queue.get()) is not None:
            jobs = [j for j in self._gather(first) if j.future.set_running_or_notify_cancel()]  # drop timed-out
            if not jobs:
                continue
            try:
                proba = self.predictor.predict_pixels(np.concatenate([j.pixels for j in jobs]))
            except BaseException as e:  # noqa: BLE001 - handed to every waiting request
                for j in jobs:
                    j.future.set_exception(e)
                continue
            start = 0
            for j in jobs:
                j.future.set_result(proba[start:start + len(j.pixels)])
                start += len(j.pixels)
