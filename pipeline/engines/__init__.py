"""Engines run the featurizer stages over a folder: :func:`featurize`, the public entry, and the registry it picks from.

``REGISTRY`` maps each engine's name (``FeaturizeOptions.engine``, ``--engine``) to its
:class:`~pipeline.engines.base.Engine` class, imported on first use (:func:`engine_class`): ``local``
(:mod:`pipeline.engines.local`, this process) and ``ray`` (:mod:`pipeline.engines.ray`, a Ray cluster; Ray
itself is imported only when a run connects). An engine module imports :mod:`pipeline.engines.base` and
the stages, never this package. Adding an engine: a module with an Engine subclass, one line here, and
its name in ``pipeline.options.ENGINES`` (a test keeps the two equal).
"""
from __future__ import annotations

import importlib

from ..backbones import DEFAULT_BACKBONE, Backbone, build_backbone
from ..errors import UsageError
from ..featurizer.layers import PLACEHOLDER, default_pass
from ..options import BackboneOptions, FeaturizeOptions, featurize_settings

REGISTRY = {"local": "local:LocalEngine", "ray": "ray:RayEngine"}  # name -> module:class in this package


def engine_class(name: str):
    """The Engine class registered as `name` (its module is imported now, Ray's without ray itself)."""
    if name not in REGISTRY:
        raise UsageError(f"engine={name!r} is not one of {', '.join(map(repr, REGISTRY))}")
    module, cls = REGISTRY[name].split(":")
    return getattr(importlib.import_module(f".{module}", __name__), cls)


def check_options(options: FeaturizeOptions) -> None:
    """Refuse, before any work, settings the chosen engine cannot honour (a UsageError naming the parameter)."""
    engine_class(options.engine).check(options)


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
    report=True, returns a RunReport (pipeline.engines.report; also written to ``report.json`` in the store).
    `layer` may name several layers ("penultimate,logits"): one forward pass writes one store
    per layer, at `out` with ``{layer}`` replaced by each name (the first store is returned).
    No `layer` (None, the default): the penultimate features at `out` and, where the network ends in a
    classifier, its class scores (``predictions``) from the same pass beside it at `out`-predictions
    (`out` with ``{layer}``: replaced as above), so ``train`` chooses among both and their join; a
    ready Backbone object reads its own layer(s).
    `engine`: a name in REGISTRY; engine="ray" runs on a Ray cluster (`cluster`: a
    pipeline.engines.ray.RayCluster), same store.
    `decode`: "thread", "process" (pipeline.featurizer.decodepool) or "auto" (processes from 8 usable cores on).
    `multi_label`: the CSV's label cells hold several tags (spaces or '|'); see pipeline/training/multilabel.py.
    """
    settings, options = featurize_settings(backbone, layer, weights, options, keywords)
    engine = engine_class(options.engine)(options)  # refuses what the engine cannot honour, before any work
    if settings is None:
        bb = backbone
    elif settings.layer is None:  # the default pass: penultimate + class scores (pipeline/featurizer/layers.py)
        from .base import default_store_path

        bb, out = default_pass(settings, out, lambda b: default_store_path(data_dir, b, layer=PLACEHOLDER))
    else:
        bb = build_backbone(settings)
    return engine.featurize(data_dir, bb, out, report)
