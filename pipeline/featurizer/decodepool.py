"""Decoding in worker processes: the input stage that scales with cores.

Pillow holds the GIL for part of every decode, so a pool of threads stops scaling after a few
cores (measured on 16 cores: 16 threads 1,318 img/s, 16 processes 4,130). :class:`DecodePool`
runs the reader's per-file work (stat check against the store, read + sha256, decode) in worker
processes, as many as the cores this process may use (``os.sched_getaffinity``). Decoded pixels
are written by the workers into a ring of slots in one shared-memory block and copied out by
the parent, so only a few small tuples per file travel through pipes; results come back in the
order of the input, with the same per-file :class:`~pipeline.errors.ImageError` reports and notes,
and the pixels are those of :func:`pipeline.decode.images.decode` itself (it is what the workers run).
At most ``window`` files are in flight (the ring's size), which bounds memory.
"""
from __future__ import annotations

import os
import threading
import time
from collections import deque
from dataclasses import dataclass

import numpy as np

from ..errors import ImageError
from ..machine import usable_cores
from ..preprocess import Preprocess

DECODE_CHOICES = ("auto", "thread", "process", "gpu")
PROCESS_MIN_CORES = 8  # 'auto' takes processes from here on (2 cores: threads measured faster, BENCHMARKS.md)


def default_workers(mode: str, cores: int | None = None) -> int:
    """Decode workers when none are asked for: a thread per core; with processes, one core is left to the
    run's own process (it gathers batches and drives the network and the store: on 16 cores, 15
    processes fed an H100 faster than 16, BENCHMARKS.md)."""
    cores = cores or usable_cores()
    return max(1, cores - 1) if mode == "process" else cores


def choose_decode(decode: str, per_image: bool, cores: int | None = None) -> str:
    """'thread' or 'process' for a decode choice; per-image backbones (TFLite) always decode in threads."""
    if decode not in DECODE_CHOICES:
        from ..errors import UsageError

        raise UsageError(f"unknown decode mode {decode!r}; choose one of {', '.join(DECODE_CHOICES)}")
    if decode == "gpu":  # pipeline.featurizer.gpumapper.decide chooses gpu, and refuses it where it cannot run
        from ..errors import UsageError

        raise UsageError("decode='gpu' needs a Keras backbone on JAX with a CUDA GPU (pipeline.featurizer.gpumapper)")
    if per_image:  # they featurize inside the decoding thread, one interpreter per thread
        return "thread"
    if decode == "auto":
        return "process" if (cores or usable_cores()) >= PROCESS_MIN_CORES else "thread"
    return decode


@dataclass(frozen=True)
class _DecodeOnly:
    """What reader.prepare needs of a backbone to decode (no network: workers never build one)."""

    preprocess: Preprocess
    per_image: bool = False


_RING: np.ndarray | None = None  # in a worker: the shared ring of decoded images
_SHM = None  # the worker's multiprocessing.shared_memory.SharedMemory
_INDEX: np.ndarray | None = None  # in a worker: the contents the run can copy (prepare.content_index)


def _attach(name: str, shape: tuple, parent: int, index: np.ndarray | None = None) -> None:
    global _RING, _SHM, _INDEX
    from multiprocessing import shared_memory

    _SHM = shared_memory.SharedMemory(name=name)
    _RING = np.ndarray(shape, np.uint8, buffer=_SHM.buf)
    _INDEX = index
    threading.Thread(target=_exit_with, args=(parent,), daemon=True).start()


def _exit_with(parent: int, every: float = 0.5) -> None:
    """End this worker when the run's process is gone (killed with -9, say): ProcessPoolExecutor workers
    would otherwise wait for work forever, and keep the forkserver and the shared memory alive."""
    while True:
        time.sleep(every)
        try:
            os.kill(parent, 0)
        except ProcessLookupError:
            os._exit(1)
        except PermissionError:
            pass  # alive, owned by another user


def _work(first_slot: int, pre: Preprocess, items: list) -> list:
    """Prepare each (record, known) of a chunk; decoded images go to the ring, small tuples come back."""
    from .prepare import Copy
    from .prepare import prepare as _prepare
    from .stages import StageClock

    bb, out, clock = _DecodeOnly(pre), [], StageClock()
    for j, (record, known) in enumerate(items):
        # content held under another path is not decoded: it comes back as prepare.HELD, _drain names the row
        _, sha, stat, result, notes = _prepare(record, bb, {**known, "index": _INDEX}, clock)
        if isinstance(result, ImageError):
            result = ("error", result.reason, result.detail)
        elif isinstance(result, Copy):
            result = ("copy", result.source, result.store)
        elif result is not None:
            _RING[(first_slot + j) % len(_RING)] = result
            result = ("image",)
        out.append((sha, stat, result, notes))
    return out, clock.busy  # the busy seconds of the chunk go back to the run's clock


def _known_for(record, known: dict) -> dict:
    """The part of the store's knowledge about one file (so a task pickles a few entries, not the store)."""
    rows, bad = known["rows"].get(record.relpath), known["bad"].get(record.relpath)
    return {"rows": {record.relpath: rows} if rows is not None else {},
            "bad": {record.relpath: bad} if bad is not None else {}}


class DecodePool:
    """Worker processes that prepare files for the reader: ``map`` is a drop-in for reader.bounded_map's role."""

    def __init__(self, preprocess: Preprocess, workers: int | None = None, window: int = 256, chunk: int = 8,
                 clock=None):
        self.pre, self.clock = preprocess, clock  # clock: a stages.StageClock adding up the workers' busy time
        self.workers = max(1, workers or usable_cores())
        self.chunk = max(1, min(chunk, window))
        self.slots = max(window, 2 * self.chunk)
        self.views = False

    def map(self, records, known: dict, views: bool = False):
        """Yield (record, sha256, stat, result, notes) per record, in order, like reader.prepare (a worker's
        :data:`~pipeline.featurizer.prepare.HELD` is named here: the Copy of the row that holds the content).

        Files the store already has by stat are answered here without a worker; the workers (and
        the shared memory) are started at the first file that must be read. With `views`, a decoded
        image is a view of its slot in the shared ring, valid only until the next item is asked for
        (the mapper copies it straight into its batch): no allocation and no copy per image, which
        at thousands of images per second is what bounded the parent (BENCHMARKS.md).
        """
        self.views = views
        self.slots = _fit_to_shm(self.slots, int(np.prod(self.pre.size)) * 3)
        self.chunk = min(self.chunk, self.slots)
        shape = (self.slots, *self.pre.size, 3)
        shm, pool = None, None

        def start():  # multiprocessing is imported only here: a thread-decoding run never pays for it
            import multiprocessing
            from concurrent.futures import ProcessPoolExecutor
            from multiprocessing import shared_memory

            from .prepare import content_index

            nonlocal shm, pool
            shm = shared_memory.SharedMemory(create=True, size=int(np.prod(shape)))
            ctx = multiprocessing.get_context("forkserver")  # never fork a process that may hold TF threads
            ctx.set_forkserver_preload(["pipeline.featurizer.prepare"])  # workers fork with the decoder already imported
            # each worker gets the store's contents once, as 32-byte digests, not per task: 32 MB per worker for
            # 1M contents (15 workers: ~480 MB), pickled, not in shared memory: /dev/shm is often 64 MiB in
            # containers, and the ring takes up to half of it
            pool = ProcessPoolExecutor(self.workers, mp_context=ctx, initializer=_attach,
                                       initargs=(shm.name, shape, os.getpid(), content_index(known)))
            return pool, np.ndarray(shape, np.uint8, buffer=shm.buf)

        try:
            yield from self._ordered(start, records, known)
        finally:
            if pool is not None:
                pool.shutdown(wait=True, cancel_futures=True)
            if shm is not None:
                shm.close()
                shm.unlink()

    def _ordered(self, start, records, known):
        """Chunks of files to read go to the workers, files known by stat are answered at once; results
        leave in input order, as soon as they are ready, with at most `slots` files (and entries) waiting."""
        pending, chunk, next_slot = deque(), [], 0
        pool = ring = None

        def in_flight():
            return sum(len(e[0]) for e in pending if e[1] is not None)

        def release(force_room: int = 0):  # yield the head entries that are ready, or must go to make room
            while pending and (pending[0][1] is None or pending[0][2].done() or len(pending) > self.slots
                               or in_flight() + force_room > self.slots):
                yield from self._drain(pending.popleft(), ring, known)

        def submit():
            nonlocal pool, ring, next_slot, chunk
            yield from release(force_room=len(chunk))
            if pool is None:
                pool, ring = start()
            items = [(r, _known_for(r, known)) for r in chunk]
            pending.append((chunk, next_slot, pool.submit(_work, next_slot, self.pre, items)))
            next_slot = (next_slot + len(chunk)) % self.slots
            chunk = []

        for record in records:
            hit = _stat_hit(record, known)
            if hit is None:
                chunk.append(record)
                if len(chunk) == self.chunk:
                    yield from submit()
                continue
            if chunk:
                yield from submit()
            pending.append(([record], None, [hit]))
            yield from release()
        if chunk:
            yield from submit()
        while pending:
            yield from self._drain(pending.popleft(), ring, known)

    def _drain(self, entry, ring, known: dict):
        from .prepare import Copy, known_content

        chunk, first, results = entry
        if first is not None:
            results, busy = results.result()
            if self.clock is not None:
                self.clock.add(busy)
        for j, (record, (sha, stat, result, notes)) in enumerate(zip(chunk, results)):
            kind = result[0] if isinstance(result, tuple) else None  # from a worker: ("image",), ("copy", ...)
            if kind == "image":
                result = ring[(first + j) % len(ring)]
                result = result if self.views else result.copy()  # the slot is reused after the next item
            elif kind == "copy":  # its own row (a touched file, label changed), or prepare.HELD: named here
                yield known_content((record, sha, stat, Copy(result[1], result[2]), notes), known)
                continue
            elif kind == "error":
                result = ImageError(record.path, result[1], result[2])
            yield record, sha, stat, result, notes


def _fit_to_shm(slots: int, image_bytes: int, shm_dir: str = "/dev/shm") -> int:
    """At most `slots` images, using no more than half of the free shared memory (containers often give 64 MiB)."""
    try:
        st = os.statvfs(shm_dir)
    except OSError:
        return slots
    fit = st.f_bavail * st.f_frsize // 2 // image_bytes
    if fit < 2:
        from ..errors import PipelineError

        raise PipelineError(f"{shm_dir} has {st.f_bavail * st.f_frsize >> 20} MiB free, too little for decoding in "
                            f"processes; use --decode thread, or give the container more shared memory "
                            f"(docker run --shm-size 1g)")
    return min(slots, fit)


def _stat_hit(record, known: dict):
    """(sha256, stat, result, notes) when the store has this file by stat (reuse, or skip as before), else None."""
    from .prepare import cached as _cached
    from .prepare import file_stat
    from .prepare import relabelled as _relabelled

    try:
        stat = file_stat(record.path)
    except OSError:
        return None  # a worker reports it, as the thread path does
    hit = _cached(record, stat, known) or _relabelled(record, stat, known)
    return None if hit is None else (hit[0], stat, hit[1], [])
