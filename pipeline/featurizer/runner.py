"""The runner: list a folder, then reader -> mapper -> committer into a feature store, and report.

The stages (one job each, in the spirit of clip-retrieval's reader -> mapper -> writer):
:mod:`pipeline.featurizer.reader` says which files the store has already (its stat cache and skip cache) and
reads, hashes and decodes the others in a pool of threads or processes; :mod:`pipeline.featurizer.mapper`
batches the pixels into buffers allocated once and runs the backbone (in a thread of its own, so
the next batch fills meanwhile; per-image TFLite backbones featurize in the reader's threads);
:mod:`pipeline.featurizer.committer` commits the features to the store (:mod:`pipeline.store`'s commit
protocol) in order, a second of work per commit. This module wires them for one folder, ends
every run alike (withdraw, prune, close, report: :func:`commit_run`, shared with the Ray engine)
and says where the time went (:mod:`pipeline.featurizer.stages`). Memory follows the batch, not the folder
(measured: 4000 images peak within 8% of 1000); a bad file is skipped and reported, never fatal.
"""
from __future__ import annotations

import logging
import os
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

from ..backbones import DEFAULT_BACKBONE, Backbone, build_backbone
from ..dataset.labels import CsvLabels, read_labels_csv
from ..dataset.listing import ImageRecord, list_images, no_images_message
from ..dataset.splits import sample_mask
from ..errors import ImageError, PipelineError, StoreError, UsageError
from ..options import BackboneOptions, FeaturizeOptions, featurize_settings
from ..store import FeatureStore, open_writer
from ..store.duplicates import duplicate_groups, label_conflicts
from .committer import Committer
from .decodepool import choose_decode
from .layers import PLACEHOLDER, LayerWriters, layer_slug
from .mapper import Mapper
from .prepare import known_files
from .reader import Reader
from .stages import StageClock, cores, on_gpu
from .stages import line as stages_line

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
    not_in_folder: list[str] = field(default_factory=list)  # rows kept of files no longer listed (no prune)
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
                "unused_label_ids": self.unused_label_ids[:1000], "not_in_folder": len(self.not_in_folder),
                "not_in_folder_paths": self.not_in_folder[:1000], "duplicates": self.duplicates,
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
        if self.not_in_folder:
            lines.append(f"  {len(self.not_in_folder)} rows are of files no longer in the folder (e.g. "
                         f"{self.not_in_folder[0]}): kept in the store, so train still uses them; "
                         f"featurize --prune drops them")
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
    from ..progress import progress_bar  # a bar on a terminal, a line now and then in a log

    return progress_bar(total, desc)


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
    engine="ray" runs on a Ray cluster (`cluster`: a pipeline.engines.ray.RayCluster), same store.
    `decode`: "thread", "process" (pipeline.featurizer.decodepool) or "auto" (processes from 8 usable cores on).
    `multi_label`: the CSV's label cells hold several tags (spaces or '|'); see pipeline/heads/multilabel.py.
    """
    settings, options = featurize_settings(backbone, layer, weights, options, keywords)
    bb = backbone if settings is None else build_backbone(settings)
    if options.engine == "ray":
        from ..engines.ray import featurize_ray

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
        _run(listing.records, bb, writer, o, run)

    return commit_run(writer, run, listing, present if o.prune else None, work, o.strict, report, present=present)


def new_run(listing) -> RunReport:
    """The report of a run about to featurize `listing`: what was found, before any image is read."""
    return RunReport(store=None, discovered=len(listing.records) + len(listing.unusable) - len(listing.unreadable),
                     ignored=listing.ignored, links=listing.links, skipped=list(listing.unusable),
                     listed=[r.relpath for r in listing.records], unlabelled=listing.unlabelled,
                     unused_label_ids=listing.unused_label_ids)


def commit_run(writer, run: RunReport, listing, prune_keep: set | None, work, strict: bool, report: bool,
               present: set | None = None):
    """Run `work()` (which appends to `writer`), withdraw the rows of files now unusable, prune when
    `prune_keep` (the paths present) is given, close: the RunReport (`report`) or the store. Any engine's
    run ends here, so they all withdraw, prune and fail alike. Without pruning, the rows kept of files
    not in `present` are listed in the report (``not_in_folder``)."""
    try:
        work()
        _withdraw_skipped(writer, run)
        if prune_keep is not None:
            # rows below a folder that could not be listed are kept: their files may well exist
            unlisted = {r["path"] for r in writer.live_rows() if listing.below_unreadable(r["path"])}
            run.pruned = writer.prune(prune_keep | unlisted)
        elif present is not None:
            run.not_in_folder = sorted(r["path"] for r in writer.live_rows()
                                       if r["path"] not in present and not listing.below_unreadable(r["path"]))
    except BaseException:
        abandon(writer, run)
        raise
    return end_run(run, writer, strict, report)


def abandon(writer, run: RunReport) -> None:
    """A failed run: a first run leaves nothing behind; otherwise what was skipped so far is reported."""
    if not writer.discard_if_empty():
        writer.write_report(run.to_dict())
        writer.write_skips(run.skipped)
        writer.abort()


def end_run(run: RunReport, writer, strict: bool, report: bool):
    """Close the store, warn about skipped files (fatal with `strict`); the RunReport or the store.
    A store that cannot be closed (a full disk while merging) keeps its committed rows and gets the report."""
    try:
        _finish(run, writer)
    except BaseException:
        writer.write_report(run.to_dict())
        writer.write_skips(run.skipped)
        writer.abort()
        raise
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
    writer.write_skips(run.skipped)


def _run(records, bb: Backbone, writer, options: FeaturizeOptions, run: RunReport) -> None:
    """reader -> mapper -> committer over `records`, timed by a StageClock (the report's ``stages``)."""
    clock = StageClock()
    reader = Reader(bb, known_files(writer), options.workers, options.decode, clock)
    mapper = Mapper(bb, Committer(writer, run.skipped, clock, background=True), clock, ahead=True)
    start = time.perf_counter()
    with _progress(len(records), options.progress, f"featurize {bb.name}") as bar:
        try:
            for item in reader.read(records):
                bar.update(1)
                _account(item, mapper, run)
            mapper.flush()
        except BaseException:
            mapper.finish(failed=True)
            raise
        mapper.finish()
    run.computed = mapper.computed
    w = reader.workers
    run.stages = clock.report(run.computed, time.perf_counter() - start,
                              {"read": w, "decode": w, "forward": w if bb.per_image else 1, "write": 1},
                              {"cores": cores(), "gpu": on_gpu(bb), "per_image": bb.per_image, "kind": bb.kind})


def _account(item, batcher: Mapper, run: RunReport) -> None:
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
