"""scikit-learn heads: a StandardScaler and a classifier in one Pipeline, C chosen by CV.

Heads: ``linear_svm`` (LinearSVC), ``svm`` (SVC, RBF kernel), ``logreg`` (LogisticRegression): the
kinds of pipeline/heads/kinds.py, which also hold each one's C grid. Every fitted head gives
probabilities: the SVMs are wrapped in ``TemperatureCalibrated`` (pipeline/heads/calibration.py:
one SVM fitted on all the rows, its decision values mapped to probabilities by softmax(alpha * f)
with one alpha > 0 fitted on cross-validated decision values), so the most probable class is
always the SVM's own decision; logistic regression has its own probabilities. The head as a
scikit-learn estimator (fit, clone, GridSearchCV) is ``FeatureHead`` in pipeline/training/estimator.py
(with ``fit_head``); this module holds its parts and the CV helpers.
"""
from __future__ import annotations

import numpy as np
from sklearn.decomposition import PCA
from sklearn.model_selection import (
    GridSearchCV,
    LeaveOneOut,
    StratifiedKFold,
    cross_val_predict,
)
from sklearn.pipeline import Pipeline
from sklearn.preprocessing import StandardScaler

from ..errors import UsageError
from ..heads.calibration import TemperatureCalibrated
from ..heads.folds import RareClassKFold, too_small
from ..heads.kinds import check_head
from .cpath import one_thread


def make_head(head: str, C: float = 1.0, calibrate: bool = False, calibration_folds: int = 5,
              pca: int | None = None, seed: int = 0, class_weight: str | None = None) -> Pipeline:
    """An unfitted StandardScaler (+ PCA to `pca` components) + classifier pipeline."""
    kind = check_head(head, class_weight)
    clf = kind.make(C, class_weight)
    if calibrate and kind.needs_calibration:
        clf = TemperatureCalibrated(clf, cv=calibration_folds, seed=seed)
    steps = [("scale", StandardScaler())]
    if pca:
        steps.append(("pca", PCA(n_components=int(pca), random_state=0)))
    return Pipeline(steps + [("clf", clf)])


def check_labels(y: np.ndarray, min_per_class: int = 1) -> dict[str, int]:
    """Per-class counts; a clear error when there are fewer than 2 classes (or classes below `min_per_class`)."""
    classes, counts = np.unique(np.asarray(y, dtype=str), return_counts=True)
    table = dict(zip(classes.tolist(), counts.tolist()))
    if len(classes) < 2:
        found = f"one class ({table})" if table else "none"
        raise UsageError(f"training needs at least 2 classes with images, found {found}; "
                         f"put each class's images in its own sub-folder")
    small = {c: n for c, n in table.items() if n < min_per_class}
    if small:
        raise UsageError(f"every class needs at least {min_per_class} images, these have fewer: {small}")
    return table


def cv_splitter(y, folds: int | str = 5, seed: int = 0):
    """Stratified K-fold (shuffled, seeded), K capped by the smallest class; 'loo' for leave-one-out."""
    if folds == "loo":
        return LeaveOneOut()
    k = min(int(folds), int(np.unique(y, return_counts=True)[1].min()))
    if k < 2:
        small = too_small(y)
        raise UsageError(f"cross-validated predictions need at least 2 images per class; {len(small)} classes have "
                         f"one: {', '.join(small[:10])}{' ...' if len(small) > 10 else ''}")
    return StratifiedKFold(n_splits=k, shuffle=True, random_state=seed)


def plateau_index(cv_results) -> int:
    """The C that GridSearchCV refits (its ``refit=`` callable): of the candidates whose mean accuracy equals
    the best (within 1e-12), the middle one in grid order; small sets often score 100% for several C."""
    scores = list(cv_results["mean_test_score"])
    best = max(scores)
    tied = [i for i, v in enumerate(scores) if v >= best - 1e-12]
    return tied[len(tied) // 2]


def select_C(head: str, X, y, folds: int | str = 5, seed: int = 0, pca: int | None = None,
             class_weight: str | None = None):
    """Pick C from the head's grid by cross-validated accuracy: (C, CV accuracy, {C: accuracy}).

    Folds: RareClassKFold (classes with one image train in every fold and are not validated).
    The choice is ``plateau_index``, as in FeatureHead (pipeline/training/estimator.py); no model is refitted here.
    """
    grid = check_head(head, class_weight).c_grid
    search = GridSearchCV(make_head(head, pca=pca, class_weight=class_weight), {"clf__C": list(grid)},
                          cv=selection_splitter(y, folds, seed), scoring="accuracy", refit=False)
    with one_thread():  # BLAS at one thread: see pipeline/training/cpath.py
        search.fit(X, y)
    scores = dict(zip(grid, search.cv_results_["mean_test_score"].tolist()))
    return float(grid[plateau_index(search.cv_results_)]), float(max(scores.values())), scores


def selection_splitter(y, folds: int | str = 5, seed: int = 0):
    """The folds C='auto' uses: leave-one-out, or RareClassKFold; a clear error when nothing can be validated."""
    if folds == "loo":
        return LeaveOneOut()
    cv = RareClassKFold(int(folds), shuffle=True, random_state=seed)
    if cv.get_n_splits(y=y) < 2:
        raise UsageError("C='auto' needs a class with at least 2 images to cross-validate, but every class has "
                         "one; give C as a number, e.g. C=0.1")
    return cv


def cross_val_proba(head: str, X, y, C: float, folds: int | str = 5, seed: int = 0, pca: int | None = None):
    """Out-of-fold class probabilities (columns in sorted class order) of the calibrated head."""
    with one_thread():
        return cross_val_predict(make_head(head, C, calibrate=True, pca=pca, seed=seed),
                                 X, y, cv=cv_splitter(y, folds, seed), method="predict_proba")


def cross_val_accuracy(head: str, X, y, C: float, folds: int | str = 5, seed: int = 0,
                       pca: int | None = None) -> float:
    """Accuracy of out-of-fold predictions of the plain (uncalibrated) head."""
    with one_thread():
        pred = cross_val_predict(make_head(head, C, pca=pca), X, y, cv=cv_splitter(y, folds, seed))
    return float(np.mean(pred == np.asarray(y)))


def learning_curve(head: str, X, y, C: float, folds: int = 5, seed: int = 0, points: int = 6,
                   pca: int | None = None) -> dict:
    """Accuracy against training images per class: for each fold, stratified subsets of its training part.

    Returns per_class (the counts), train_mean/std and valid_mean/std (held-out accuracy).
    """
    y = np.asarray(y, dtype=str)
    classes = np.unique(y)
    cv = cv_splitter(y, folds, seed)
    rng = np.random.default_rng(seed)
    splits = list(cv.split(X, y))
    most = min(int(np.sum(y[tr] == c)) for tr, _ in splits for c in classes)
    ks = sorted({int(round(k)) for k in np.geomspace(1, most, points)})
    train_acc, valid_acc = np.zeros((len(ks), len(splits))), np.zeros((len(ks), len(splits)))
    with one_thread():  # BLAS at one thread: see pipeline/training/cpath.py
        for f, (tr, te) in enumerate(splits):
            order = rng.permutation(tr)
            for i, k in enumerate(ks):
                sub = np.concatenate([order[y[order] == c][:k] for c in classes])
                model = make_head(head, C, pca=min(pca, len(sub) - 1) if pca else None).fit(X[sub], y[sub])
                train_acc[i, f] = np.mean(model.predict(X[sub]) == y[sub])
                valid_acc[i, f] = np.mean(model.predict(X[te]) == y[te])
    return {"per_class": ks, "train_mean": train_acc.mean(1).tolist(), "train_std": train_acc.std(1).tolist(),
            "valid_mean": valid_acc.mean(1).tolist(), "valid_std": valid_acc.std(1).tolist(), "folds": len(splits)}


def calibration_note(model) -> str:
    """How the fitted head's probabilities are made, for its metrics and the training summary."""
    clf = model.named_steps["clf"] if hasattr(model, "named_steps") else model
    if isinstance(clf, TemperatureCalibrated):
        return clf.calibration_
    return f"{type(clf).__name__}'s own probabilities"
