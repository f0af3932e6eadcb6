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
from ..heads.classifier import Classifier
from ..heads.featuresets import CLASS_SCORES, feature_sets
from ..heads.folds import too_small
from ..heads.ood import summarize
from ..options import HeadOptions, SplitOptions, split_keywords
from ..progress import candidate_progress, fold_progress
from ..store import FeatureStore
from ..versions import versions
from .cpath import CVSettings
from .estimator import FeatureHead
from .evaluation import classification_metrics
from .multilabel import fit_multilabel
from .search import Candidate, choose
from .selection import check_labels
from .zeroshot import zero_shot_candidates, zero_shot_head

log = logging.getLogger(__name__)


def train(store, head: str | HeadOptions = "auto", split: str | SplitOptions = "hash", *,
          sample: int | float | None = None, progress: bool = False, layer: str | None = None,
          **keywords) -> Classifier:
    """Fit a head (linear_svm, svm, logreg, or auto) on the labelled rows of `store` (a FeatureStore or its path).

    head='auto' (the default) cross-validates the kinds that fit the data size (``auto_heads``) on one set
    of folds, each along its C grid (or at the given C), and keeps the best (pipeline/training/search.py); the
    table it chose from is ``metrics['selection']``. The candidates' features: every set the store offers
    (pipeline/heads/featuresets.py: its layer, the layers a multi-layer featurize wrote beside it, the
    penultimate features joined with the class scores); `layer` pins one by name (``predictions``,
    ``penultimate+predictions``); the head records the chosen set's spec (``metrics['feature_set']``).
    `progress`: a bar (or log lines) per candidate's folds.

    `head`: a HeadOptions (pipeline.options) or a head name; `split`: a SplitOptions or the split
    method. Their fields may also be given as keywords (``C=0.1, holdout=0.2``; `seed` sets both).
    holdout: fraction of images kept out for validation (split 'hash' or 'stratified', grouped by
    content, by the `group_by` regex on file names, or by `groups`: a {path: group} dict or a CSV
    with an id column and `group_column`). sample: train on N images per class (or a fraction).
    pca: reduce the standardised features to this many components first. class_weight: None or
    'balanced' (weights inversely proportional to class frequencies, recorded in the metrics).
    Classes with a single image are trained on and listed in ``metrics['unvalidated_classes']``.
    A multi-label store (featurize multi_label=True) gets one-vs-rest heads with a threshold per tag
    tuned by cross-validation (pipeline/training/multilabel.py); ``clf.predict`` then returns label sets.
    The validation metrics land in ``clf.metrics['validation']``. A single-label head is a fitted
    ``FeatureHead`` (pipeline/training/estimator.py): ``clf.estimator``, its settings ``clf.params``.
    """
    o, s = _settings(head, split, keywords)
    if not isinstance(store, FeatureStore):
        store = FeatureStore.open(Path(store))
    keep, y, rows = store.labelled_rows()
    sets = pick_sets(feature_sets(store) if not store.multi_label else [], layer, store)
    X = sets[0].features[keep] if sets else store.features[keep]
    if len(y) == 0:
        raise UsageError(f"{store.root} has no labelled images; featurize a folder with one sub-folder per "
                         f"class, or with labels='FILE.csv' (a CSV of ids and labels)")
    train_idx, valid = _split_rows(rows, y, s, sample, o.seed)
    if store.multi_label:  # one-vs-rest tags: pipeline/training/multilabel.py
        head = MULTI_LABEL_DEFAULT if o.head == "auto" else o.head
        with fold_progress(f"{head} C path", progress) as step:
            model, metrics = fit_multilabel(head, X[train_idx], y[train_idx], C=o.C, cv=CVSettings.of(o),
                                            progress=step)
    else:
        model = fit_single(o, {fs.name: fs.features[keep][train_idx] for fs in sets}, y[train_idx], progress)
        metrics = dict(model.metrics_)
        chosen = next(fs for fs in sets if fs.name == metrics.get("feature_set", sets[0].name))
        X, spec = chosen.features[keep], chosen.spec
    metrics["features"] = str(store.root)
    if valid.any():
        check = _validate_multilabel if store.multi_label else _validate
        metrics["validation"] = check(model, X, y, rows, train_idx, np.flatnonzero(valid))
    clf = Classifier(model, [str(c) for c in model.classes_], spec if not store.multi_label else store.spec, metrics,
                     versions())
    clf.train_hashes = sorted({rows[i]["sha256"][:16] for i in train_idx})
    clf.ood_summary = summarize(X[train_idx], y[train_idx], seed=o.seed)  # pipeline/heads/ood.py
    return clf


def _split_rows(rows, y, s: SplitOptions, sample, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """(indices of the rows to train on, mask of the validation rows): the holdout of `s`, then `sample`."""
    valid = np.zeros(len(y), dtype=bool)
    if s.holdout:
        valid = validation_mask(rows, y, s.holdout, s.split, s.group_by,
                                groups_by_path(s.groups, s.group_column, rows), s.seed)
    train_idx = np.flatnonzero(~valid)
    if sample is not None:
        train_idx = train_idx[sample_mask([rows[i]["path"] for i in train_idx], y[train_idx], sample, seed)]
    return train_idx, valid


MULTI_LABEL_DEFAULT = "logreg"  # head='auto' on tags: its own probabilities, warm-started along C
SVM_MAX_IMAGES = 1500  # head='auto' tries the RBF SVM up to this many images (its kernel grows as N^2)
OVR_MAX_CLASSES = 20  # ... and the one-vs-rest SVMs up to this many classes (one fit per class per C per fold)


def auto_heads(n_images: int, n_classes: int) -> list[str]:
    """The head kinds head='auto' cross-validates: logreg (one multinomial fit per C, warm-started) always;
    the SVMs when the data is small enough for them to train in seconds."""
    heads = ["logreg"]
    if n_classes <= OVR_MAX_CLASSES:
        heads.append("linear_svm")
        if n_images <= SVM_MAX_IMAGES:
            heads.append("svm")
    return heads


def set_heads(name: str, sets: dict, heads: list[str], asked: str) -> list[str]:
    """The kinds tried on feature set `name`: all of `heads`, but logreg alone on class scores and joins with
    them when head='auto' chooses among several sets (the default featurize pass). On class probabilities the
    SVMs never beat logreg and cost the most: catsdogs, 5-fold CV, predictions: logreg 0.963 (1.0 s), linear
    SVM 0.962 (8.8 s), RBF SVM 0.926; the join: 0.983, 0.983 (3.5 s), 0.952."""
    scores = name in CLASS_SCORES or "+" in name
    if asked != "auto" or len(sets) < 2 or not scores or "logreg" not in heads:
        return heads
    return ["logreg"]


def fit_single(o: HeadOptions, sets: dict, y, progress: bool = False) -> FeatureHead:
    """The single-label head: every (feature set, head kind) candidate cross-validated on the same folds, the
    best refitted on every row (a FeatureHead, its metrics with the table it was chosen from)."""
    y = np.asarray(y, dtype=str)
    heads = auto_heads(len(y), len(np.unique(y))) if o.head == "auto" else [o.head]
    grid = () if o.C == "auto" else (float(o.C),)
    candidates = [Candidate(name, h, grid) for name in sets for h in set_heads(name, sets, heads, o.head)]
    if len(candidates) == 1 and o.C != "auto":
        est = FeatureHead(heads[0], o.C, o.folds, o.seed, o.pca, o.class_weight).fit(sets[candidates[0].features], y)
        est.metrics_["feature_set"] = candidates[0].features
        return est
    check_labels(y)
    zero = zero_shot_candidates(sets, y) if o.head == "auto" and o.C == "auto" else {}
    candidates += [Candidate(name, "zero_shot") for name in zero]
    with candidate_progress(len(candidates), progress) as step:
        choice = choose(sets, y, candidates, CVSettings.of(o), zero_shot={k: v[0] for k, v in zero.items()},
                        progress=step)
    log.info("chose %s on %s, C=%s: CV accuracy %.4f", choice.head, choice.features, choice.C, choice.cv_accuracy)
    if choice.head == "zero_shot":
        return _zero_shot_estimator(choice, zero[choice.features][1], sets[choice.features], y, o)
    if o.C == "auto":
        est = FeatureHead(choice.head, "auto", o.folds, o.seed, o.pca, o.class_weight).fit_chosen(
            sets[choice.features], y, choice)
    else:
        est = FeatureHead(choice.head, o.C, o.folds, o.seed, o.pca, o.class_weight).fit(sets[choice.features], y)
        est.metrics_.update(cv_accuracy=choice.cv_accuracy, cv_folds=choice.n_splits, selection=choice.table())
    est.metrics_["feature_set"] = choice.features
    return est


def _zero_shot_estimator(choice, indices, X, y, o: HeadOptions) -> FeatureHead:
    """The zero-shot head as a fitted FeatureHead (a logreg of one-hot weights), with the selection's metrics."""
    classes = np.unique(y)
    model = zero_shot_head(classes, indices, X.shape[1])
    metrics = {"head": "zero_shot", "n_train": int(len(y)), "class_counts": check_labels(y), "pca": None,
               "class_weight": None, "unvalidated_classes": too_small(y), "C": None,
               "cv_accuracy": choice.cv_accuracy, "cv_folds": choice.n_splits, "selection": choice.table(),
               "feature_set": choice.features, "imagenet_indices": [int(i) for i in indices],
               "calibration": "the network's softmax over these classes (zero-shot: no training)"}
    metrics["train_accuracy"] = float(np.mean(model.predict(X) == y))
    return FeatureHead.fitted(model, {"head": "logreg", "C": "auto", "folds": o.folds, "seed": o.seed}, metrics)


def pick_sets(sets: list, layer: str | None, store) -> list:
    """The feature sets train chooses among: all of `sets`, or the one named `layer` (a clear error otherwise)."""
    if layer is None:
        return sets
    found = [s for s in sets if s.name == layer]
    if not found:
        raise UsageError(f"layer={layer!r}: {store.root} offers the feature sets {', '.join(s.name for s in sets)}; "
                         f"featurize with --layer penultimate,predictions --out 'features/NAME-{{layer}}' to get "
                         f"several from one pass")
    return found


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
