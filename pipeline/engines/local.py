"""The local engine (``engine="local"``, the default): the featurizer stages in this process.

:mod:`pipeline.featurizer.reader` says which files the store has already (its stat cache and skip cache)
and reads, hashes and decodes the others in a pool of threads or processes;
:mod:`pipeline.featurizer.mapper` batches the pixels into buffers allocated once and runs the backbone
(in a thread of its own, so the next batch fills meanwhile; per-image TFLite backbones featurize in
the reader's threads); :mod:`pipeline.featurizer.committer` commits the features to the store in
order, a second of work per commit; :mod:`pipeline.featurizer.stages` says where the time went.
Memory follows the batch, not the folder (measured: 4000 images peak within 8% of 1000); a bad file
is skipped and reported, never fatal. The run's start and end are :class:`pipeline.engines.base.Engine`'s.
"""
from __future__ import annotations

import time

from ..backbones import Backbone
from ..errors import UsageError
from ..featurizer.committer import Committer
from ..featurizer.gpumapper import GpuMapper, decide, runs_on_jax
from ..featurizer.mapper import Mapper
from ..featurizer.prepare import Copy, known_files
from ..featurizer.reader import Reader
from ..featurizer.stages import StageClock, bf16_pays, on_gpu
from ..machine import usable_cores
from ..options import FeaturizeOptions
from .base import Engine, account, progress
from .report import RunReport


class LocalEngine(Engine):
    """reader -> mapper -> committer in this process, over threads or decode processes."""

    name = "local"

    @classmethod
    def check(cls, options: FeaturizeOptions) -> None:
        if options.cluster is not None:
            raise UsageError("cluster= applies to engine=ray")

    def check_backbone(self, bb: Backbone) -> None:
        # a bad choice fails before any work; the decoder is decided before the store is opened (it is in the spec)
        self.mode, self.library = decide(self.options.decode, bb)

    def work(self, listing, data_dir, bb: Backbone, writer, run: RunReport) -> None:
        """reader -> mapper -> committer over the listing, timed by a StageClock (the report's ``stages``)."""
        o, records, clock = self.options, listing.records, StageClock()
        reader = Reader(bb, known_files(writer, run.sources), o.workers, self.mode, clock)
        committer = Committer(writer, run.skipped, clock, background=True)
        if self.mode == "gpu":
            from ..decode.gpujpeg import GpuDecoder

            mapper = GpuMapper(bb, committer, clock, GpuDecoder(self.library, bb.preprocess))
        else:
            mapper = Mapper(bb, committer, clock, ahead=True)
        start = time.perf_counter()
        with progress(len(records), o.progress, f"featurize {bb.name}") as bar:
            try:
                for item in reader.read(records):
                    bar.update(1, cached=item[3] is None or isinstance(item[3], Copy))  # reused from the store
                    account(item, mapper, run)
                mapper.flush()
            except BaseException:
                mapper.finish(failed=True)
                raise
            mapper.finish()
        run.computed = mapper.computed
        w, gpu = reader.workers, on_gpu(bb)
        run.stages = clock.report(run.computed, time.perf_counter() - start,
                                  {"read": w, "decode": w, "forward": w if bb.per_image else 1, "write": 1},
                                  {"cores": usable_cores(), "gpu": gpu, "per_image": bb.per_image, "kind": bb.kind,
                                   "bf16": bf16_pays(bb), "gpu_decoder": self._idle_gpu_decoder(bb, gpu)})
        if self.mode == "gpu":
            run.stages.update(decoder=bb.decoder, gpu_fallback=mapper.fell_back)

    def _idle_gpu_decoder(self, bb: Backbone, gpu: bool) -> str | None:
        """The GPU JPEG library a CPU-decoding run on a GPU could have used (the bottleneck hint names it)."""
        if self.mode == "gpu" or not gpu or not runs_on_jax(bb):
            return None
        from ..decode.gpujpeg import find_library

        library = find_library(None)
        return library.name if library is not None else None
