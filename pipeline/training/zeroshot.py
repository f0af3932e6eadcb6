"""Zero-shot heads: the network's own ImageNet class scores, restricted to classes whose names it knows.

``imagenet_indices(classes, labels)`` matches every class name to an ImageNet label after the usual
normalisation (case; ``_``, ``-`` and spaces alike; any of the comma-separated WordNet synonyms of a
line of ``imagenet_labels.txt``: ``golden_retriever``, ``Golden-Retriever`` and ``golden retriever``
all match line ``golden retriever``); None unless every class matches one label and no two classes
the same one. ``zero_shot_head(classes, indices, dim)`` is that restriction as a fitted head of this
project's kind (StandardScaler(identity) + LogisticRegression with one-hot weights): on the ``logits``
layer its probabilities are the network's softmax renormalised over those classes, with no training.
On ``predictions`` (already probabilities) it ranks the same but its probabilities are flatter.
"""
from __future__ import annotations

import re

import numpy as np
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import Pipeline
from sklearn.preprocessing import StandardScaler

CLASS_SCORE_LAYERS = ("logits", "predictions")  # zero-shot reads these, logits preferred


def normalise(name: str) -> str:
    """'Golden_Retriever' / 'golden-retriever' / ' golden  retriever ' -> 'golden retriever'."""
    return re.sub(r"[\s_\-]+", " ", str(name)).strip().lower()


def imagenet_indices(classes, labels: list[str]) -> list[int] | None:
    """For each class, the row of `labels` (ImageNet, comma-separated synonyms per row) naming it; None unless
    every class matches exactly one row and no two classes share one."""
    index: dict[str, set[int]] = {}
    for i, line in enumerate(labels):
        for synonym in line.split(","):
            index.setdefault(normalise(synonym), set()).add(i)
    found = [index.get(normalise(c), set()) for c in classes]
    if any(len(f) != 1 for f in found):
        return None
    rows = [next(iter(f)) for f in found]
    return rows if len(set(rows)) == len(rows) else None


def labels_for(dim: int) -> list[str] | None:
    """The ImageNet names of a `dim`-wide class-score layer (1000 or 1001 with background), else None."""
    from ..backbones import DATA_DIR

    lines = (DATA_DIR / "imagenet_labels.txt").read_text(encoding="utf-8").splitlines()
    return lines if dim == len(lines) else lines[1:] if dim == len(lines) - 1 else None


def zero_shot_scores(features: np.ndarray, indices: list[int]) -> np.ndarray:
    """(N, K) scores of the classes (columns in the classes' order) from the class-score features."""
    return np.asarray(features, dtype=np.float64)[:, indices]


def zero_shot_head(classes, indices: list[int], dim: int) -> Pipeline:
    """A fitted head (scale + logreg, savable as a head file) whose decision values are the features at
    `indices`: classes sorted by name, as every fitted head orders them."""
    classes = np.asarray(classes, dtype=object)
    order = np.argsort(classes.astype(str))
    classes, indices = classes[order], np.asarray(indices)[order]
    scale = StandardScaler()
    scale.mean_, scale.var_, scale.scale_ = np.zeros(dim), np.ones(dim), np.ones(dim)
    scale.n_features_in_, scale.n_samples_seen_ = dim, 0
    clf = LogisticRegression()
    onehot = np.zeros((len(classes), dim))
    onehot[np.arange(len(classes)), indices] = 1.0
    if len(classes) == 2:  # binary: one row, sigmoid(l_1 - l_0) = softmax over the two
        clf.coef_, clf.intercept_ = (onehot[1] - onehot[0])[None, :], np.zeros(1)
    else:
        clf.coef_, clf.intercept_ = onehot, np.zeros(len(classes))
    clf.classes_, clf.n_features_in_, clf.n_iter_ = classes, dim, np.zeros(1, dtype=np.int32)
    return Pipeline([("scale", scale), ("clf", clf)])


def zero_shot_candidates(sets: dict, y) -> dict:
    """{feature set: (scores in sorted class order, ImageNet indices)} for the class-score sets (logits
    preferred, one of them) whose ImageNet labels name every class (pipeline/training/zeroshot.py)."""
    classes = np.unique(y)
    for name in CLASS_SCORE_LAYERS:
        if name in sets:
            labels = labels_for(sets[name].shape[1])
            idx = imagenet_indices(classes, labels) if labels else None
            if idx is not None:
                return {name: (zero_shot_scores(sets[name], idx), idx)}
    return {}
