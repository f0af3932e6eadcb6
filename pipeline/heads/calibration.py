"""Probabilities from a margin classifier that can never contradict its decisions: temperature scaling.

``TemperatureCalibrated(LinearSVC())`` fits the classifier on all rows and maps its decision
values f to probabilities p = softmax(alpha * f) (binary: sigmoid(alpha * f)) with a single
alpha > 0. Because alpha is positive and there is no offset, the most probable class is always
the class the decision function ranks first (binary: the sign of f), whatever alpha is; a badly
fitted alpha can only make the probabilities too flat or too sharp, never invert them (a
per-class sigmoid, as in CalibratedClassifierCV, can learn a decreasing map on tiny data).

alpha minimises the log loss of cross-validated decision values against Platt's smoothed
targets ((n_c + 1) / (n_c + 2) for the true class), which keeps alpha finite when the folds
separate perfectly. Classes with fewer than 2 images stay in every training fold and are never
validated. When no class can be validated, alpha = 1 (the softmax of the decision values) and
``calibration_`` says so.
"""
from __future__ import annotations

import numpy as np
from scipy.optimize import minimize_scalar
from scipy.special import logsumexp, softmax
from sklearn.base import BaseEstimator, ClassifierMixin, clone
from sklearn.utils.validation import check_is_fitted

from .folds import RareClassKFold, too_small

UNCALIBRATED = "softmax of decision values (too few images per class to calibrate)"
ALPHA_RANGE = (1e-3, 1e3)


def decision_matrix(f: np.ndarray) -> np.ndarray:
    """(N, K) scores from a decision function: binary 1-D values f become the columns [0, f]."""
    f = np.asarray(f, dtype=np.float64)
    return np.column_stack([np.zeros_like(f), f]) if f.ndim == 1 else f


def probabilities(f: np.ndarray, alpha: float) -> np.ndarray:
    """softmax(alpha * f) row-wise (binary: [1 - sigmoid(alpha f), sigmoid(alpha f)])."""
    return softmax(alpha * decision_matrix(f), axis=1)


def calibration_folds(y, folds: int = 5, seed: int = 0) -> list[tuple[np.ndarray, np.ndarray]]:
    """(train, validate) index pairs of RareClassKFold: classes with 1 image train in every fold and are
    never validated; empty when no class has 2 images."""
    cv = RareClassKFold(folds, shuffle=True, random_state=seed)
    return list(cv.split(None, y)) if cv.get_n_splits(y=y) >= 2 else []


def fit_alpha(f: np.ndarray, y_index: np.ndarray, n_classes: int | None = None) -> float:
    """The alpha > 0 minimising the log loss of softmax(alpha * f) against Platt's smoothed targets."""
    S = decision_matrix(f)
    K = S.shape[1]
    counts = np.bincount(y_index, minlength=n_classes or K).astype(np.float64)
    hit = (counts[y_index] + 1) / (counts[y_index] + 2)  # Platt: t+ = (N+ + 1) / (N+ + 2)
    T = np.tile(((1 - hit) / (K - 1))[:, None], (1, K))
    T[np.arange(len(y_index)), y_index] = hit

    def loss(log_alpha: float) -> float:
        Z = np.exp(log_alpha) * S
        return float(np.mean(logsumexp(Z, axis=1) - np.sum(T * Z, axis=1)))

    lo, hi = np.log(ALPHA_RANGE[0]), np.log(ALPHA_RANGE[1])
    res = minimize_scalar(loss, bounds=(lo, hi), method="bounded", options={"xatol": 1e-6})
    return float(np.exp(res.x))


class TemperatureCalibrated(ClassifierMixin, BaseEstimator):
    """A classifier with a ``decision_function`` and probabilities p = softmax(alpha * f), alpha > 0.

    ``predict`` is the argmax of the decision function (binary: f > 0), and so is the argmax of
    ``predict_proba``. Fitted attributes: ``estimator_`` (fitted on all rows), ``alpha_``,
    ``classes_``, ``calibration_`` (how alpha was obtained), ``unvalidated_`` (classes too small
    to validate).
    """

    def __init__(self, estimator=None, cv: int = 5, seed: int = 0):
        self.estimator = estimator
        self.cv = cv
        self.seed = seed

    def fit(self, X, y, sample_weight=None):
        X, y = np.asarray(X), np.asarray(y)
        sample_weight = None if sample_weight is None else np.asarray(sample_weight)
        self.classes_, y_index = np.unique(y, return_inverse=True)
        folds = calibration_folds(y, self.cv, self.seed) if self.cv else []
        f, seen = None, np.zeros(len(y), dtype=bool)
        if folds:
            f = np.zeros((len(y), len(self.classes_) if len(self.classes_) > 2 else 1))
            for tr, te in folds:
                est = self._fit_one(X[tr], y[tr], None if sample_weight is None else sample_weight[tr])
                f[te] = est.decision_function(X[te]).reshape(len(te), -1)
                seen[te] = True
            f = f[:, 0] if f.shape[1] == 1 else f
        return self._finish(X, y, sample_weight, f, seen, len(folds))

    def fit_prevalidated(self, X, y, f, validated, n_folds: int, sample_weight=None):
        """Fit on every row, alpha from out-of-fold decision values `f` already computed (rows where
        `validated` is False are ignored): the folds that chose C also calibrate, nothing is refitted."""
        X, y = np.asarray(X), np.asarray(y)
        self.classes_ = np.unique(y)
        seen = np.asarray(validated, dtype=bool)
        return self._finish(X, y, sample_weight, np.asarray(f) if seen.any() else None, seen, n_folds)

    def _finish(self, X, y, sample_weight, f, seen, n_folds: int):
        self.unvalidated_ = too_small(y)
        if f is not None:
            y_index = np.searchsorted(self.classes_, y)
            self.alpha_ = fit_alpha(f[seen], y_index[seen], len(self.classes_))
            self.calibration_ = (f"temperature scaling (alpha={self.alpha_:.4g}) fitted on {n_folds}-fold "
                                 f"cross-validated decision values" + (
                                     f" ({len(self.unvalidated_)} classes with one image not validated)"
                                     if self.unvalidated_ else ""))
        else:
            self.alpha_, self.calibration_ = 1.0, UNCALIBRATED
        self.estimator_ = self._fit_one(X, y, sample_weight)
        self.n_features_in_ = X.shape[1]
        return self

    def _fit_one(self, X, y, sample_weight):
        est = clone(self.estimator)
        return est.fit(X, y) if sample_weight is None else est.fit(X, y, sample_weight=sample_weight)

    def decision_function(self, X) -> np.ndarray:
        check_is_fitted(self, "estimator_")
        return self.estimator_.decision_function(X)

    def predict_proba(self, X) -> np.ndarray:
        return probabilities(self.decision_function(X), self.alpha_)

    def predict(self, X) -> np.ndarray:
        return self.classes_[np.argmax(decision_matrix(self.decision_function(X)), axis=1)]
