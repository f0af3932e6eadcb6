"""The engine seam: :class:`Engine`, and the start and end every engine's run shares.

An engine runs the featurizer stages (:mod:`pipeline.featurizer`) over a folder into a feature store.
:meth:`Engine.featurize` is the run: the shared start (labels CSV, listing, sample, the store
writer, the same-folder and multi-label checks), the engine's own :meth:`Engine.work` over the
listing, and the shared end, :func:`commit_run` (withdraw, prune, close, report), so that every
engine lists, skips, withdraws, prunes and fails alike. An engine books each prepared file with
:func:`account` and may show a bar with :func:`progress`. The class also says what an engine
refuses (:meth:`Engine.check`, before any work) and which command-line flags it adds.
"""
from __future__ import annotations

import logging
import os
from pathlib import Path

from ..backbones import Backbone
from ..dataset.labels import CsvLabels, read_labels_csv
from ..dataset.listing import ImageRecord, list_images, no_images_message
from ..dataset.sources import is_uri
from ..dataset.splits import sample_mask
from ..errors import ImageError, PipelineError, StoreError, UsageError
from ..featurizer.layers import PLACEHOLDER, LayerWriters, layer_slug
from ..featurizer.mapper import Mapper
from ..featurizer.prepare import Copy
from ..logs import IN_SUMMARY
from ..options import FeaturizeOptions
from ..spec import FeatureSpec
from ..store import open_writer
from ..store.copies import open_source, take_rows
from ..store.duplicates import duplicate_groups, label_conflicts
from .report import RunReport, new_run

log = logging.getLogger(__name__)


class Engine:
    """One way to run the featurizer stages: chosen by its `name` from the registry in :mod:`pipeline.engines`.

    A subclass implements :meth:`work` (featurize a listing into an open writer) and may refuse settings
    (:meth:`check`) or backbones (:meth:`check_backbone`), list other sources (:meth:`list`), and add
    command-line flags (:meth:`add_arguments`, their dests in `flags`) that build its `cluster`
    (:meth:`cluster_from_args`)."""

    name = ""
    flags: tuple[str, ...] = ()  # the dests of the flags add_arguments adds: refused with another engine

    def __init__(self, options: FeaturizeOptions):
        self.check(options)
        self.options = options

    @classmethod
    def check(cls, options: FeaturizeOptions) -> None:
        """Refuse settings this engine cannot honour (a UsageError naming the parameter), before any work."""

    @classmethod
    def add_arguments(cls, parser) -> None:
        """Add this engine's own command-line flags to an argparse parser (their dests in `flags`)."""

    @classmethod
    def cluster_from_args(cls, args):
        """The ``FeaturizeOptions.cluster`` this engine's flags describe (None: it takes none)."""
        return None

    def check_backbone(self, bb: Backbone) -> None:
        """Refuse a backbone (or settings with it) this engine cannot run, before the folder is listed."""

    def list(self, data_dir, labels):
        """The listing of `data_dir` (a pipeline.dataset.listing.Listing); `labels`: CsvLabels or None."""
        o = self.options
        return list_images(data_dir, o.labelled, labels=labels, follow_links=o.follow_links)

    def work(self, listing, data_dir, bb: Backbone, writer, run: RunReport) -> None:
        """Featurize `listing.records` into `writer` (rows in listing order), booking each file in `run`."""
        raise NotImplementedError

    def featurize(self, data_dir, bb: Backbone, out=None, report: bool = False):
        """List `data_dir`, open the store `out` and run :meth:`work`; the RunReport (`report`) or the store."""
        o = self.options
        self.check_backbone(bb)
        listing, present = self.listing(data_dir)
        run = new_run(listing)
        run.sources = reuse_sources(bb, o.reuse_from)  # checked before the store is opened: a bad one changes nothing
        writer = open_run_writer(data_dir, bb, out, o.overwrite)

        def work():
            check_source(writer, data_dir)
            check_multi_label(writer, o.multi_label)
            self.work(listing, data_dir, bb, writer, run)

        return commit_run(writer, run, listing, present if o.prune else None, work, o.strict, report, present=present)

    def listing(self, data_dir):
        """(the listing to featurize, labelled and sampled; every path present, which prune=True keeps)."""
        o = self.options
        labels = o.labels
        if labels is not None and not isinstance(labels, CsvLabels):
            labels = read_labels_csv(labels, o.id_column, o.label_column, multi_label=o.multi_label)
        listing = self.list(data_dir, labels)
        present = {r.relpath for r in listing.records}  # what prune=True keeps, sampled or not
        if o.sample is not None:
            keep = sample_mask([r.relpath for r in listing.records], [r.label for r in listing.records], o.sample)
            listing.records = [r for r, k in zip(listing.records, keep) if k]
        if not listing.records:
            raise PipelineError(no_images_message(data_dir, listing))
        return listing, present


# --- the start of a run ---------------------------------------------------------------------------

def open_run_writer(data_dir, bb: Backbone, out, overwrite: bool):
    """The store writer of a run; with several layers, one store per layer behind one writer (`out`: a
    folder name with {layer}, or one folder per layer)."""
    if len(bb.layers) > 1:
        out = out if out is not None else default_store_path(data_dir, bb, layer=PLACEHOLDER)
        return LayerWriters.open(out, bb, overwrite)
    out = Path(out) if out is not None else default_store_path(data_dir, bb)
    return open_writer(out, bb.request(), overwrite=overwrite)


def default_store_path(data_dir, bb: Backbone, root: str | os.PathLike | None = None, *,
                       layer: str | None = None) -> Path:
    """features/<folder>-<backbone>-<layer>: where a store goes when `out` is not given."""
    root = Path(root or os.environ.get("TFP_FEATURES", "features"))
    name = Path(data_dir).resolve().name
    tag = Path(bb.name).stem if ("/" in bb.name or "." in bb.name) else bb.name
    layer = layer_slug(layer or bb.layer)
    return root / f"{name}-{tag}-{layer}{'-' + bb.tta if bb.tta else ''}"


def reuse_sources(bb: Backbone, paths) -> list:
    """The ``--reuse-from`` stores, each checked to hold the features of every layer this run writes."""
    if not paths:
        return []
    wanted = {layer: FeatureSpec.of({**bb.request(), "layer": layer}) for layer in bb.layers}
    return [open_source(path, wanted) for path in paths]


def check_source(writer, data_dir) -> None:
    """A store holds one location's images: a local folder (:func:`check_same_folder`), or a URI recorded as it is."""
    if not is_uri(data_dir):
        return check_same_folder(writer, data_dir)
    for w in getattr(writer, "writers", [writer]):  # one per layer of a multi-layer run
        before = w.meta.get("data_dir")
        if before and before != data_dir and is_uri(before) and w.live_rows():
            raise PipelineError(f"{w.root} holds features of the images in {before}, not of {data_dir}; "
                                f"give another out= (or overwrite=True to replace it)")
        w.meta["data_dir"] = data_dir


def check_same_folder(writer, data_dir) -> None:
    """A store holds one folder's images: refuse rows of another existing folder of the same name."""
    here = str(Path(data_dir).resolve())
    for w in getattr(writer, "writers", [writer]):  # one per layer of a multi-layer run
        before = w.meta.get("data_dir")
        if before and before != here and Path(before).is_dir() and w.live_rows():
            raise StoreError(f"{w.root} holds features of the images in {before}, not of {here}; "
                             f"give another out= (or overwrite=True to replace it)")
        w.meta["data_dir"] = here  # where report thumbnails come from


def check_multi_label(writer, multi_label: bool) -> None:
    """A store is multi-label (meta.json "multi_label": true) or not, from its first run on."""
    for w in getattr(writer, "writers", [writer]):
        before = bool(w.meta.get("multi_label"))
        if before != multi_label and w.live_rows():
            raise UsageError(f"{w.root} holds {'multi' if before else 'single'}-label rows; featurize it "
                             f"{'with' if before else 'without'} multi_label=True, or use overwrite=True to replace it")
        if multi_label:
            w.meta["multi_label"] = True


# --- during a run ---------------------------------------------------------------------------------

class _NoProgress:
    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False

    def update(self, n=1, cached=False):
        pass


def progress(total: int, enabled: bool, desc: str):
    """A progress bar over `total` images (a context manager with ``update(n)``); a silent one if not `enabled`."""
    if not enabled:
        return _NoProgress()
    from ..progress import progress_bar  # a bar on a terminal, a line now and then in a log

    return progress_bar(total, desc)


def account(item, batcher: Mapper, run: RunReport) -> None:
    """Book one prepared file ``(record, sha256, stat, result, notes)``: skipped, reused, copied from a row of
    the same content (committed at the run's end, :func:`commit_run`), or added to the batch."""
    record, sha, stat, result, notes = item
    run.notes += [{"path": record.relpath, "note": n} for n in notes]
    if isinstance(result, ImageError):
        run.skipped.append(_skip(record, result, stat))
    elif result is None:
        run.reused += 1
    elif isinstance(result, Copy):
        run.reused += 1
        row = {"path": record.relpath, "label": record.label, "sha256": sha, "stat": stat}
        if result.store is None:
            run.copied.append((row, result.source))
        else:
            run.taken.append((row, result.store))
    else:
        batcher.add(result, {"path": record.relpath, "label": record.label, "sha256": sha, "stat": stat})


def _skip(record: ImageRecord, error: ImageError, stat) -> dict:
    """A skip-report entry; with the file's stat, the next run skips the same file unread."""
    entry = {"path": record.relpath, "reason": error.reason, "detail": error.detail}
    return {**entry, "stat": stat} if stat is not None else entry


# --- the end of a run -----------------------------------------------------------------------------

def commit_run(writer, run: RunReport, listing, prune_keep: set | None, work, strict: bool, report: bool,
               present: set | None = None):
    """Run `work()` (which appends to `writer`), commit the rows copied from rows of the same content (a new
    label, a moved file: ``run.copied``), withdraw the rows of files now unusable, prune when `prune_keep` (the
    paths present) is given, close: the RunReport (`report`) or the store. Any engine's run ends here, so
    they all withdraw, prune and fail alike. Without pruning, the rows kept of files not in `present` are
    listed in the report (``not_in_folder``)."""
    try:
        work()
        if run.copied:  # before withdrawing and pruning: a moved file's source row is pruned after
            writer.copy_rows([row for row, _ in run.copied], [source for _, source in run.copied])
        for k, source in enumerate(run.sources):  # --reuse-from: each layer's store takes its own layer's rows
            if taken := [row for row, j in run.taken if j == k]:
                for w in getattr(writer, "writers", [writer]):
                    take_rows(w, taken, source)
        writer.remove({s["path"]: s["reason"] for s in run.skipped})  # a file unusable now loses its old row
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
        _keep_report(writer, run)
        writer.abort()


def _keep_report(writer, run: RunReport) -> None:
    """After a failure: write the report and skip cache if the disk allows (a full disk must not hide why the
    run failed behind a second error about report.json)."""
    try:
        writer.write_report(run.to_dict())
        writer.write_skips(run.skipped)
    except OSError as e:
        log.warning("the report of this failed run was not written: %s", e)


def end_run(run: RunReport, writer, strict: bool, report: bool):
    """Close the store, warn about skipped files (fatal with `strict`); the RunReport or the store.
    A store that cannot be closed (a full disk while merging) keeps its committed rows and gets the report."""
    try:
        _finish(run, writer)
    except BaseException:
        _keep_report(writer, run)
        writer.abort()
        raise
    for s in run.skipped:  # the run's summary lists them too: the command line shows them once (logs.IN_SUMMARY)
        log.warning("skipped %s: %s %s", s["path"], s["reason"], s.get("detail", ""), extra=IN_SUMMARY)
    if strict and run.skipped:
        named = ", ".join(f"{s['path']} ({s['reason']})" for s in run.skipped[:5])
        raise PipelineError(f"{len(run.skipped)} image(s) could not be used (strict=True): {named}"
                            f"{', ...' if len(run.skipped) > 5 else ''}; see {writer.root / 'report.json'}")
    return run if report else run.store


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
