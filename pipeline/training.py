"""Train a head on a feature store: ``pipeline.train(store, head=...) -> Classifier``."""
from __future__ import annotations

from pathlib import Path

from .classifier import Classifier
from .errors import UsageError
from .heads import fit_head
from .store import FeatureStore, versions


def train(store, head: str = "linear_svm", C: float | str = "auto", folds: int = 5, seed: int = 0) -> Classifier:
    """Fit `head` (linear_svm, svm, logreg) on the labelled rows of `store` (a FeatureStore or its path)."""
    if not isinstance(store, FeatureStore):
        store = FeatureStore.open(Path(store))
    X, y = store.labelled()
    if len(y) == 0:
        raise UsageError(f"{store.root} has no labelled images; featurize a folder with one sub-folder per class")
    model, metrics = fit_head(head, X, y, C=C, folds=folds, seed=seed)
    metrics["features"] = str(store.root)
    return Classifier(model, list(model.classes_), store.spec, metrics, versions())
