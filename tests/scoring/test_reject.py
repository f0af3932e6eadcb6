"""'None of these': score --reject-below P writes `unknown`, and the report's accuracy/coverage plot to pick P."""
from __future__ import annotations

import csv
import re

import numpy as np
import pytest
from conftest import make_class_tree
from html_check import parse_report

import pipeline
from pipeline.cli import main
from pipeline.errors import UsageError
from pipeline.training.evaluation import classification_metrics
from pipeline.reports.report import REJECT_THRESHOLDS, Predictions, coverage_curve, write_report
from pipeline.scoring.batch import predicted_labels

CLASSES = ["ant", "bee", "cow"]


def toy_predictions(n=200, seed=0):
    """Probabilities whose confidence varies, with mistakes more common among the unsure ones."""
    rng = np.random.default_rng(seed)
    logits = rng.normal(0, 2.0, (n, 3))
    proba = np.exp(logits) / np.exp(logits).sum(axis=1, keepdims=True)
    y = np.asarray(CLASSES)[np.argmax(proba, axis=1)]
    unsure = proba.max(axis=1) < 0.6
    flip = rng.random(n) < np.where(unsure, 0.6, 0.1)
    y[flip] = np.asarray(CLASSES)[rng.integers(0, 3, flip.sum())]
    return y, proba


def test_predicted_labels_reject_below_threshold():
    proba = np.array([[0.9, 0.05, 0.05], [0.4, 0.35, 0.25], [0.2, 0.7, 0.1]])
    assert predicted_labels(proba, CLASSES) == ["ant", "ant", "bee"]
    assert predicted_labels(proba, CLASSES, 0.7) == ["ant", "unknown", "bee"]  # 0.7 itself is kept
    assert predicted_labels(proba, CLASSES, 0.95) == ["unknown"] * 3


def test_coverage_curve_equals_direct_computation():
    y, proba = toy_predictions()
    conf, correct = proba.max(axis=1), np.asarray(CLASSES)[proba.argmax(axis=1)] == y
    curve = coverage_curve(y, proba, CLASSES)
    assert curve["coverage"][0] == 1.0 and len(curve["threshold"]) == len(np.unique(conf))
    for t, cov, acc in zip(curve["threshold"], curve["coverage"], curve["accuracy"]):
        kept = conf >= t
        assert cov == pytest.approx(kept.mean()) and acc == pytest.approx(correct[kept].mean())
    assert curve["accuracy"][-1] > curve["accuracy"][0]  # rejecting the unsure ones helps on this data


def test_report_plots_accuracy_against_coverage(tmp_path):
    y, proba = toy_predictions()
    m = classification_metrics(y, proba, CLASSES)
    page = write_report(tmp_path / "r", m, Predictions(y, proba, [f"x/{i}.jpg" for i in range(len(y))]), title="t")
    parsed = parse_report(page)
    assert "coverage.png" in parsed.images and (tmp_path / "r" / "coverage.png").read_bytes()[:4] == b"\x89PNG"
    section = page.read_text().split('<section id="coverage">')[1].split("</section>")[0]
    rows = re.findall(r"<tr><td>([^<]*)</td><td>(\d+)</td><td>([^<]*)</td><td>([^<]*)</td></tr>", section)
    assert [float(r[0]) for r in rows] == list(REJECT_THRESHOLDS)
    conf, correct = proba.max(axis=1), np.asarray(CLASSES)[proba.argmax(axis=1)] == y
    for p, kept_n, cov, acc in rows:
        kept = conf >= float(p)
        assert int(kept_n) == kept.sum() and float(cov) == pytest.approx(kept.mean(), abs=5e-5)
        assert acc == "-" if not kept.any() else float(acc) == pytest.approx(correct[kept].mean(), abs=5e-5)


@pytest.fixture(scope="module")
def head(tmp_path_factory):
    root = tmp_path_factory.mktemp("reject")
    data = make_class_tree(root / "data", per_class=4)
    clf = pipeline.train(pipeline.featurize(data, out=root / "feat", progress=False), head="logreg", C=0.01)
    path = clf.save(root / "m.joblib")
    return root, data, path


def read_csv(path):
    with open(path, newline="", encoding="utf-8") as f:
        return list(csv.DictReader(f))


def test_score_reject_below_writes_unknown_exactly_below_p(head, tmp_path):
    root, data, model = head
    pipeline.score(model, data, tmp_path / "p.csv", cache=tmp_path / "c", progress=False)
    plain = read_csv(tmp_path / "p.csv")
    top = {r["path"]: max(float(r["red"]), float(r["blue"])) for r in plain}
    p = float(np.median(list(top.values())))  # half of the images fall below it
    assert main(["score", str(model), str(data), "--out", str(tmp_path / "r.csv"), "--cache", str(tmp_path / "c"),
                 "--reject-below", f"{p}", "--no-progress"]) == 0
    rejected = {r["path"]: r["prediction"] for r in read_csv(tmp_path / "r.csv")}
    assert 0 < list(rejected.values()).count("unknown") < len(rejected)
    for r in plain:
        assert rejected[r["path"]] == ("unknown" if top[r["path"]] < p - 1e-6 else r["prediction"])


def test_reject_below_refuses_bad_values(head, tmp_path):
    root, data, model = head
    with pytest.raises(UsageError, match=r"must be a probability in \(0, 1\], got 1.5"):
        pipeline.score(model, data, tmp_path / "x.csv", reject_below=1.5)
    assert main(["score", str(model), str(data), "--out", str(tmp_path / "x.csv"), "--kaggle", "red",
                 "--reject-below", "0.5"]) == 2
    assert not (tmp_path / "x.csv").exists()


def odd_images(folder):
    """Images unlike the red and blue noise the head was trained on: stripes, a gradient, a checkerboard."""
    from PIL import Image

    folder.mkdir(parents=True)
    x = np.arange(80)[None, :].repeat(60, 0)
    stripes = ((x // 4) % 2 * 255).astype(np.uint8)
    checker = (((x // 10) + (np.arange(60)[:, None] // 10)) % 2 * 255).astype(np.uint8)
    gradient = (x * 3).astype(np.uint8)
    for name, g in (("stripes", stripes), ("checker", checker), ("gradient", gradient)):
        Image.fromarray(np.stack([g, 255 - g, g // 2], -1)).save(folder / f"{name}.png")
    return folder


def test_score_writes_ood_columns_and_reject_ood_writes_unknown_for_flagged_rows(head, tmp_path, caplog):
    import shutil

    root, data, model = head
    mixed = tmp_path / "mixed"
    shutil.copytree(data, mixed)
    odd_images(mixed / "odd")
    clf = pipeline.load(model)
    args = ["score", str(model), str(mixed), "--cache", str(tmp_path / "c"), "--no-progress"]
    assert main([*args, "--out", str(tmp_path / "p.csv")]) == 0
    rows = read_csv(tmp_path / "p.csv")
    assert list(rows[0]) == ["path", "prediction", "blue", "red", "ood_distance", "ood"]
    for r in rows:
        assert r["ood"] == str(int(float(r["ood_distance"]) > clf.ood_summary.threshold + 1e-6))
    flagged = {r["path"] for r in rows if r["ood"] == "1"}
    assert {"odd/stripes.png", "odd/checker.png", "odd/gradient.png"} <= flagged
    assert len(flagged & {r["path"] for r in rows if not r["path"].startswith("odd/")}) <= 1  # its training images
    assert main([*args, "--out", str(tmp_path / "r.csv"), "--reject-ood"]) == 0
    for plain, rejected in zip(rows, read_csv(tmp_path / "r.csv")):
        assert rejected["prediction"] == ("unknown" if plain["path"] in flagged else plain["prediction"])
        assert rejected["ood_distance"] == plain["ood_distance"]


def test_a_head_saved_without_ood_summary_scores_without_the_columns_and_says_so(head, tmp_path, caplog):
    root, data, model = head
    clf = pipeline.load(model)
    clf.ood_summary = None  # what a head saved before OOD summaries loads as
    old = clf.save(tmp_path / "old.head.npz")
    with caplog.at_level("WARNING"):
        assert main(["score", str(old), str(data), "--out", str(tmp_path / "p.csv"), "--cache", str(tmp_path / "c"),
                     "--no-progress"]) == 0
    assert list(read_csv(tmp_path / "p.csv")[0]) == ["path", "prediction", "blue", "red"]
    said = [r.message for r in caplog.records if "out-of-distribution" in r.message]
    assert len(said) == 1 and "retrain" in said[0]
    assert main(["score", str(old), str(data), "--out", str(tmp_path / "r.csv"), "--reject-ood"]) == 2
    assert not (tmp_path / "r.csv").exists()
    with pytest.raises(UsageError, match="reject_ood needs a head with an out-of-distribution summary"):
        pipeline.score(old, data, tmp_path / "r.csv", reject_ood=True)


def test_predicted_labels_reject_the_flagged_rows():
    proba = np.array([[0.9, 0.05, 0.05], [0.4, 0.35, 0.25], [0.2, 0.7, 0.1]])
    assert predicted_labels(proba, CLASSES, rejected=[False, False, True]) == ["ant", "ant", "unknown"]
    assert predicted_labels(proba, CLASSES, 0.7, [True, False, False]) == ["unknown", "unknown", "bee"]
