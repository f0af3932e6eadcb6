"""Where a featurize run spends its time, and which stage limits it.

Each stage's busy seconds are summed over the threads that ran it: ``read`` (stat, file I/O and
sha256), ``decode`` (decode, orientation, crop and resize), ``forward`` (the network) and
``write`` (committing batches to the store). A Ray run also records ``startup_s``: the seconds
before its first backbone actor was ready (a local cluster starting, Ray starting worker
processes, the backbone built), when no image can be featurized yet. A stage run by W threads at once can keep up with
the others while its busy seconds divided by W stay below theirs, so the bottleneck is the
stage with the most busy seconds per worker. Decoding always runs in the worker pool; the
network runs there too for backbones that featurize one image per call (TFLite), else in the
main thread (one worker, whatever cores it uses); writing is the main thread's.
"""
from __future__ import annotations

import sys
import threading
import time
from contextlib import contextmanager

STAGES = ("read", "decode", "forward", "write")
GPU_DECODE = "gpu_decode"  # --decode gpu: JPEG decode + resize of a batch on the GPU (the mapper's thread)
STARTUP_SHARE = 0.25  # a Ray run whose start-up is over this share of its time says so


def on_gpu(bb) -> bool:
    """True when a TensorFlow backbone, or a Keras one on JAX, has a GPU to run on (TFLite always runs on the CPU)."""
    if bb.kind == "tflite":
        return False
    if getattr(bb, "keras_backend", None) == "jax" and "jax" in sys.modules:
        return sys.modules["jax"].default_backend() in ("gpu", "cuda", "rocm")
    if "tensorflow" not in sys.modules:
        return False
    return bool(sys.modules["tensorflow"].config.list_physical_devices("GPU"))


def bf16_pays(bb) -> bool:
    """True when ``--precision bfloat16`` would speed this backbone up: a Keras network computing in
    float32 on a CPU with native bfloat16 (``avx512_bf16`` or ``amx_bf16`` in /proc/cpuinfo); elsewhere
    bfloat16 is emulated and slower than float32, so it is never suggested."""
    if bb.kind != "keras" or getattr(bb, "precision", "float32") != "float32" or on_gpu(bb):
        return False
    from ..backbones.keras_apps import cpu_has_bf16

    return cpu_has_bf16()


class StageClock:
    """Thread-safe busy-time counters for the stages of one run."""

    def __init__(self):
        self.busy = dict.fromkeys(STAGES, 0.0)
        self._lock = threading.Lock()

    @contextmanager
    def timed(self, stage: str):
        start = time.perf_counter()
        try:
            yield
        finally:
            elapsed = time.perf_counter() - start
            with self._lock:
                self.busy[stage] = self.busy.get(stage, 0.0) + elapsed  # gpu_decode only in runs that have it

    def add(self, busy: dict) -> None:
        """Add busy seconds measured elsewhere (a worker process's own clock)."""
        with self._lock:
            for stage, seconds in busy.items():
                self.busy[stage] = self.busy.get(stage, 0.0) + seconds

    def report(self, images: int, wall_s: float, workers: dict, hint_context: dict) -> dict:
        """The ``stages`` object of report.json: busy seconds, workers, images/s, bottleneck and a hint."""
        stages = tuple(self.busy)
        per_worker = {s: self.busy[s] / max(1, workers.get(s, 1)) for s in stages}
        neck = max(stages, key=per_worker.get) if images else None
        out = {f"{s}_s": round(self.busy[s], 4) for s in stages}
        out.update(workers=dict(workers), images=images, wall_s=round(wall_s, 4),
                   images_per_s=round(images / wall_s, 2) if images and wall_s > 0 else None,
                   bottleneck=neck, hint=hint(neck, workers, **hint_context) if neck else None)
        return out


def _workers(n: int) -> str:
    return f"{n} worker{'s' if n != 1 else ''}"


def hint(stage: str, workers: dict, cores: int, gpu: bool, per_image: bool, kind: str = "keras",
         bf16: bool = False, gpu_decoder: str | None = None) -> str:
    """What to change to go faster when `stage` limits the run; `bf16`: :func:`bf16_pays` for its backbone;
    `gpu_decoder`: a GPU JPEG library this machine has, for a run that decoded on the CPU."""
    if stage == GPU_DECODE:
        return ("decoding on the GPU limits the run: raise --batch-size (bigger decode batches), or store the "
                "images smaller (about twice the network's input size)")
    if stage == "decode" and gpu and gpu_decoder:
        return (f"decoding on the CPU limits the run while the GPU waits: use --decode gpu ({gpu_decoder} "
                f"decodes the JPEGs on the GPU)")
    if stage == "decode":
        if workers["decode"] < cores - 1:  # decode processes leave one core to the run itself
            return f"decoding limits the run ({_workers(workers['decode'])} on {cores} cores): raise --workers to {cores}"
        return (f"decoding limits the run on all {cores} cores: store the images smaller (about twice the "
                f"network's input size) or use a machine with more cores")
    if stage == "forward":
        if gpu:
            return "the network limits the run on the GPU: raise --batch-size, or use --precision float16"
        if per_image and workers["forward"] < cores:
            return f"the network limits the run ({_workers(workers['forward'])} on {cores} cores): raise --workers to {cores}"
        if bf16:
            return ("the network limits the run on the CPU, which computes bfloat16 natively (AVX-512 BF16 or "
                    "AMX): try --precision bfloat16 (features within cosine 0.9999 of float32; the store records "
                    "the precision), a smaller backbone, or a GPU")
        if kind == "keras":
            return "the network limits the run on the CPU: try a smaller backbone, or a GPU"
        return "the network limits the run on the CPU: try a smaller backbone, or a Keras backbone on a GPU"
    if stage == "read":
        return ("reading files limits the run: copy the images to a local SSD, or raise --workers "
                "if they are on network storage")
    return "writing the store limits the run: put --out on a faster local disk, or raise --batch-size"


def line(stages: dict) -> str:
    """The one line printed at the end of featurize."""
    if not stages.get("bottleneck"):
        return "stages: nothing was featurized (every image came from the cache)"
    w = stages["workers"]
    names = [s for s in (*STAGES[:2], GPU_DECODE, *STAGES[2:]) if f"{s}_s" in stages]
    parts = ", ".join(f"{s} {stages[f'{s}_s']:.2f} s" + (f" ({_workers(w[s])})" if w.get(s, 1) > 1 else "")
                      for s in names)
    out = (f"stages: {parts}; {stages['images_per_s']:.1f} images/s; bottleneck: {stages['bottleneck']} "
           f"— {stages['hint']}")
    startup = stages.get("startup_s")
    if startup is not None and startup > STARTUP_SHARE * stages["wall_s"]:
        out += (f"\nRay took {startup:.1f} s of this {stages['wall_s']:.1f} s run to start before any image was "
                f"featurized: for a folder this small, --engine local is faster")
    return out
