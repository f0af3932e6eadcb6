"""Evaluation and reports: metrics equal scikit-learn's, the HTML report is valid and complete."""
from __future__ import annotations

import json
import os

import numpy as np
import pytest
from conftest import make_class_tree
from html_check import StrictHTML, parse_report  # noqa: F401
from sklearn import metrics as skm

import pipeline
from pipeline.cli import main
from pipeline.training.evaluation import classification_metrics, clip_suggestion


def test_metrics_equal_sklearn_functions():
    rng = np.random.default_rng(0)
    classes = [f"c{i}" for i in range(7)]
    y = np.array(classes)[rng.integers(0, 7, 300)]
    proba = rng.dirichlet(np.ones(7), 300)
    proba[np.arange(300), [classes.index(v) for v in y]] += 0.3  # better than chance
    proba /= proba.sum(1, keepdims=True)
    m = classification_metrics(y, proba, classes)
    pred = np.array(classes)[proba.argmax(1)]
    assert m["accuracy"] == pytest.approx(skm.accuracy_score(y, pred))
    assert m["balanced_accuracy"] == pytest.approx(skm.balanced_accuracy_score(y, pred))
    assert m["log_loss"] == pytest.approx(skm.log_loss(y, proba, labels=classes))
    assert m["top_5_accuracy"] == pytest.approx(skm.top_k_accuracy_score(y, proba, k=5, labels=classes))
    assert m["confusion_matrix"] == skm.confusion_matrix(y, pred, labels=classes).tolist()
    p, r, f, s = skm.precision_recall_fscore_support(y, pred, labels=classes, zero_division=0)
    assert [m["per_class"][c]["f1"] for c in classes] == pytest.approx(f.tolist())
    assert [m["per_class"][c]["support"] for c in classes] == s.tolist()


def test_clip_suggestion_finds_the_bound_that_lowers_log_loss():
    y = np.array(["cat"] * 50 + ["dog"] * 50)
    p_dog = np.r_[np.full(48, 0.001), np.full(2, 0.999), np.full(50, 0.999)]  # two confident mistakes
    clip = clip_suggestion(y, np.c_[1 - p_dog, p_dog], ["cat", "dog"])
    losses = dict(clip["table"])
    assert clip["best"] > 0 and losses[clip["best"]] < losses[0.0]
    assert losses[clip["best"]] == min(losses.values())


@pytest.fixture(scope="module")
def evaluated(tmp_path_factory):
    root = tmp_path_factory.mktemp("report")
    data = make_class_tree(root / "data", per_class=12)
    os.replace(data / "red" / "red_0.jpg", data / "blue" / "mislabelled.jpg")
    store = pipeline.featurize(data, out=root / "feat", progress=False)
    clf = pipeline.train(store, head="logreg", C=1.0)
    clf.save(root / "m.joblib")
    return root, store


def test_evaluate_json_has_the_documented_keys(evaluated, capsys):
    root, _ = evaluated
    assert main(["evaluate", str(root / "m.joblib"), str(root / "feat"), "--json"]) == 0
    m = json.loads(capsys.readouterr().out)
    assert {"accuracy", "balanced_accuracy", "log_loss", "per_class", "confusion_matrix", "classes"} <= set(m)
    assert m["classes"] == ["blue", "red"] and sum(map(sum, m["confusion_matrix"])) == 24


def test_evaluate_report_is_valid_html_with_every_image_and_the_mistake(evaluated, tmp_path, capsys):
    root, _ = evaluated
    out = tmp_path / "rep"
    assert main(["evaluate", str(root / "m.joblib"), str(root / "feat"), "--report", str(out)]) == 0
    page = out / "index.html"
    p = parse_report(page)
    text = " ".join(p.text)
    assert "confusion.png" in p.images and "Most confident mistakes" in text and "per-class scores" in text
    thumbs = [s for s in p.images if s.startswith("thumbs/")]
    assert thumbs and len(thumbs) <= 3 * 24
    html = page.read_text(encoding="utf-8")
    assert "24 of these images were in the training set" in html  # the head was trained on this store
    mtimes = {f: f.stat().st_mtime_ns for f in (out / "thumbs").iterdir()}
    assert main(["evaluate", str(root / "m.joblib"), str(root / "feat"), "--report", str(out)]) == 0
    assert {f: f.stat().st_mtime_ns for f in (out / "thumbs").iterdir()} == mtimes  # thumbnails made once


@pytest.mark.slow
def test_train_report_has_cross_validated_mistakes_learning_curve_and_clipping(evaluated, tmp_path, capsys):
    root, _ = evaluated
    out = tmp_path / "rep"
    assert main(["train", str(root / "feat"), "--head", "logreg", "--C", "1", "--out", str(tmp_path / "m.joblib"),
                 "--report", str(out), "--learning-curve"]) == 0
    printed = capsys.readouterr().out
    assert "learning curve" in printed and f"report -> {out / 'index.html'}" in printed
    p = parse_report(out / "index.html")
    assert {"confusion.png", "learning_curve.png"} <= set(p.images)
    html = (out / "index.html").read_text(encoding="utf-8")
    mistakes = html.split('<section id="mistakes">')[1].split("</section>")[0]
    assert "blue/mislabelled.jpg" in mistakes and "true: <b>blue</b>" in mistakes
    assert "Log loss and clipping" in html


def test_learning_curve_counts_images_per_class(evaluated):
    from pipeline.training.selection import learning_curve

    X, y = evaluated[1].labelled()
    curve = learning_curve("logreg", X, y, 1.0, folds=3, points=4)
    assert curve["per_class"][0] == 1 and curve["per_class"] == sorted(set(curve["per_class"]))
    assert curve["train_mean"][-1] == 1.0  # logistic regression fits a few tinted images exactly
    assert curve["valid_mean"][-1] >= 0.75 and len(curve["valid_mean"]) == len(curve["per_class"])


@pytest.mark.slow
def test_compare_table_and_pca(evaluated, tmp_path, capsys):
    root, store = evaluated
    logits = pipeline.featurize(root / "data", layer="logits", out=tmp_path / "logits", progress=False)
    assert main(["compare", str(root / "feat"), str(logits.root), "--heads", "linear_svm,logreg", "--C", "0.1",
                 "--json"]) == 0
    rows = json.loads(capsys.readouterr().out)
    assert [(r["layer"], r["head"]) for r in rows] == [("penultimate", "linear_svm"), ("penultimate", "logreg"),
                                                       ("logits", "linear_svm"), ("logits", "logreg")]
    assert main(["compare", str(root / "feat"), str(logits.root), "--pca", "5", "--C", "0.1"]) == 0
    table = capsys.readouterr().out.splitlines()
    assert "PCA 5" in table[0] and "linear_svm" in table[1] and "logreg" in table[1] and len(table) == 4
    clf = pipeline.train(store, head="logreg", C=1.0, pca=5)
    assert clf.model.named_steps["pca"].n_components_ == 5


def test_most_confused_pairs_come_from_the_confusion_matrix():
    from pipeline.reports.report import confused_pairs

    cm = [[50, 3, 0], [10, 40, 0], [1, 0, 9]]
    assert confused_pairs(cm, ["a", "b", "c"]) == [("b", "a", 10, 0.2), ("a", "b", 3, 3 / 53), ("c", "a", 1, 0.1)]


@pytest.mark.slow
def test_demo_runs_offline_and_writes_its_reports(tmp_path, capsys):
    assert main(["demo", "--features", str(tmp_path / "f"), "--models", str(tmp_path / "m"), "--no-progress"]) == 0
    printed = capsys.readouterr().out
    assert "100.00% from the SVM's own decisions" in printed
    for name in ("demo-cars.head.npz", "demo-cars-report.txt", "demo-cars-report.json", "demo-cars-predictions.csv"):
        assert (tmp_path / "m" / name).is_file()
        assert name in printed  # the demo says where each file it wrote is
    parse_report(tmp_path / "m" / "demo-cars-report" / "index.html")
    with open(tmp_path / "m" / "demo-cars-predictions.csv", newline="") as f:
        assert len(f.read().splitlines()) == 8  # header + the 7 test cars


def test_report_refuses_a_folder_of_other_files_and_the_data_folder(evaluated, tmp_path, capsys):
    """RELIABILITY E-NOLOSS / outputs never destroy inputs: `--report DIR` wrote index.html and PNGs over a
    folder's own files, and inside the data folder its thumbnails became images of the next featurize.
    Both are refused before anything is written (train: before training); a report is rewritten in place."""
    root, _ = evaluated
    model, feat = str(root / "m.joblib"), str(root / "feat")
    site = tmp_path / "site"
    site.mkdir()
    (site / "index.html").write_text("<html>my own page</html>")
    assert main(["evaluate", model, feat, "--report", str(site)]) == 2
    assert (site / "index.html").read_text() == "<html>my own page</html>" and len(list(site.iterdir())) == 1
    inside = root / "data" / "red" / "report"
    assert main(["evaluate", model, feat, "--report", str(inside)]) == 2 and not inside.exists()
    assert main(["train", feat, "--C", "1", "--out", str(tmp_path / "h.head.npz"), "--report", str(inside)]) == 2
    assert not inside.exists() and not (tmp_path / "h.head.npz").exists()
    assert "inside the data folder" in capsys.readouterr().err
    ours = tmp_path / "ours"
    assert main(["evaluate", model, feat, "--report", str(ours)]) == 0
    assert main(["evaluate", model, feat, "--report", str(ours)]) == 0  # its own report: replaced
