"""Several layers from one forward pass: one feature store per layer, written side by side.

``featurize --layer penultimate,logits`` builds one backbone that reads every layer in the same
call (its features are the layers' side by side). :class:`LayerWriters` looks to an engine like
one store writer and splits each committed batch by columns into one store per layer, each with
the spec a single-layer run records, so the stores equal single-layer runs and are resumable and
incremental like them: a file is reused only when every layer's store holds it unchanged. Each
store's ``meta.json`` names the others (``"layers": {layer: relative path}``), so ``train`` on one
of them can choose among all of them (pipeline/heads/featuresets.py).

The default pass (no layer given: :func:`default_pass`) is such a run: ``penultimate`` and the class
scores (``predictions``) of the same forward pass, the penultimate store where asked (``out``) and the
class scores beside it (``out-predictions``), so ``train out`` chooses among penultimate features, class
scores and their join. A network without a classifier gives its penultimate features only.
"""
from __future__ import annotations

import logging
import os
from pathlib import Path

import numpy as np

from ..backbones import Backbone, build_backbone
from ..errors import UsageError
from ..store import FeatureStore, StoreWriter, open_writer, write_report

log = logging.getLogger(__name__)

PLACEHOLDER = "{layer}"
# the layers of the default pass: what train's selection chooses among (predictions over logits: BENCHMARKS.md)
DEFAULT_LAYERS = ("penultimate", "predictions")


def layer_slug(layer: str) -> str:
    """A layer or tensor name as it appears in a folder name."""
    return layer.replace("/", "_").replace(":", "_")


def layer_paths(out, layers) -> list[Path]:
    """One store folder per layer: `out` with {layer} replaced; refused when it has no {layer}."""
    if PLACEHOLDER not in str(out):
        raise UsageError(f"out={out}: with several layers ({', '.join(layers)}) each gets its own store, so "
                         f"out= must contain {PLACEHOLDER}, e.g. out=features/train-{PLACEHOLDER}")
    return [Path(str(out).replace(PLACEHOLDER, layer_slug(layer))) for layer in layers]


def default_pass(settings, out=None, default_out=None) -> tuple[Backbone, object]:
    """(backbone, out) of a featurize run given no layer (``settings.layer`` None, a BackboneOptions): the
    DEFAULT_LAYERS from one pass where the network ends in a classifier, its penultimate layer alone
    otherwise (one info line). An `out` without {layer} is the penultimate store's folder; the class
    scores go beside it (:func:`beside_paths`). `default_out(backbone)`: the folder with {layer} used when
    `out` is None. A penultimate store made before the default pass wrote class scores beside it (no
    sibling yet) stays a store of that layer alone: adding the sibling would featurize every image again."""
    single = build_backbone(settings, DEFAULT_LAYERS[0])
    if not single.has_class_scores():
        log.info("%s has no class-score layer (no classifier): featurizing its penultimate layer only", single.name)
        return single, out
    bb = build_backbone(settings, ",".join(DEFAULT_LAYERS))
    if out is not None and PLACEHOLDER not in str(out):
        paths = beside_paths(out, bb.layers)
    elif out is None and default_out is None:
        return bb, out
    else:
        paths = layer_paths(out if out is not None else default_out(bb), bb.layers)
    if older_single_store(paths):
        log.info("%s holds the %s layer alone (made before featurize wrote the class scores beside it): "
                 "featurizing that layer only; featurize into a new --out for both", paths[0], DEFAULT_LAYERS[0])
        return single, paths[0]
    return bb, paths


def older_single_store(paths: list[Path]) -> bool:
    """True when the first of `paths` is a store that no multi-layer run wrote (no "layers" in its
    meta.json) and none of the other folders exists."""
    first = paths[0]
    if any(p.exists() for p in paths[1:]) or not (first / "meta.json").is_file():
        return False
    try:
        return not FeatureStore.open(first).meta.get("layers")
    except Exception:  # noqa: BLE001 - a damaged store is refused by the run itself, with its own message
        return False


def beside_paths(out, layers) -> list[Path]:
    """The first layer's store at `out`, each other layer's beside it at `out`-<layer> (sibling folders, never
    nested: a store is a closed folder, docs/security.md)."""
    out = Path(out)
    out = out if out.name else out.resolve()  # "." or "x/..": name the folder
    return [out] + [out.with_name(f"{out.name}-{layer_slug(layer)}") for layer in layers[1:]]


class LayerWriters:
    """One :class:`StoreWriter` per layer of a multi-layer backbone, behind the writer interface."""

    def __init__(self, writers: list[StoreWriter], backbone):
        self.writers, self.backbone = writers, backbone
        self.source = backbone  # what gives each layer's spec and width once loaded (layers_from)
        self.stores: list[FeatureStore] = []

    def layers_from(self, source) -> None:
        """Take each layer's spec and width from `source` (``layer_spec(i)``, ``dims``) instead of the
        backbone: on Ray, what the actors that loaded the network sent, so the driver never loads it."""
        self.source = source

    @classmethod
    def open(cls, out, backbone, overwrite: bool) -> "LayerWriters":
        """`out`: a folder name with {layer}, or one folder per layer (a list, e.g. :func:`beside_paths`)."""
        paths = [Path(p) for p in out] if isinstance(out, (list, tuple)) else layer_paths(out, backbone.layers)
        if len(paths) != len(backbone.layers) or len(set(paths)) != len(paths):
            raise UsageError(f"out={[str(p) for p in paths]}: give one distinct folder per layer "
                             f"({', '.join(backbone.layers)})")
        writers = []
        try:
            for i, path in enumerate(paths):
                request = {**backbone.request(), "layer": backbone.layers[i]}
                writers.append(open_writer(path, request, overwrite=overwrite))  # data_dir: set by check_source
            paths = [w.root for w in writers]
            for w in writers:  # where the other layers of this pass are (pipeline/heads/featuresets.py)
                w.meta["layers"] = {layer: os.path.relpath(p, w.root) for layer, p in zip(backbone.layers, paths)}
        except BaseException:
            for w in writers:
                w.abort()
            raise
        return cls(writers, backbone)

    @property
    def root(self) -> Path:
        return self.writers[0].root

    def live_rows(self) -> list[dict]:
        """The rows every layer's store holds alike (path, sha256, stat, label): files the run may reuse."""
        def live(w):
            return {r["path"]: r for r in w.live_rows()}

        first, others = live(self.writers[0]), [live(w) for w in self.writers[1:]]
        key = lambda r: (r["sha256"], r.get("stat"), r.get("label"))  # noqa: E731
        return [r for p, r in first.items() if all(p in o and key(o[p]) == key(r) for o in others)]

    def remove(self, withdrawn: dict[str, str]) -> None:
        for w in self.writers:
            w.remove(withdrawn)

    def discard_if_empty(self) -> bool:
        """After a failed first run: remove the stores it created if every one is still empty (True then). One
        store with rows keeps all of them, the empty ones as valid empty stores: the run's report goes into
        each, and the same command run again resumes (a discarded folder would get the report alone)."""
        if not all(w.discardable for w in self.writers):
            return False
        return all([w.discard_if_empty() for w in self.writers])

    def set_spec(self, spec: dict) -> None:
        """Record each layer's own spec (the backbone's `spec` covers all layers side by side)."""
        for i, w in enumerate(self.writers):
            w.set_spec(self.source.layer_spec(i))

    def append(self, features: np.ndarray, rows: list[dict]) -> None:
        """Commit a batch to every layer's store: its columns, split by each layer's width."""
        edges = np.cumsum([0, *self.source.dims])
        for w, a, b in zip(self.writers, edges[:-1], edges[1:]):
            w.append(features[:, a:b], rows)

    def copy_rows(self, rows: list[dict], sources: list[str]) -> None:
        """Each layer's store copies its own features of `sources` (rows every store holds alike)."""
        for w in self.writers:
            w.copy_rows(rows, sources)

    def prune(self, keep_paths: set[str]) -> int:
        return max(w.prune(keep_paths) for w in self.writers)

    def write_report(self, report: dict) -> None:
        for w in self.writers:
            write_report(w.root, report)

    def write_skips(self, skipped: list[dict]) -> None:
        for w in self.writers:
            w.write_skips(skipped)

    def skip_cache(self) -> list[dict]:
        return self.writers[0].skip_cache()

    def close(self) -> FeatureStore:
        """Close every layer's store at once (each merges its parts and waits on its own fsyncs: they
        overlap). Every store is closed even when another fails; the first error is raised and the others
        logged, so one rerun shows them all. A store's own close releases it, failed or not; after an
        interrupt, a close still running releases its store itself when it ends."""
        from concurrent.futures import ThreadPoolExecutor, wait

        pool = ThreadPoolExecutor(len(self.writers), thread_name_prefix="tfp-close")
        futures = [pool.submit(w.close) for w in self.writers]
        try:
            wait(futures)
        finally:
            pool.shutdown(wait=False)
            for w, f in zip(self.writers, futures):
                if f.done():
                    w.abort()
        errors = [f.exception() for f in futures if f.exception() is not None]
        for e in errors[1:]:
            log.error("%s", e)
        if errors:
            raise errors[0]
        self.stores = [f.result() for f in futures]
        return self.stores[0]

    def abort(self) -> None:
        for w in self.writers:
            w.abort()
