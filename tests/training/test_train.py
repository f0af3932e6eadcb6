"""train's default: head kinds that fit the data size, every candidate on one set of folds, the table kept."""
from __future__ import annotations

import numpy as np
import pytest

from pipeline.options import HeadOptions
from pipeline.training.train import (
    OVR_MAX_CLASSES,
    SVM_MAX_IMAGES,
    auto_heads,
    fit_single,
)


def blobs(k=3, per=10, d=8, seed=0):
    rng = np.random.default_rng(seed)
    y = np.repeat([f"c{i}" for i in range(k)], per)
    return (rng.normal(0, 3, (k, d))[np.repeat(np.arange(k), per)] + rng.normal(0, 1, (k * per, d))).astype(
        np.float32), y


def test_the_svms_are_tried_only_where_they_train_in_seconds():
    assert auto_heads(100, 2) == ["logreg", "linear_svm", "svm"]
    assert auto_heads(SVM_MAX_IMAGES + 1, 2) == ["logreg", "linear_svm"]
    assert auto_heads(700, OVR_MAX_CLASSES + 1) == ["logreg"]


def test_the_default_cross_validates_every_kind_and_keeps_the_table():
    X, y = blobs()
    est = fit_single(HeadOptions(), {"penultimate": X}, y)
    m = est.metrics_
    assert {r["head"] for r in m["selection"]} == {"logreg", "linear_svm", "svm"}
    chosen = [r for r in m["selection"] if r["chosen"]]
    assert len(chosen) == 1 and (chosen[0]["head"], chosen[0]["C"]) == (m["head"], m["C"])
    assert m["feature_set"] == "penultimate" and m["cv_accuracy"] == chosen[0]["cv_accuracy"]
    assert list(est.predict(X)) == list(y)


@pytest.mark.slow
def test_beside_the_penultimate_features_class_scores_and_the_join_get_logreg_alone():
    X, y = blobs()
    P = np.abs(blobs(seed=1)[0])
    sets = {"penultimate": X, "predictions": P / P.sum(1, keepdims=True), "penultimate+predictions": np.hstack([X, P])}
    m = fit_single(HeadOptions(), sets, y).metrics_
    tried = {(r["features"], r["head"]) for r in m["selection"]}
    assert {h for f, h in tried if f == "penultimate"} == {"logreg", "linear_svm", "svm"}
    assert {h for f, h in tried if f != "penultimate" and h != "zero_shot"} == {"logreg"}
    # a kind asked for is tried on every set; a store of class scores alone gets every kind
    assert {f for f, _ in {(r["features"], r["head"]) for r in
                           fit_single(HeadOptions(head="linear_svm"), sets, y).metrics_["selection"]}} == set(sets)
    alone = fit_single(HeadOptions(), {"predictions": sets["predictions"]}, y).metrics_["selection"]
    assert {r["head"] for r in alone} == {"logreg", "linear_svm", "svm"}


def test_a_pinned_head_and_C_train_without_a_search():
    X, y = blobs()
    est = fit_single(HeadOptions(head="linear_svm", C=0.1), {"penultimate": X}, y)
    assert (est.metrics_["head"], est.metrics_["C"]) == ("linear_svm", 0.1) and "selection" not in est.metrics_
