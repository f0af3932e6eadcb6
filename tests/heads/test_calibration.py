"""Calibrated probabilities never contradict the decision function (issue 9, item 3)."""
from __future__ import annotations

import numpy as np
import pytest
from sklearn.base import clone
from sklearn.svm import LinearSVC

from pipeline.heads.calibration import (
    UNCALIBRATED,
    TemperatureCalibrated,
    calibration_folds,
)
from pipeline.training.estimator import fit_head


def blobs(n_classes: int, per_class: int, seed: int, dim: int = 30, noise: float = 1.0):
    rng = np.random.default_rng(seed)
    centres = rng.normal(0, 1, (n_classes, dim))
    X = np.concatenate([c + rng.normal(0, noise, (per_class, dim)) for c in centres]).astype(np.float32)
    return X, np.repeat([f"c{i}" for i in range(n_classes)], per_class)


def decision_argmax(model, X):
    f = model.decision_function(X)
    return model.classes_[(f > 0).astype(int)] if f.ndim == 1 else model.classes_[np.argmax(f, axis=1)]


CASES = [(n, k, seed, noise) for seed, (n, k) in enumerate([(2, 2), (2, 5), (3, 3), (5, 3), (7, 2), (10, 4)])
         for noise in (1.0, 10.0)]


@pytest.mark.parametrize("head,C", [("linear_svm", 0.01), ("linear_svm", 1.0), ("svm", 1.0), ("logreg", 0.1)])
@pytest.mark.parametrize("n_classes,per_class,seed,noise", CASES)
def test_predict_is_the_argmax_of_the_decision_function(head, C, n_classes, per_class, seed, noise):
    # tiny sets, easy and hopeless: the most probable class is the head's own decision, always
    X, y = blobs(n_classes, per_class, seed, noise=noise)
    model, m = fit_head(head, X, y, C=C, seed=seed)
    rows = np.concatenate([X, blobs(n_classes, 3, seed + 100, noise=noise)[0]])  # training and unseen rows
    pred = model.predict(rows)
    assert list(pred) == list(decision_argmax(model, rows))
    assert list(model.classes_[model.predict_proba(rows).argmax(1)]) == list(pred)
    assert "calibration" in m


def test_reproduction_five_classes_three_images_is_not_inverted():
    # issue 9: the sigmoid calibration scored 0.0 on its own training set, ~every prediction confident and wrong
    X, y = blobs(5, 3, seed=3, dim=200, noise=10.0)
    model, m = fit_head("linear_svm", X, y, C=0.01)
    svm_own = decision_argmax(model, X)
    proba = model.predict_proba(X)
    assert np.mean(model.classes_[proba.argmax(1)] == y) == np.mean(svm_own == y) == 1.0
    assert m["calibration"].startswith("temperature scaling")


def test_binary_probability_is_an_increasing_sigmoid_of_the_decision_value():
    X, y = blobs(2, 8, seed=1)
    cal = TemperatureCalibrated(LinearSVC(C=0.1), cv=4).fit(X, y)
    f = cal.decision_function(X)
    assert cal.alpha_ > 0
    assert np.allclose(cal.predict_proba(X)[:, 1], 1 / (1 + np.exp(-cal.alpha_ * f)))
    order = np.argsort(f)
    assert np.all(np.diff(cal.predict_proba(X)[order, 1]) >= 0)


def test_is_a_proper_estimator():
    X, y = blobs(3, 4, seed=2)
    cal = TemperatureCalibrated(LinearSVC(C=0.5, random_state=0), cv=3, seed=7)
    assert cal.fit(X, y) is cal and list(cal.classes_) == ["c0", "c1", "c2"]
    assert cal.get_params()["cv"] == 3 and cal.get_params()["estimator__C"] == 0.5
    twin = clone(cal)
    assert not hasattr(twin, "alpha_") and twin.get_params()["seed"] == 7
    assert np.allclose(twin.fit(X, y).predict_proba(X), cal.predict_proba(X))


def test_too_few_images_falls_back_to_the_softmax_of_decision_values_and_says_so():
    X, y = blobs(3, 1, seed=4)
    cal = TemperatureCalibrated(LinearSVC()).fit(X, y)
    assert cal.alpha_ == 1.0 and cal.calibration_ == UNCALIBRATED
    assert cal.unvalidated_ == ["c0", "c1", "c2"]
    f = cal.decision_function(X)
    assert np.allclose(cal.predict_proba(X), np.exp(f) / np.exp(f).sum(1, keepdims=True))


def test_rare_classes_train_in_every_fold_and_are_never_validated():
    y = np.array(["a"] * 6 + ["b"] * 4 + ["solo"])
    folds = calibration_folds(y, folds=5)
    assert len(folds) == 4  # k capped by the smallest class that can be validated
    for train, valid in folds:
        assert 10 in train and 10 not in valid
    assert sorted(np.concatenate([v for _, v in folds])) == list(range(10))
