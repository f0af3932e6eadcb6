"""read -> featurize -> write: turn a folder of images into a feature store.

Files are read, hashed and decoded by a pool of threads (Pillow releases the GIL), at most
a few batches ahead of the network, so memory is bounded by the batch and not by the folder.
Rows already in the store with the same path and content hash are reused; the network is
built only when at least one image needs it. A bad file is skipped and reported, never fatal.
"""
from __future__ import annotations

import logging
import os
from collections import deque
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from .backbones import DEFAULT_BACKBONE, Backbone, create_backbone
from .errors import ImageError, PipelineError
from .images import IMAGE_EXTENSIONS, ImageRecord, decode, list_images, read_bytes
from .store import FeatureStore, open_writer

log = logging.getLogger(__name__)


@dataclass
class RunReport:
    """What a featurize run did."""

    store: FeatureStore
    discovered: int = 0
    computed: int = 0
    reused: int = 0
    skipped: list[dict] = field(default_factory=list)
    ignored: list[tuple[str, str]] = field(default_factory=list)
    listed: list[str] = field(default_factory=list)  # relative paths of the images this run was given

    def summary(self) -> str:
        lines = [f"{self.discovered} images: {self.computed} featurized, {self.reused} reused from the cache, "
                 f"{len(self.skipped)} skipped -> {self.store.root} ({len(self.store)} rows, "
                 f"D={self.store.spec['dim']})"]
        lines += [f"  skipped {s['path']}: {s['reason']} {s.get('detail', '')}".rstrip() for s in self.skipped]
        return "\n".join(lines)


def _prepare(record: ImageRecord, pre, known: dict):
    """(record, sha256, image or None when cached) or (record, None, ImageError)."""
    try:
        data, sha = read_bytes(record.path)
        if known.get(record.relpath) == sha:
            return record, sha, None
        return record, sha, decode(data, pre, record.path)
    except ImageError as e:
        return record, None, e


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


def _progress(total: int, enabled: bool, desc: str):
    from tqdm.auto import tqdm

    return tqdm(total=total, disable=not enabled, desc=desc, unit="img", dynamic_ncols=True)


class _Batcher:
    """Collects decoded images and commits full batches through the backbone to the store."""

    def __init__(self, backbone: Backbone, writer):
        self.backbone, self.writer = backbone, writer
        self.images, self.rows = [], []
        self.computed = 0

    def add(self, image, row):
        self.images.append(image)
        self.rows.append(row)
        if len(self.images) >= self.backbone.batch_size:
            self.flush()

    def flush(self):
        if not self.images:
            return
        if not self.backbone._loaded:
            self.backbone.load()
            self.writer.set_spec(self.backbone.spec())
        feats = self.backbone(np.stack(self.images))
        self.writer.append(feats, self.rows)
        self.computed += len(self.rows)
        self.images, self.rows = [], []


def featurize(data_dir, backbone: str | Backbone = DEFAULT_BACKBONE, layer: str = "penultimate",
              out=None, weights: str | None = None, *, labelled: bool | None = None, overwrite: bool = False,
              batch_size: int | None = None, workers: int | None = None, progress: bool = True,
              strict: bool = False, report: bool = False, **backbone_options):
    """Featurize every image below `data_dir` into the store `out`; return the FeatureStore.

    Sub-folders of `data_dir` are classes (images at any depth below one belong to it); a flat
    folder gives unlabelled images. With report=True, returns a RunReport instead.
    """
    bb = backbone if isinstance(backbone, Backbone) else create_backbone(
        backbone, layer, weights, batch_size=batch_size, **backbone_options)
    out = Path(out) if out is not None else default_store_path(data_dir, bb)
    listing = list_images(data_dir, labelled)
    if not listing.records:
        raise PipelineError(f"no images found in {data_dir} (looked for {', '.join(sorted(IMAGE_EXTENSIONS))})")
    writer = open_writer(out, bb.request(), overwrite=overwrite)
    try:
        run = _run(listing.records, bb, writer, workers, progress)
    except BaseException:
        writer.abort()
        raise
    writer.write_skipped(run.skipped)
    run.store = writer.close()
    run.discovered, run.ignored = len(listing.records), listing.ignored
    run.listed = [r.relpath for r in listing.records]
    for s in run.skipped:
        log.warning("skipped %s: %s %s", s["path"], s["reason"], s.get("detail", ""))
    if strict and run.skipped:
        raise PipelineError(f"{len(run.skipped)} image(s) could not be used (--strict); "
                            f"see {out / 'skipped.json'}")
    return run if report else run.store


def _run(records, bb: Backbone, writer, workers, progress) -> RunReport:
    known = {r["path"]: r["sha256"] for r in writer.rows}
    batcher = _Batcher(bb, writer)
    run = RunReport(store=None)
    workers = workers or os.cpu_count() or 1
    window = max(2 * bb.batch_size, 4 * workers)
    with _progress(len(records), progress, f"featurize {bb.name}") as bar:
        for record, sha, result in bounded_map(lambda r: _prepare(r, bb.preprocess, known), records,
                                               workers, window):
            bar.update(1)
            if isinstance(result, ImageError):
                run.skipped.append({"path": record.relpath, "reason": result.reason, "detail": result.detail})
            elif result is None:
                run.reused += 1
            else:
                batcher.add(result, {"path": record.relpath, "label": record.label, "sha256": sha})
        batcher.flush()
    run.computed = batcher.computed
    return run


def default_store_path(data_dir, bb: Backbone, root: str | os.PathLike | None = None) -> Path:
    """features/<folder>-<backbone>-<layer>: where a store goes when --out is not given."""
    root = Path(root or os.environ.get("TFP_FEATURES", "features"))
    name = Path(data_dir).resolve().name
    tag = Path(bb.name).stem if ("/" in bb.name or "." in bb.name) else bb.name
    layer = bb.layer.replace("/", "_").replace(":", "_")
    return root / f"{name}-{tag}-{layer}"
