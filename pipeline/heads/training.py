"""Train a head on a feature store: ``pipeline.train(store, head=...) -> Classifier``.

Optionally on a stable sample, and with a validation split held out (grouped so identical or
related images never straddle it) and reported on.
"""
from __future__ import annotations

import logging
from dataclasses import replace
from pathlib import Path

import numpy as np

from ..dataset.splits import groups_by_path, leaked, sample_mask, validation_mask
from ..errors import UsageError
from ..options import HeadOptions, SplitOptions, split_keywords
from ..store import FeatureStore
from ..versions import versions
from .classifier import Classifier
from .estimator import FeatureHead
from .evaluation import classification_metrics
from .multilabel import fit_multilabel
from .ood import summarize

log = logging.getLogger(__name__)


def train(store, head: str | HeadOptions = "linear_svm", split: str | SplitOptions = "hash", *,
          sample: int | float | None = None, **keywords) -> Classifier:
    """Fit a head (linear_svm, svm, logreg) on the labelled rows of `store` (a FeatureStore or its path).

    `head`: a HeadOptions (pipeline.options) or a head name; `split`: a SplitOptions or the split
    method. Their fields may also be given as keywords (``C=0.1, holdout=0.2``; `seed` sets both).
    holdout: fraction of images kept out for validation (split 'hash' or 'stratified', grouped by
    content, by the `group_by` regex on file names, or by `groups`: a {path: group} dict or a CSV
    with an id column and `group_column`). sample: train on N images per class (or a fraction).
    pca: reduce the standardised features to this many components first. class_weight: None or
    'balanced' (weights inversely proportional to class frequencies, recorded in the metrics).
    Classes with a single image are trained on and listed in ``metrics['unvalidated_classes']``.
    A multi-label store (featurize multi_label=True) gets one-vs-rest heads with a threshold per tag
    tuned by cross-validation (pipeline/heads/multilabel.py); ``clf.predict`` then returns label sets.
    The validation metrics land in ``clf.metrics['validation']``. A single-label head is a fitted
    ``FeatureHead`` (pipeline/heads/estimator.py): ``clf.estimator``, its settings ``clf.params``.
    """
    o, s = _settings(head, split, keywords)
    if not isinstance(store, FeatureStore):
        store = FeatureStore.open(Path(store))
    X, y, rows = store.labelled(with_rows=True)
    if len(y) == 0:
        raise UsageError(f"{store.root} has no labelled images; featurize a folder with one sub-folder per "
                         f"class, or with labels='FILE.csv' (a CSV of ids and labels)")
    valid = np.zeros(len(y), dtype=bool)
    if s.holdout:
        valid = validation_mask(rows, y, s.holdout, s.split, s.group_by,
                                groups_by_path(s.groups, s.group_column, rows), s.seed)
    train_idx = np.flatnonzero(~valid)
    if sample is not None:
        sub = sample_mask([rows[i]["path"] for i in train_idx], y[train_idx], sample, o.seed)
        train_idx = train_idx[sub]
    if store.multi_label:  # one-vs-rest tags: pipeline/heads/multilabel.py
        model, metrics = fit_multilabel(o.head, X[train_idx], y[train_idx], C=o.C, folds=o.folds, seed=o.seed,
                                        pca=o.pca, class_weight=o.class_weight)
    else:
        model = FeatureHead(o.head, o.C, o.folds, o.seed, o.pca, o.class_weight).fit(X[train_idx], y[train_idx])
        metrics = dict(model.metrics_)
    metrics["features"] = str(store.root)
    if valid.any():
        check = _validate_multilabel if store.multi_label else _validate
        metrics["validation"] = check(model, X, y, rows, train_idx, np.flatnonzero(valid))
    clf = Classifier(model, [str(c) for c in model.classes_], store.spec, metrics, versions())
    clf.train_hashes = sorted({rows[i]["sha256"][:16] for i in train_idx})
    clf.ood_summary = summarize(X[train_idx], y[train_idx], seed=o.seed)  # pipeline/heads/ood.py
    return clf


def _settings(head, split, keywords: dict) -> tuple[HeadOptions, SplitOptions]:
    """train's HeadOptions and SplitOptions from its arguments; a keyword overrides the objects' field."""
    head_kw, split_kw = split_keywords("train", keywords, HeadOptions, SplitOptions)
    o = replace(head, **head_kw) if isinstance(head, HeadOptions) else HeadOptions(head, **head_kw)
    if not isinstance(split, SplitOptions):
        split = SplitOptions(split=split, **{"seed": o.seed, **split_kw})  # one seed unless told otherwise
        split_kw = {}
    return o, replace(split, **split_kw)


def _validate(model, X, y, rows, train_idx, valid_idx) -> dict:
    unseen = ~np.isin(y[valid_idx], np.unique(y[train_idx]))
    if unseen.any():
        log.warning("%d validation images belong to classes absent from training; left out", int(unseen.sum()))
        valid_idx = valid_idx[~unseen]
    m = classification_metrics(y[valid_idx], model.predict_proba(X[valid_idx]), model.classes_)
    pairs = leaked([rows[i] for i in train_idx], [rows[i] for i in valid_idx])
    m["leakage"] = [{"train": t, "validation": v} for t, v in pairs]
    if pairs:
        log.warning("%d validation images are identical to training images, e.g. %s and %s",
                    len(pairs), *pairs[0])
    return m


def _validate_multilabel(model, X, y, rows, train_idx, valid_idx) -> dict:
    from .multilabel import validate

    return validate(model, X[valid_idx], y[valid_idx], [str(c) for c in model.classes_],
                    [rows[i] for i in train_idx], [rows[i] for i in valid_idx])
