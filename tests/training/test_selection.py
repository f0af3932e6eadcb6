"""Heads on synthetic features: any number of classes, probabilities, C by cross-validation."""
from __future__ import annotations

import numpy as np
import pytest

from pipeline.errors import UsageError
from pipeline.heads.kinds import KINDS
from pipeline.training.estimator import fit_head
from pipeline.training.evaluation import classification_metrics

rng = np.random.default_rng(0)
CENTRES = rng.normal(0, 3, (3, 20))
X = np.concatenate([c + rng.normal(0, 1, (15, 20)) for c in CENTRES]).astype(np.float32)
y = np.repeat(["ant", "bee", "cow"], 15)


@pytest.mark.parametrize("head", ["linear_svm", "svm", "logreg"])
def test_three_class_heads_give_probabilities_and_cv_choice(head):
    model, m = fit_head(head, X, y)
    proba = model.predict_proba(X)
    assert proba.shape == (45, 3) and np.allclose(proba.sum(axis=1), 1)
    assert list(model.classes_) == ["ant", "bee", "cow"]
    assert m["C"] in KINDS[head].c_grid and m["cv_accuracy"] > 0.9 and m["cv_folds"] == 5


def test_fixed_C_is_used_as_given():
    _, m = fit_head("logreg", X, y, C=0.5)
    assert m["C"] == 0.5 and "cv_accuracy" not in m


def test_one_class_is_refused_and_a_class_with_one_image_is_trained_but_not_validated():
    with pytest.raises(UsageError, match="at least 2 classes"):
        fit_head("logreg", X[:10], y[:10])
    model, m = fit_head("logreg", X[:31], y[:31])  # 'cow' has one image
    assert list(model.classes_) == ["ant", "bee", "cow"] and m["class_counts"]["cow"] == 1
    assert m["unvalidated_classes"] == ["cow"] and m["cv_folds"] == 5
    assert model.predict(X[30:31])[0] == "cow"


def test_metrics_match_sklearn():
    from sklearn import metrics as skm

    model, _ = fit_head("logreg", X, y, C=0.01)
    proba = model.predict_proba(X)
    m = classification_metrics(y, proba, model.classes_)
    pred = model.classes_[proba.argmax(1)]
    assert m["accuracy"] == skm.accuracy_score(y, pred)
    assert m["log_loss"] == pytest.approx(skm.log_loss(y, proba))
    assert m["confusion_matrix"] == skm.confusion_matrix(y, pred).tolist()
