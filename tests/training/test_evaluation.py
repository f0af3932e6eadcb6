"""pipeline/training/evaluation.py: a head's metrics on a store, and the refusal of a store of other features."""
from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest
from conftest import REPO, make_class_tree

import pipeline
from pipeline.training.evaluation import classification_metrics, clip_suggestion


@pytest.fixture(scope="module")
def head_and_store(tmp_path_factory):
    """(a logreg head saved from the penultimate store of 6 images, that store)."""
    root = tmp_path_factory.mktemp("evaluation")
    pen = pipeline.featurize(make_class_tree(root / "data", per_class=3), layer="penultimate", out=root / "pen",
                             progress=False)
    head = root / "head.npz"
    pipeline.train(pen, head="logreg", C=1.0).save(head)
    return head, pen


@pytest.mark.slow
def test_a_store_of_other_features_is_refused_before_scikit_learn_is_imported(head_and_store, tmp_path):
    # the command a user mistyped answers at once: the spec check comes before the metrics' imports
    head, pen = head_and_store
    logits = pipeline.featurize(pen.meta["data_dir"], layer="logits", out=tmp_path / "logits", progress=False)
    code = ("import sys; from pipeline.cli import main; "
            f"rc = main(['evaluate', {str(head)!r}, {str(logits.root)!r}]); "
            "print(rc, 'sklearn' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert out.stdout.split() == ["1", "False"], out.stderr[-2000:]
    assert "holds mobilenet_v2_quant, layer logits" in out.stderr


def test_evaluate_gives_scikit_learns_metrics(head_and_store):
    from sklearn.metrics import accuracy_score, log_loss

    head, pen = head_and_store
    clf = pipeline.load(head)
    m = pipeline.evaluate(clf, pen)
    X, y = pen.labelled()
    proba = clf.predict_proba(X)
    assert m["n"] == len(y) == 6
    assert m["accuracy"] == accuracy_score(y, np.asarray(clf.classes_)[proba.argmax(1)])
    assert m["log_loss"] == pytest.approx(log_loss(y, proba, labels=clf.classes_))
    assert len(m["seen_in_training"]) == 6  # evaluated on its own training images: said so


def test_labels_the_head_never_saw_are_refused_naming_them():
    with pytest.raises(pipeline.UsageError, match="labels green are not classes of this head"):
        classification_metrics(["red", "green"], np.array([[0.9, 0.1], [0.2, 0.8]]), ["blue", "red"])


def test_clip_suggestion_prefers_no_clip_when_confident_and_right():
    proba = np.array([[0.999, 0.001], [0.002, 0.998]])
    s = clip_suggestion(["a", "b"], proba, ["a", "b"])
    assert s["best"] == 0.0 and [c for c, _ in s["table"]][0] == 0.0
    # confidently wrong once: clipping bounds the loss, and the best clip is above zero
    wrong = np.array([[0.9999, 0.0001], [0.9999, 0.0001], [0.0001, 0.9999]])
    assert clip_suggestion(["a", "b", "b"], wrong, ["a", "b"])["best"] > 0
