"""read -> featurize -> write: turn a folder of images into a feature store.

First the store says what it already has: a file whose stat is unchanged since its row (or
its skip) was recorded is not read again; a changed one is hashed and its content decides.
New or changed images are read and decoded by a pool of threads (Pillow releases the GIL), at
most a few batches ahead of the network, so memory is bounded by the batch and not by the
folder (measured: 4000 images peak within 8% of 1000). TensorFlow backbones run whole batches
in the main thread while the pool decodes the next ones (a tf.data pipeline doing the same was
10-25% slower here: BENCHMARKS.md); TFLite backbones run each image in the decoding thread
itself (one interpreter per thread). Decoding is always the same Pillow function, for training
and scoring alike. The network is built only when an image needs it, and a bad file is
skipped and reported, never fatal.
"""
from __future__ import annotations

import logging
import os
import time
from collections import Counter, deque
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from .backbones import DEFAULT_BACKBONE, Backbone
from .decodepool import DecodePool, choose_decode, default_workers
from .errors import ImageError, PipelineError, StoreError, UsageError
from .images import ImageRecord, decode, list_images, no_images_message, read_bytes
from .labels import CsvLabels, read_labels_csv
from .options import BackboneOptions, FeaturizeOptions, featurize_settings
from .layers import PLACEHOLDER, LayerWriters, layer_slug
from .quality import duplicate_groups, label_conflicts
from .splits import sample_mask
from .stages import StageClock, cores, on_gpu
from .stages import line as stages_line
from .store import FeatureStore, open_writer, read_report

log = logging.getLogger(__name__)


@dataclass
class RunReport:
    """What a featurize run did; written to ``report.json`` in the store."""

    store: FeatureStore | None
    discovered: int = 0
    computed: int = 0
    reused: int = 0
    pruned: int = 0
    skipped: list[dict] = field(default_factory=list)  # {path, reason, detail}
    notes: list[dict] = field(default_factory=list)  # {path, note}: used, with a remark (e.g. EXIF ignored)
    ignored: list[tuple[str, str]] = field(default_factory=list)  # (path, reason): not images, hidden...
    links: dict[str, str] = field(default_factory=dict)  # symlinks met: path (folders end in /) -> target
    listed: list[str] = field(default_factory=list)  # relative paths of the images this run was given
    unlabelled: list[str] = field(default_factory=list)  # images a labels CSV has no row for
    unused_label_ids: list[str] = field(default_factory=list)
    duplicates: list[list[str]] = field(default_factory=list)
    label_conflicts: list[dict] = field(default_factory=list)
    complete: bool = False
    stores: list = field(default_factory=list)  # one per layer (several with --layer a,b)
    stages: dict = field(default_factory=dict)  # busy seconds per stage and the bottleneck (stages.py)

    def to_dict(self) -> dict:
        return {"complete": self.complete, "discovered": self.discovered, "featurized": self.computed,
                "reused": self.reused, "pruned": self.pruned, "skipped": self.skipped, "notes": self.notes,
                "ignored": [{"path": p, "reason": r} for p, r in self.ignored],
                "links": [{"path": p, "target": t} for p, t in self.links.items()],
                "unlabelled": self.unlabelled, "labels_without_image": len(self.unused_label_ids),
                "unused_label_ids": self.unused_label_ids[:1000], "duplicates": self.duplicates,
                "label_conflicts": self.label_conflicts, "stages": self.stages}

    def summary(self) -> str:
        n = f"{len(self.store)} rows, D={self.store.spec['dim']}" if self.store is not None else "not written"
        lines = [f"{self.discovered} images: {self.computed} featurized, {self.reused} reused from the cache, "
                 f"{len(self.skipped)} skipped -> {self.store.root if self.store is not None else '?'} ({n})"]
        lines += [f"  also -> {s.root} (layer {s.spec['layer']}, D={s.spec['dim']})" for s in self.stores[1:]]
        lines += [f"  skipped {s['path']}: {s['reason']} {s.get('detail', '')}".rstrip() for s in self.skipped]
        lines += [f"  note {n['path']}: {n['note']}" for n in self.notes]
        if self.pruned:
            lines.append(f"  pruned {self.pruned} rows of files no longer in the folder")
        counts = Counter(reason for _, reason in self.ignored)
        if counts:
            lines.append("  ignored (not images to featurize): " + ", ".join(f"{v} {k}" for k, v in sorted(counts.items())))
        if self.links:
            lines.append(f"  {len(self.links)} symlinks met (their targets are in report.json 'links')")
        if self.unlabelled:
            lines.append(f"  {len(self.unlabelled)} images have no label in the CSV (featurized, not used for "
                         f"training): {', '.join(self.unlabelled[:5])}{' ...' if len(self.unlabelled) > 5 else ''}")
        if self.unused_label_ids:
            lines.append(f"  {len(self.unused_label_ids)} labels in the CSV match no image")
        if self.duplicates:
            lines.append(f"  {len(self.duplicates)} groups of identical images, e.g. {', '.join(self.duplicates[0])}")
        for c in self.label_conflicts:
            lines.append(f"  label_conflict: {', '.join(c['paths'])} are the same image labelled "
                         f"{' and '.join(c['labels'])} (left out of training)")
        if self.stages:
            lines.append(stages_line(self.stages))
        return "\n".join(lines)


def file_stat(path) -> list[int]:
    """[size, mtime_ns, ctime_ns, inode]: ctime changes on every write, and no tool can set it back."""
    st = os.stat(path)
    return [st.st_size, st.st_mtime_ns, st.st_ctime_ns, st.st_ino]


def _cached(record: ImageRecord, stat, known: dict):
    """(sha256, None) to reuse the stored row, (None, ImageError) to skip the file again as before,
    or None: the file's stat (size, mtime, ctime, inode) is not what the store recorded."""
    old = known["rows"].get(record.relpath)
    if old is not None and old[1] == stat:
        return old[0], None
    bad = known["bad"].get(record.relpath)
    if bad is not None and bad["stat"] == stat:
        return None, ImageError(record.path, bad["reason"], bad.get("detail", ""))
    return None


def known_files(writer, previous_report: dict) -> dict:
    """What the store knows: rows (path -> (sha256, stat)) and files skipped last time (path -> entry)."""
    return {"rows": {r["path"]: (r["sha256"], r.get("stat")) for r in writer.live_rows()},
            "bad": {b["path"]: b for b in previous_report.get("skipped", []) if b.get("stat")}}


def _prepare(record: ImageRecord, bb: Backbone, known: dict, clock: StageClock | None = None):
    """(record, sha256, stat, result, notes). result: None when cached, an ImageError, the decoded
    uint8 image (H, W, 3), or, for a backbone that featurizes one image at a time in the calling
    thread (TFLite), the feature row (D,) itself.

    A file whose stat (size, mtime, ctime, inode) is unchanged since its row was stored has not
    been written since: it is reused without reading it (and one skipped before is skipped again).
    Any other file is read and hashed, and its content decides (a touched but identical file is
    reused too). `clock` adds up the seconds spent reading, decoding and (per image) featurizing.
    """
    notes, stat = [], None
    clock = clock or StageClock()
    try:
        with clock.timed("read"):
            stat = file_stat(record.path)
            hit = _cached(record, stat, known)
            if hit is None:
                data, sha = read_bytes(record.path)
        if hit is not None:
            return record, hit[0], stat, hit[1], notes
        old = known["rows"].get(record.relpath)
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


class _NoProgress:
    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False

    def update(self, n=1):
        pass


def _progress(total: int, enabled: bool, desc: str):
    if not enabled:
        return _NoProgress()
    from .progress import progress_bar  # a bar on a terminal, a line now and then in a log

    return progress_bar(total, desc)


class _Batcher:
    """Collects prepared images (or feature rows) and commits full batches through the backbone to the store.

    Images are copied into batch arrays allocated once, never stacked from a fresh list: at
    thousands of images per second, allocating 70 MB a batch cost more than the network
    (BENCHMARKS.md). With ``ahead=True`` the forward pass runs in one background thread and the
    commit to the store in another, while the caller fills the next batch: a GPU then never
    waits for the caller's bookkeeping nor for the store, and batches reach the store in order.
    Batches featurized within COMMIT_EVERY_S are then committed as one part (one set of fsyncs):
    a run killed with -9 loses at most about a second of work, however fast the batches come.
    Without `ahead` (Ray: a partition per flush) every flush is committed at once.
    """

    COMMIT_EVERY_S = 1.0  # with `ahead`: batches done within a second are committed together

    def __init__(self, backbone: Backbone, writer, skipped: list, clock: StageClock, ahead: bool = False):
        self.backbone, self.writer, self.skipped, self.clock = backbone, writer, skipped, clock
        self.buffers, self.slot, self.fill, self.rows = [], 0, 0, []
        self.done, self.last_commit = [], time.perf_counter()  # featurized batches not yet committed
        self.forwards, self.commits = deque(), deque()  # futures of the batches in flight, oldest first
        self.threads = [ThreadPoolExecutor(1, thread_name_prefix=n) for n in ("forward", "write")] if ahead else []
        self.computed = 0
        self.spec_recorded = self.broken = False

    def _record_spec(self):
        if not self.spec_recorded:  # builds the network at the first item that needs it: that fixes the batch size
            self.writer.set_spec(self.backbone.spec())
            self.spec_recorded = True

    def add(self, image, row):
        """Book one item; `image` may be a view that changes after this returns (it is copied here)."""
        self._record_spec()
        if not self.buffers:
            self.buffers = [np.empty((self.backbone.batch_size, *np.shape(image)), np.asarray(image).dtype)
                            for _ in range(2 if self.threads else 1)]
        self.buffers[self.slot][self.fill] = image
        self.fill += 1
        self.rows.append(row)
        if self.fill == len(self.buffers[self.slot]):
            self.flush()

    def flush(self):
        """Commit the items booked so far (in the background with `ahead`)."""
        if not self.fill:
            return
        batch, rows = self.buffers[self.slot][:self.fill], self.rows
        self.fill, self.rows = 0, []
        if not self.threads:
            return self.commit(batch, rows)
        forward, write = self.threads
        feats = forward.submit(self.features, batch)
        self.forwards.append(feats)
        self.commits.append(write.submit(self._store_when_done, feats, rows))
        self.slot = (self.slot + 1) % len(self.buffers)
        while len(self.forwards) >= len(self.buffers):  # the buffer to fill next is free again
            self.forwards.popleft().result()
        while len(self.commits) > 2:  # features waiting for the store stay few; errors surface here
            self.commits.popleft().result()

    def finish(self, failed: bool = False):
        """Wait for the batches in flight, stop the threads and commit what they featurized; an error
        is raised unless `failed` (the run fails already: the wait keeps the writer to one thread,
        and batches featurized before the failure are still committed when the store allows)."""
        try:
            for future in [*self.forwards, *self.commits]:
                future.exception() if failed else future.result()
        finally:
            self.forwards.clear(), self.commits.clear()
            for thread in self.threads:
                thread.shutdown(wait=True)
        try:
            self._commit_done()
        except Exception:
            if not failed:
                raise
            log.warning("could not commit the last featurized batches", exc_info=True)

    def commit(self, batch: np.ndarray, rows: list[dict]) -> None:
        """Featurize a batch of images (or take rows already featurized) and append it to the store."""
        self.store(self.features(batch), rows)

    def features(self, batch: np.ndarray) -> np.ndarray:
        self._record_spec()  # builds the network on the first batch that needs it
        if batch.ndim == 2:
            return batch.copy()  # rows featurized already (the buffer is refilled meanwhile)
        with self.clock.timed("forward"):
            return self.backbone(batch)

    def _store_when_done(self, feats, rows: list[dict]) -> None:
        """In the write thread: store a batch once its forward pass is done; after a failure, nothing
        more (the store then holds every batch before the failed one, and only those)."""
        if self.broken:
            return
        try:
            self.store(feats.result(), rows)
        except BaseException:
            self.broken = True
            raise

    def store(self, feats: np.ndarray, rows: list[dict]) -> None:
        finite = np.isfinite(feats).all(axis=1)
        for row in (r for r, ok in zip(rows, finite) if not ok):
            self.skipped.append({"path": row["path"], "reason": "nonfinite_features",
                                 "detail": "the network gave NaN or infinity for this image"})
        self.done.append((feats[finite], [r for r, ok in zip(rows, finite) if ok]))
        if not self.threads or time.perf_counter() - self.last_commit >= self.COMMIT_EVERY_S:
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


def featurize(data_dir, backbone: str | Backbone | BackboneOptions = DEFAULT_BACKBONE, layer: str | None = None,
              out=None, weights: str | None = None, *, options: FeaturizeOptions | None = None,
              report: bool = False, **keywords):
    """Featurize every image below `data_dir` into the store `out`; return the FeatureStore.

    `backbone`: a BackboneOptions (pipeline.options), a ready Backbone, or a backbone name (with
    `layer`, `weights` and any BackboneOptions field as a keyword). `options`: a FeaturizeOptions;
    its fields may also be given as keywords (``progress=False``), which override it.

    Sub-folders of `data_dir` are classes (images at any depth below one belong to it); a flat
    folder gives unlabelled images. `labels`: a CSV (``id,label``) that labels the images
    instead of sub-folders. `prune`: drop rows of files no longer in the folder. `sample`: only
    N images per class (or a fraction), a stable choice for quick experiments. `follow_links`:
    False leaves symlinks leading outside `data_dir` unread (folders you do not trust). With
    report=True, returns a RunReport (also written to ``report.json`` in the store).
    `layer` may name several layers ("penultimate,logits"): one forward pass writes one store
    per layer, at `out` with ``{layer}`` replaced by each name (the first store is returned).
    engine="ray" runs on a Ray cluster (`cluster`: a pipeline.distributed.RayCluster), same store.
    `decode`: "thread", "process" (pipeline.decodepool) or "auto" (processes from 8 usable cores on).
    `multi_label`: the CSV's label cells hold several tags (spaces or '|'); see pipeline/multilabel.py.
    """
    settings, options = featurize_settings(backbone, layer, weights, options, keywords)
    bb = backbone if settings is None else settings.create()
    if options.engine == "ray":
        from .distributed import featurize_ray

        return featurize_ray(data_dir, bb, options, out, report)
    return featurize_local(data_dir, bb, options, out, report)


def featurize_local(data_dir, bb: Backbone, options: FeaturizeOptions, out=None, report: bool = False):
    """:func:`featurize` in this process: list, read and decode in a pool, run `bb`, write the store."""
    o = options
    choose_decode(o.decode, bb.per_image)  # a bad choice fails before any work
    labels = o.labels
    if labels is not None and not isinstance(labels, CsvLabels):
        labels = read_labels_csv(labels, o.id_column, o.label_column, multi_label=o.multi_label)
    listing = list_images(data_dir, o.labelled, labels=labels, follow_links=o.follow_links)
    present = {r.relpath for r in listing.records}  # what prune=True keeps, sampled or not
    if o.sample is not None:
        keep = sample_mask([r.relpath for r in listing.records], [r.label for r in listing.records], o.sample)
        listing.records = [r for r, k in zip(listing.records, keep) if k]
    if not listing.records:
        raise PipelineError(no_images_message(data_dir, listing))
    run = new_run(listing)
    writer = _open_writer(data_dir, bb, out, o.overwrite)

    def work():
        _check_same_folder(writer, data_dir)
        _check_multi_label(writer, o.multi_label)
        _run(listing.records, bb, writer, o.workers, o.progress, run, read_report(writer.root), o.decode)

    return commit_run(writer, run, listing, present if o.prune else None, work, o.strict, report)


def new_run(listing) -> RunReport:
    """The report of a run about to featurize `listing`: what was found, before any image is read."""
    return RunReport(store=None, discovered=len(listing.records) + len(listing.unusable) - len(listing.unreadable),
                     ignored=listing.ignored, links=listing.links, skipped=list(listing.unusable),
                     listed=[r.relpath for r in listing.records], unlabelled=listing.unlabelled,
                     unused_label_ids=listing.unused_label_ids)


def commit_run(writer, run: RunReport, listing, prune_keep: set | None, work, strict: bool, report: bool):
    """Run `work()` (which appends to `writer`), withdraw the rows of files now unusable, prune when
    `prune_keep` (the paths present) is given, close: the RunReport (`report`) or the store. Any engine's
    run ends here, so they all withdraw, prune and fail alike."""
    try:
        work()
        _withdraw_skipped(writer, run)
        if prune_keep is not None:
            # rows below a folder that could not be listed are kept: their files may well exist
            unlisted = {r["path"] for r in writer.live_rows() if listing.below_unreadable(r["path"])}
            run.pruned = writer.prune(prune_keep | unlisted)
    except BaseException:
        abandon(writer, run)
        raise
    return end_run(run, writer, strict, report)


def abandon(writer, run: RunReport) -> None:
    """A failed run: a first run leaves nothing behind; otherwise what was skipped so far is reported."""
    if not writer.discard_if_empty():
        writer.write_report(run.to_dict())
        writer.abort()


def end_run(run: RunReport, writer, strict: bool, report: bool):
    """Close the store, warn about skipped files (fatal with `strict`); the RunReport or the store."""
    _finish(run, writer)
    for s in run.skipped:
        log.warning("skipped %s: %s %s", s["path"], s["reason"], s.get("detail", ""))
    if strict and run.skipped:
        raise PipelineError(f"{len(run.skipped)} image(s) could not be used (strict=True); "
                            f"see {writer.root / 'report.json'}")
    return run if report else run.store


def _check_same_folder(writer, data_dir) -> None:
    """A store holds one folder's images: refuse rows of another existing folder of the same name."""
    here = str(Path(data_dir).resolve())
    for w in getattr(writer, "writers", [writer]):  # one per layer of a multi-layer run
        before = w.meta.get("data_dir")
        if before and before != here and Path(before).is_dir() and w.live_rows():
            raise StoreError(f"{w.root} holds features of the images in {before}, not of {here}; "
                             f"give another out= (or overwrite=True to replace it)")
        w.meta["data_dir"] = here  # where report thumbnails come from


def _check_multi_label(writer, multi_label: bool) -> None:
    """A store is multi-label (meta.json "multi_label": true) or not, from its first run on."""
    for w in getattr(writer, "writers", [writer]):
        before = bool(w.meta.get("multi_label"))
        if before != multi_label and w.live_rows():
            raise UsageError(f"{w.root} holds {'multi' if before else 'single'}-label rows; featurize it "
                             f"{'with' if before else 'without'} multi_label=True, or use overwrite=True to replace it")
        if multi_label:
            w.meta["multi_label"] = True


def _withdraw_skipped(writer, run: RunReport) -> None:
    """A file that could not be used this time loses the row an earlier run stored for it."""
    writer.remove({s["path"]: s["reason"] for s in run.skipped})


def _open_writer(data_dir, bb: Backbone, out, overwrite: bool):
    """The store writer of a run; with several layers, one store per layer behind one writer."""
    if len(bb.layers) > 1:
        out = out if out is not None else default_store_path(data_dir, bb, layer=PLACEHOLDER)
        return LayerWriters.open(out, bb, overwrite, data_dir)
    out = Path(out) if out is not None else default_store_path(data_dir, bb)
    return open_writer(out, bb.request(), overwrite=overwrite)


def _finish(run: RunReport, writer) -> None:
    """Close the store and record the duplicates and label conflicts among this run's images."""
    run.store = writer.close()
    run.stores = getattr(writer, "stores", [run.store])
    listed = set(run.listed)
    rows = [r for r in run.store.rows if r["path"] in listed]
    run.duplicates, run.label_conflicts = duplicate_groups(rows), label_conflicts(rows)
    run.complete = True
    writer.write_report(run.to_dict())


def _run(records, bb: Backbone, writer, workers, progress, run: RunReport, previous_report: dict,
         decode: str = "auto") -> None:
    known = known_files(writer, previous_report)
    clock = StageClock()
    batcher = _Batcher(bb, writer, run.skipped, clock, ahead=True)
    mode = choose_decode(decode, bb.per_image)
    workers = workers or default_workers(mode)
    start = time.perf_counter()
    with _progress(len(records), progress, f"featurize {bb.name}") as bar:
        window = max(2 * bb.batch_size, 4 * workers)
        if mode == "process":  # the workers' read/decode time comes back
            # a ring of 4 batches: the workers decode on while the forward pass holds both batch buffers
            items = DecodePool(bb.preprocess, workers, 2 * window, chunk=16, clock=clock).map(records, known,
                                                                                             views=True)
        else:
            items = bounded_map(lambda r: _prepare(r, bb, known, clock), records, workers, window)
        try:
            for item in items:
                bar.update(1)
                _account(item, batcher, run)
            batcher.flush()
        except BaseException:
            batcher.finish(failed=True)
            raise
        batcher.finish()
    run.computed = batcher.computed
    run.stages = clock.report(run.computed, time.perf_counter() - start,
                              {"read": workers, "decode": workers, "forward": workers if bb.per_image else 1,
                               "write": 1}, {"cores": cores(), "gpu": on_gpu(bb), "per_image": bb.per_image, "kind": bb.kind})


def _account(item, batcher: _Batcher, run: RunReport) -> None:
    """Book one prepared file: skipped, reused, or added to the batch."""
    record, sha, stat, result, notes = item
    run.notes += [{"path": record.relpath, "note": n} for n in notes]
    if isinstance(result, ImageError):
        run.skipped.append(_skip(record, result, stat))
    elif result is None:
        run.reused += 1
    else:
        batcher.add(result, _row(record, sha, stat))


def _skip(record: ImageRecord, error: ImageError, stat) -> dict:
    """A skip-report entry; with the file's stat, the next run skips the same file unread."""
    entry = {"path": record.relpath, "reason": error.reason, "detail": error.detail}
    return {**entry, "stat": stat} if stat is not None else entry


def _row(record: ImageRecord, sha: str, stat) -> dict:
    return {"path": record.relpath, "label": record.label, "sha256": sha, "stat": stat}


def default_store_path(data_dir, bb: Backbone, root: str | os.PathLike | None = None, *,
                       layer: str | None = None) -> Path:
    """features/<folder>-<backbone>-<layer>: where a store goes when `out` is not given."""
    root = Path(root or os.environ.get("TFP_FEATURES", "features"))
    name = Path(data_dir).resolve().name
    tag = Path(bb.name).stem if ("/" in bb.name or "." in bb.name) else bb.name
    layer = layer_slug(layer or bb.layer)
    return root / f"{name}-{tag}-{layer}{'-' + bb.tta if bb.tta else ''}"
