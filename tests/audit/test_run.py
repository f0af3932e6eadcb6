"""audit() (pipeline/audit/run.py): every check of one store, a second store against it, and the command's outputs."""
import csv
import json

import numpy as np
import pytest

from pipeline.audit import CHECKS, Search, audit
from pipeline.cli import main
from pipeline.errors import UsageError
from pipeline.options import HeadOptions

from audit_stores import DIM, features, near_copy, store_of

QUICK = HeadOptions("logreg", C=1.0, folds=3)  # no C search: the tests stay quick


@pytest.fixture
def train_test(tmp_path):
    """train: 60 rows, 11 and 35 near-copies, 50 far from everything; test: 24 rows, 5 of them copies of
    training rows (the 'leaks'), with one that the training set contradicts."""
    x, y = features(60, seed=1)
    x[35], y[35] = near_copy(x[11], 1), y[11]
    x[50] = np.random.default_rng(0).normal(0, 1, DIM) * 5
    t, ty = features(24, seed=2)
    for i, j in zip((0, 3, 6, 9, 12), (1, 4, 7, 13, 22)):
        t[i], ty[i] = near_copy(x[j], i + 10), y[j]
    return store_of(tmp_path / "train", x, y), store_of(tmp_path / "test", t, ty)


def test_one_store_finds_its_near_copies_and_its_outlier(train_test):
    train, _ = train_test
    r = audit(train, search=Search(), head=QUICK, checks=("near_duplicate", "outlier"))
    assert [(f.path, f.other_path) for f in r.findings if f.kind == "near_duplicate"] == \
        [("c2/img011.jpg", "c2/img035.jpg")]
    assert "c2/img050.jpg" in [f.path for f in r.findings if f.kind == "outlier"]
    assert r.accuracy is None and r.method == "exact"


def test_two_stores_list_every_leak_and_the_accuracy_with_and_without_them(train_test):
    train, test = train_test
    r = audit(train, test, head=QUICK, checks=("leak",))
    leaks = sorted((f.path.split("/")[1], f.other_path.split("/")[1]) for f in r.findings)
    assert leaks == [("img000.jpg", "img001.jpg"), ("img003.jpg", "img004.jpg"), ("img006.jpg", "img007.jpg"),
                     ("img009.jpg", "img013.jpg"), ("img012.jpg", "img022.jpg")]
    a = r.accuracy
    assert (a["n"], a["leaked"], a["n_without"]) == (24, 5, 19)
    assert a["accuracy"] == pytest.approx((a["accuracy_without"] * 19 + 5) / 24)  # the copies are all right


def test_an_unlabelled_store_is_audited_without_label_issues(tmp_path):
    x, _ = features(30, seed=1)
    x[9] = near_copy(x[2], 3)
    r = audit(store_of(tmp_path / "u", x), head=QUICK)
    assert r.counts()["near_duplicate"] == 1 and r.counts()["label_issue"] == 0
    assert any("fewer than 2 labelled classes" in n for n in r.notes)


def test_the_checks_are_exported_by_pipeline_too():
    import pipeline
    from pipeline.audit import label_issues, leaks, near_duplicates, outliers

    assert (pipeline.near_duplicates, pipeline.leaks, pipeline.label_issues, pipeline.outliers) == \
        (near_duplicates, leaks, label_issues, outliers)


def test_an_unknown_check_is_refused(train_test):
    with pytest.raises(UsageError, match="checks=typo are not checks of audit"):
        audit(train_test[0], checks=("typo",))
    assert CHECKS == ("near_duplicate", "leak", "label_issue", "outlier")


def test_the_command_prints_a_table_and_writes_csv_json_and_report(train_test, tmp_path, capsys):
    train, test = train_test
    out = tmp_path / "audit.csv"
    args = ["audit", str(train.root), str(test.root), "--C", "1", "--folds", "3", "--checks", "near_duplicate,leak,outlier"]
    assert main(args + ["--csv", str(out), "--report", str(tmp_path / "rep")]) == 0
    text = capsys.readouterr().out
    assert "5 leak" in text and "without a near-duplicate in training (5 leaked)" in text
    rows = list(csv.DictReader(out.open()))
    assert list(rows[0])[:4] == ["kind", "path", "other_path", "score"]
    assert {r["kind"] for r in rows} == {"near_duplicate", "leak", "outlier"}
    assert all(r["other_path"] == "" for r in rows if r["kind"] == "outlier")
    page = (tmp_path / "rep" / "index.html").read_text()
    assert "Leaks: test images with a near-duplicate in training (5)" in page and "img022.jpg" in page
    assert main(args + ["--json"]) == 0
    got = json.loads(capsys.readouterr().out)
    assert got["counts"]["leak"] == 5 and got["accuracy"]["leaked"] == 5
    assert main(["audit", str(tmp_path / "nowhere")]) == 2
    assert main(args + ["--threshold", "3"]) == 2
