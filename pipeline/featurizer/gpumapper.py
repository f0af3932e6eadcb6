"""The mapper for ``--decode gpu``: batches of JPEG bytes decoded, resized and featurized on the GPU.

The reader's threads read, hash and check each file (:func:`pipeline.decode.gpujpeg.inspect`) and hand
over the bytes of each JPEG; other images arrive decoded by the CPU. :class:`GpuMapper` gathers a
batch, has :class:`~pipeline.decode.gpujpeg.GpuDecoder` decode and resize it on the device (timed as
the ``gpu_decode`` stage), and runs the network on that device batch in its forward thread, so the
decode of batch n+1 overlaps the forward pass of batch n (JAX dispatches asynchronously). A file no
decoder can read is skipped with the CPU decoder's reason and its stat, as a bad file is in any run;
committing, resuming after kill -9 and pruning are the :class:`~pipeline.featurizer.committer.Committer`'s,
unchanged.

:func:`decide` is the one place that picks the mode: ``gpu`` when asked (or, for ``auto``, when a
Keras backbone runs on JAX on a GPU and a GPU JPEG library loads), and the decoder a backbone rebuilt
from a head's spec must use, so scoring decodes as training did.
"""
from __future__ import annotations

from typing import TYPE_CHECKING

from ..errors import UsageError
from ..spec import DEFAULT_DECODER
from .decodepool import choose_decode
from .mapper import Mapper
from .stages import GPU_DECODE, StageClock

if TYPE_CHECKING:
    from ..decode.gpujpeg import GpuDecoder


def runs_on_jax(bb) -> bool:
    """A Keras backbone on the JAX backend (the only kind whose forward pass takes a JAX device batch)."""
    return bb.kind == "keras" and getattr(bb, "keras_backend", None) == "jax"


def decide(decode: str, bb):
    """(mode, GpuJpeg library or None) for a run of `bb` with decode choice `decode`; sets ``bb.decoder``
    to the decoder its features will come from. A UsageError says what is missing for ``gpu``."""
    wanted = bb.decoder  # None: free; set when rebuilt from a head's spec
    if decode == "gpu" or wanted not in (None, DEFAULT_DECODER):
        from ..decode import gpujpeg  # only here: a CPU run of a TFLite backbone never imports the GPU path

        if wanted == DEFAULT_DECODER:
            raise UsageError("these features were decoded by Pillow on the CPU (the head's spec says so): featurize "
                             "with --decode thread, process or auto, not gpu")
        if not runs_on_jax(bb):
            on = f" on {bb.keras_backend}" if getattr(bb, "keras_backend", None) else ""
            raise UsageError(f"--decode gpu needs a Keras backbone on the JAX backend (--keras-backend jax); "
                             f"{bb.name} is a {bb.kind} backbone{on}")
        library = gpujpeg.find_library(wanted) if wanted else gpujpeg.find_library(None)
        if library is None:
            raise UsageError(f"--decode gpu found no GPU JPEG decoder: {gpujpeg.INSTALL_HINT}")
        bb.decoder = library.name
        return "gpu", library
    if decode == "auto" and runs_on_jax(bb) and not bb.per_image:
        from ..decode import gpujpeg

        library = gpujpeg.find_library(None)  # None without a GPU or a library: the CPU decodes
        if library is not None:
            bb.decoder = library.name
            return "gpu", library
    mode = choose_decode(decode, bb.per_image)
    bb.decoder = DEFAULT_DECODER
    return mode, None


class GpuMapper(Mapper):
    """Gathers prepared items (Encoded JPEGs or CPU-decoded arrays), decodes a batch on the GPU, maps it."""

    def __init__(self, backbone, committer, clock: StageClock, decoder: GpuDecoder, ahead: bool = True):
        super().__init__(backbone, committer, clock, ahead)
        self.decoder = decoder
        self.items: list = []
        self.fell_back = 0  # JPEGs the GPU library refused and the CPU decoded

    def add(self, item, row: dict) -> None:
        self._record_spec()
        self.items.append(item)
        self.rows.append(row)
        if len(self.items) >= self.backbone.batch_size:
            self.flush()

    def flush(self) -> None:
        if not self.items:
            return
        items, rows = self.items, self.rows
        self.items, self.rows = [], []
        with self.clock.timed(GPU_DECODE):
            batch, failed, fell_back = self.decoder(items, [r["path"] for r in rows])
        self.fell_back += len(fell_back)
        bad = {i for i, _ in failed}
        for i, error in failed:  # skipped as the CPU decoder would: with its reason, and the stat to skip it next time
            self.committer.skipped.append({"path": rows[i]["path"], "reason": error.reason, "detail": error.detail,
                                           **({"stat": rows[i]["stat"]} if rows[i].get("stat") is not None else {})})
        rows = [r for i, r in enumerate(rows) if i not in bad]
        if not rows:
            return
        if self.thread is None:
            return self.committer.submit(self.features(batch), rows)
        features = self.thread.submit(self.features, batch)
        self.forwards.append(features)
        self.committer.submit(features, rows)
        while len(self.forwards) >= 2:  # at most two device batches in flight
            self.forwards.popleft().result()

    def features(self, batch):
        self._record_spec()
        with self.clock.timed("forward"):
            return self.backbone(batch)
