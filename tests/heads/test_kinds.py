"""Head kinds (pipeline/heads/kinds.py): every kind in the registry fits, chooses C from its own grid, is saved
to a head file and reloaded with the same probabilities (also as TensorFlow ops); names are checked with the
messages users see; multi-label is refused for kinds without a one-vs-rest form."""
from __future__ import annotations

import numpy as np
import pytest

import pipeline
from pipeline import options
from pipeline.errors import UsageError
from pipeline.export import tfhead
from pipeline.heads import arrayhead, kinds
from pipeline.heads.classifier import Classifier
from pipeline.heads.kinds import KINDS
from pipeline.training.estimator import FeatureHead
from pipeline.training.multilabel import fit_multilabel

DIM = 10
SPEC = {"backbone": "toy", "kind": "toy", "model": "toy.tflite", "weights": None, "layer": "penultimate",
        "tensor": "pool", "dim": DIM, "preprocess": {"size": [8, 8], "scaling": "unit", "crop_fraction": 1.0}}


def blobs(n_classes: int, per_class: int = 10, seed: int = 0):
    rng = np.random.default_rng(seed)
    centres = rng.normal(0, 2, (n_classes, DIM))
    X = np.repeat(centres, per_class, axis=0) + rng.normal(0, 1.5, (n_classes * per_class, DIM))
    return X.astype(np.float32), np.repeat([f"c{i}" for i in range(n_classes)], per_class)


def tagged(n: int = 80, seed: int = 0):
    """Features where tag k raises feature k; stored labels are the tags joined by spaces."""
    rng = np.random.default_rng(seed)
    names = ["cat", "indoor", "night"]
    Y = rng.random((n, 3)) < [0.5, 0.4, 0.3]
    Y[~Y.any(axis=1), 0] = True
    X = rng.normal(0, 1, (n, DIM)).astype(np.float32)
    X[:, :3] += Y * 2.5
    return X, np.array([" ".join(t for t, on in zip(names, row) if on) for row in Y])


def test_the_settings_offer_the_registrys_names_in_its_order():
    assert options.HEADS == kinds.NAMES == tuple(KINDS)
    assert kinds.MULTI_LABEL == tuple(k.name for k in KINDS.values() if k.multi_label_ok)


@pytest.mark.parametrize("name", list(KINDS))
def test_a_kind_builds_its_classifier_and_names_a_scorer_both_scoring_codes_know(name):
    kind = KINDS[name]
    clf = kind.make(0.5, "balanced")
    assert isinstance(clf, kind.estimator) and clf.C == 0.5 and clf.class_weight == "balanced"
    assert kinds.kind_of(clf) is kind and kinds.get(name) is kind
    assert kind.c_grid == tuple(sorted(kind.c_grid)) and min(kind.c_grid) > 0
    assert kind.scorer in arrayhead.SCORERS and kind.scorer in tfhead.SCORERS


@pytest.mark.parametrize("n_classes", [2, 3])
@pytest.mark.parametrize("name", list(KINDS))
def test_every_kind_fits_and_its_head_file_gives_the_same_probabilities(name, n_classes, tmp_path):
    X, y = blobs(n_classes)
    est = FeatureHead(name, C="auto").fit(X, y)
    assert est.C_ in KINDS[name].c_grid and list(est.metrics_["cv_scores"]) == [str(c) for c in KINDS[name].c_grid]
    clf = Classifier(est, est.classes_, SPEC)
    again = pipeline.load(clf.save(tmp_path / f"{name}.head.npz"))
    unseen = blobs(n_classes, 6, seed=1)[0] * 1.5
    # scikit-learn scores float32 features in float32, the head file's numpy code in float64
    np.testing.assert_allclose(again.predict_proba(unseen), est.predict_proba(unseen), rtol=0, atol=1e-6)
    assert list(again.predict(unseen)) == list(est.predict(unseen))
    assert again.params == est.get_params() and again.metrics["head"] == name
    assert again.model.scorer == KINDS[name].scorer


@pytest.mark.parametrize("name", list(KINDS))
def test_every_kind_as_tensorflow_ops_gives_the_head_files_probabilities(name):
    X, y = blobs(3)
    head = arrayhead.export(FeatureHead(name, C=1.0).fit(X, y).model_)
    unseen = blobs(3, 4, seed=2)[0]
    np.testing.assert_allclose(np.asarray(tfhead.head_probabilities(head, unseen)), head.predict_proba(unseen),
                               rtol=0, atol=1e-6)


@pytest.mark.parametrize("name", kinds.MULTI_LABEL)
def test_multi_label_kinds_fit_one_vs_rest_heads_that_reload_alike(name, tmp_path):
    X, y = tagged()
    model, metrics = fit_multilabel(name, X, y, C=0.1)
    clf = Classifier(model, model.classes_, SPEC, metrics)
    again = pipeline.load(clf.save(tmp_path / "tags.head.npz"))
    assert again.multi_label and list(again.classes_) == ["cat", "indoor", "night"]
    np.testing.assert_allclose(again.predict_proba(X), clf.predict_proba(X), rtol=0, atol=1e-6)
    assert again.predict(X) == clf.predict(X)


@pytest.mark.parametrize("name", [k.name for k in KINDS.values() if not k.multi_label_ok])
def test_multi_label_is_refused_for_kinds_without_a_one_vs_rest_form(name):
    X, y = tagged()
    with pytest.raises(UsageError, match=rf"^multi-label training supports the heads linear_svm, logreg, not "
                                         rf"'{name}' \(an RBF SVM per tag cannot be saved as a head file yet\); "
                                         rf"use head='logreg'$"):
        fit_multilabel(name, X, y, C=0.1)


def test_unknown_names_are_refused_with_the_choices_and_the_closest_name(tmp_path):
    choices = "linear_svm, svm, logreg"
    with pytest.raises(UsageError, match=rf"^unknown head 'linear_sv' \(did you mean 'linear_svm'\?\); "
                                         rf"choose from {choices}$"):
        pipeline.compare([tmp_path / "never-read"], heads=("logreg", "linear_sv"))
    with pytest.raises(UsageError, match=rf"^unknown head 'xyz'; choose from {choices}$"):
        kinds.get("xyz")
    X, y = blobs(2)
    with pytest.raises(UsageError, match=rf"^unknown head: head='lgreg'; choose one of {choices}$"):
        FeatureHead("lgreg").fit(X, y)
    with pytest.raises(UsageError, match=r"^unknown head: head='rbf'; choose one of"):
        fit_multilabel("rbf", *tagged())
    with pytest.raises(UsageError, match=r"^class_weight must be None or 'balanced', got class_weight='auto'$"):
        FeatureHead("svm", class_weight="auto").fit(X, y)
