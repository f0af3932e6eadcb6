"""Out-of-distribution summaries (pipeline/heads/ood.py): calibrated on held-out folds, bounded, kept in the head file."""
from __future__ import annotations

import numpy as np
import pytest

from pipeline.errors import ModelFileError, UsageError
from pipeline.heads import headfile
from pipeline.heads.arrayhead import export
from pipeline.heads.classifier import Classifier
from pipeline.heads.ood import MAX_ROWS, QUANTILE, OODSummary, knn_distance, summarize
from pipeline.training.estimator import fit_head

DIM = 32


def clusters(n_per_class: int, n_classes: int = 3, seed: int = 0, spread: float = 0.25):
    """Non-negative 'pooled features' around one random direction per class (as a ReLU network's are)."""
    rng = np.random.default_rng(seed)
    centres = np.abs(np.random.default_rng(100).normal(0, 1, (n_classes, DIM))) * 4
    X = np.repeat(centres, n_per_class, axis=0) + rng.normal(0, spread * 4, (n_classes * n_per_class, DIM))
    return np.abs(X).astype(np.float32), np.repeat([f"c{i}" for i in range(n_classes)], n_per_class)


def far_points(n: int, seed: int = 1):
    """Points on other directions: a few strong features none of the classes has."""
    rng = np.random.default_rng(seed)
    X = np.abs(rng.normal(0, 0.3, (n, DIM)))
    for i, row in enumerate(X):
        row[rng.choice(DIM, 3, replace=False)] += 20
    return X.astype(np.float32)


def test_far_points_are_flagged_and_fresh_in_distribution_points_mostly_not():
    X, y = clusters(150)
    s = summarize(X, y, seed=0)
    fresh, _ = clusters(150, seed=7)  # new draws from the same classes
    far = far_points(60)
    assert s.score(far).flagged.all()
    rate = s.score(fresh).flagged.mean()
    assert rate <= 0.08  # calibrated for ~2.5%; fresh draws of 450 points
    assert (s.distance(far).min() > s.distance(fresh).max())


def test_threshold_is_the_quantile_of_held_out_distances():
    X, y = clusters(100)
    s = summarize(X, y, seed=3)
    c = s.calibration
    assert c.quantile == QUANTILE and c.folds == 5 and c.rows == len(X)
    assert 0.01 <= c.heldout_flagged <= 0.05  # ~2.5% of the held-out training images exceed it
    # the training images themselves are closer to the bank (they are in it): fewer are flagged
    assert s.score(X).flagged.mean() <= c.heldout_flagged


def test_a_point_between_the_modes_of_one_class_is_flagged():
    # one class made of two far-apart modes: its mean lies between them where no training image is;
    # the nearest-neighbour distance flags a point there, a single class centroid would not
    rng = np.random.default_rng(0)
    a, b = np.zeros(DIM), np.zeros(DIM)
    a[:4], b[4:8] = 10, 10
    X = np.vstack([a + rng.normal(0, 0.5, (100, DIM)), b + rng.normal(0, 0.5, (100, DIM))]).astype(np.float32)
    s = summarize(np.abs(X), np.repeat("one", 200), seed=0)
    middle = ((a + b) / 2)[None].astype(np.float32)
    assert s.score(middle).flagged.all()
    assert not s.score(a[None].astype(np.float32)).flagged.any()


def test_the_bank_is_bounded_float16_and_keeps_every_class():
    rng = np.random.default_rng(0)
    X, y = clusters(1500, n_classes=4)
    y = y.copy()
    y[rng.choice(len(y), 3, replace=False)] = "rare"  # a class of 3 images among 6000
    s = summarize(X, y, seed=0, max_rows=200)
    assert s.bank.dtype == np.float16 and len(s.bank) <= 200 + 5 * 5
    np.testing.assert_allclose(np.linalg.norm(s.bank.astype(np.float32), axis=1), 1, atol=2e-3)
    rare = X[y == "rare"]
    assert np.allclose(s.distance(rare), 0, atol=1e-2) or not s.score(rare).flagged.any()
    assert MAX_ROWS * DIM * 2 < 100_000  # the default bound keeps a 32-feature summary tiny


def test_too_few_rows_give_no_summary_and_non_finite_features_are_flagged():
    X, y = clusters(1, n_classes=3)
    assert summarize(X, y) is None
    s = summarize(*clusters(20))
    bad = np.full((2, DIM), np.nan, np.float32)
    assert s.score(bad).flagged.all()


def test_knn_distance_is_the_kth_cosine_distance():
    bank = np.eye(4, dtype=np.float32)
    q = np.array([[1, 0, 0, 0], [1, 1, 0, 0]], np.float32)
    np.testing.assert_allclose(knn_distance(bank, q, 1), [0, 1 - 1 / np.sqrt(2)], atol=1e-6)
    np.testing.assert_allclose(knn_distance(bank, q, 3), [1, 1], atol=1e-6)


SPEC = {"backbone": "toy", "kind": "toy", "model": "toy.tflite", "weights": None, "layer": "penultimate",
        "tensor": "pool", "dim": DIM, "preprocess": {"size": [8, 8], "scaling": "unit", "crop_fraction": 1.0}}


def classifier(with_ood: bool = True) -> Classifier:
    X, y = clusters(30)
    model, metrics = fit_head("logreg", X, y, C=1.0)
    clf = Classifier(model, model.classes_, SPEC, metrics)
    clf.ood_summary = summarize(X, y) if with_ood else None
    return clf


def test_the_summary_is_saved_data_only_in_the_head_file_and_scores_the_same(tmp_path):
    clf = classifier()
    path = clf.save(tmp_path / "m.head.npz")
    header, head = headfile.read(path)
    assert header["ood"]["method"] == "knn_cosine" and header["ood"]["threshold"] == clf.ood_summary.threshold
    assert header["head"]["arrays"]["ood.bank"][0] == "<f2"
    loaded = Classifier.load(path)
    assert "ood.bank" not in loaded.model.arrays  # kept apart from the head's own arrays
    far, fresh = far_points(10), clusters(10, seed=5)[0]
    for X in (far, fresh):
        d0, f0 = clf.ood(X)
        d1, f1 = loaded.ood(X)
        np.testing.assert_allclose(d1, d0, atol=1e-6)
        assert (f0 == f1).all()
    np.testing.assert_allclose(loaded.predict_proba(fresh), clf.predict_proba(fresh), atol=1e-6)


def test_a_head_saved_without_a_summary_loads_scores_and_says_so(tmp_path):
    clf = classifier(with_ood=False)
    path = clf.save(tmp_path / "old.head.npz")
    assert "ood" not in headfile.read(path)[0]
    loaded = Classifier.load(path)
    assert loaded.ood_summary is None and loaded.predict_proba(clusters(2)[0]).shape == (6, 3)
    with pytest.raises(UsageError, match="no out-of-distribution summary.*retrain"):
        loaded.ood(clusters(2)[0])


def test_a_damaged_summary_is_refused_naming_the_file(tmp_path):
    clf = classifier()
    head = export(clf.model)
    header = {"spec": clf.spec, "metrics": clf.metrics, "versions": {}, "train_hashes": [],
              "ood": {**clf.ood_summary.header(), "threshold": None}}
    arrays = {**head.arrays, **clf.ood_summary.arrays()}
    from pipeline.heads.arrayhead import ArrayHead

    bad = headfile.write(tmp_path / "bad.head.npz", ArrayHead(head.classes_, arrays, head.scorer, head.probabilities),
                         header)
    with pytest.raises(ModelFileError, match=r"bad.head.npz.*out-of-distribution summary is unusable"):
        Classifier.load(bad)
    wide = OODSummary(np.ones((5, DIM + 1), np.float16), 5, clf.ood_summary.calibration)
    arrays = {**head.arrays, **wide.arrays()}
    header["ood"] = wide.header()
    other = headfile.write(tmp_path / "wide.head.npz", ArrayHead(head.classes_, arrays, head.scorer,
                                                                 head.probabilities), header)
    with pytest.raises(ModelFileError, match=r"wide.head.npz.*33 features.*says 32"):
        Classifier.load(other)
