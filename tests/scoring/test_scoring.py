"""Batch scoring never reports a prediction it did not compute from the file as it is now."""
from __future__ import annotations

import csv
import json
import shutil

import numpy as np
import pytest
from conftest import make_class_tree, noise_image

import pipeline
from pipeline.cli import main
from pipeline.scoring.batch import score_cache_path


@pytest.fixture(scope="module")
def head(tmp_path_factory):
    root = tmp_path_factory.mktemp("scoring")
    data = make_class_tree(root / "data", per_class=4)
    store = pipeline.featurize(data, "mobilenet_v2_quant", "penultimate", out=root / "feat", progress=False)
    clf = pipeline.train(store, head="logreg", C=1.0)
    return clf, clf.save(root / "head.joblib")


def read(path):
    return list(csv.DictReader(open(path, encoding="utf-8")))


def test_two_folders_of_the_same_name_never_share_a_cache(head, tmp_path, monkeypatch):
    # A/test/img1.jpg is red; B/test/img1.jpg is a truncated file: B's CSV used to carry A's prediction
    clf, _ = head
    monkeypatch.setenv("TFP_FEATURES", str(tmp_path / "features"))
    a, b = tmp_path / "A" / "test", tmp_path / "B" / "test"
    a.mkdir(parents=True)
    b.mkdir(parents=True)
    noise_image(1, base=(230, 30, 30)).save(a / "img1.jpg")
    good = (a / "img1.jpg").read_bytes()
    (b / "img1.jpg").write_bytes(good[: len(good) // 3])
    noise_image(2, base=(30, 30, 230)).save(b / "img2.jpg")
    pipeline.score(clf, a, tmp_path / "a.csv", progress=False)
    run = pipeline.score(clf, b, tmp_path / "b.csv", progress=False)
    assert [r["path"] for r in read(tmp_path / "a.csv")] == ["img1.jpg"]
    assert [r["path"] for r in read(tmp_path / "b.csv")] == ["img2.jpg"]
    assert [s["path"] for s in run.skipped] == ["img1.jpg"]
    assert score_cache_path(a, run.store.spec) != score_cache_path(b, run.store.spec)


def test_an_image_replaced_by_garbage_loses_its_prediction_and_its_stored_features(head, tmp_path):
    clf, _ = head
    folder = tmp_path / "imgs"
    folder.mkdir()
    for i in range(3):
        noise_image(i, base=(230, 30, 30)).save(folder / f"{i}.jpg")
    cache = tmp_path / "cache"
    pipeline.score(clf, folder, tmp_path / "p.csv", cache=cache, progress=False)
    assert len(read(tmp_path / "p.csv")) == 3
    (folder / "1.jpg").write_bytes(b"\xff\xd8\xff garbage, not a JPEG any more")
    run = pipeline.score(clf, folder, tmp_path / "p.csv", cache=cache, progress=False)
    assert [r["path"] for r in read(tmp_path / "p.csv")] == ["0.jpg", "2.jpg"]
    assert "1.jpg" not in pipeline.FeatureStore.open(cache).paths  # train would not see the old features either
    assert [s["path"] for s in run.skipped] == ["1.jpg"]


def test_featurize_refuses_a_store_of_another_folder_with_the_same_name(tmp_path):
    a = make_class_tree(tmp_path / "A" / "train", per_class=2)
    b = make_class_tree(tmp_path / "B" / "train", per_class=2, classes=("red", "green"))
    pipeline.featurize(a, "mobilenet_v2_quant", out=tmp_path / "f", progress=False)
    with pytest.raises(pipeline.PipelineError, match="holds features of the images in"):
        pipeline.featurize(b, "mobilenet_v2_quant", out=tmp_path / "f", progress=False)
    moved = tmp_path / "moved"
    shutil.move(str(a), moved)  # a folder that moved (the old one is gone) keeps its store
    assert len(pipeline.featurize(moved, "mobilenet_v2_quant", out=tmp_path / "f", progress=False)) == 4


def test_no_cache_leaves_no_store_behind(head, tmp_path, monkeypatch):
    clf, model = head
    monkeypatch.setenv("TFP_FEATURES", str(tmp_path / "features"))
    folder = tmp_path / "imgs"
    folder.mkdir()
    noise_image(5, base=(30, 30, 230)).save(folder / "x.jpg")
    assert main(["score", str(model), str(folder), "--out", str(tmp_path / "p.csv"), "--no-cache",
                 "--no-progress"]) == 0
    assert [r["prediction"] for r in read(tmp_path / "p.csv")] == ["blue"]
    assert not (tmp_path / "features").exists()


def test_a_full_disk_while_writing_the_csv_keeps_the_old_csv_whole(head, tmp_path, monkeypatch):
    clf, _ = head
    folder = tmp_path / "imgs"
    folder.mkdir()
    for i in range(4):
        noise_image(i, base=(230, 30, 30)).save(folder / f"{i}.jpg")
    out = tmp_path / "p.csv"
    pipeline.score(clf, folder, out, cache=tmp_path / "c", progress=False)
    before = out.read_bytes()
    import pipeline.outputs as outputs

    real = outputs._SafeWriter.writerow
    calls = {"n": 0}

    def full_disk(self, row):
        calls["n"] += 1
        if calls["n"] == 3:
            raise OSError(28, "No space left on device")
        return real(self, row)

    monkeypatch.setattr(outputs._SafeWriter, "writerow", full_disk)
    with pytest.raises(OSError, match="No space"):
        pipeline.score(clf, folder, out, cache=tmp_path / "c", progress=False)
    assert out.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith(".p.csv")) == []  # no temp left


def test_a_damaged_score_cache_names_the_folder_to_delete_not_a_flag_score_lacks(head, tmp_path, monkeypatch,
                                                                                  capsys):
    clf, model = head
    monkeypatch.setenv("TFP_FEATURES", str(tmp_path / "features"))
    folder = tmp_path / "imgs"
    folder.mkdir()
    noise_image(5, base=(30, 30, 230)).save(folder / "x.jpg")
    argv = ["score", str(model), str(folder), "--out", str(tmp_path / "p.csv"), "--no-progress"]
    assert main(argv) == 0
    cache = next((tmp_path / "features" / "score-cache").iterdir())
    (cache / "rows.jsonl").unlink()  # the cache's commit log is lost
    capsys.readouterr()
    assert main(argv) == 1
    err = capsys.readouterr().err
    assert f"delete {cache}" in err and "--no-cache" in err and "--overwrite" not in err
    shutil.rmtree(cache)
    assert main(argv) == 0  # as the message says


def test_non_finite_probabilities_fail_the_run_naming_the_files(head, tmp_path, monkeypatch, capsys):
    """Issue 27 item 5, never NaN with exit 0: a head that passed its probe at load can still give nan or inf
    on features far from it; score checks every probability before writing and exits 1 naming the files,
    writing no CSV (an older one stays as it was) and keeping the features cached. RELIABILITY E-ERR,
    E-NOPARTIAL."""
    import numpy as np

    import pipeline.scoring.batch as batch

    _, path = head
    folder = tmp_path / "imgs"
    folder.mkdir()
    for i in range(3):
        noise_image(i, base=(230, 30, 30)).save(folder / f"{i}.jpg")
    out, cache = tmp_path / "p.csv", tmp_path / "cache"
    assert main(["score", str(path), str(folder), "--out", str(out), "--cache", str(cache), "--no-progress"]) == 0
    before = out.read_bytes()
    real = batch._proba_and_ood

    def overflowing(clf, store, keep):  # what a head that overflows on these features gives
        p, ood = real(clf, store, keep)
        p[1] = np.nan
        return p, ood
    monkeypatch.setattr(batch, "_proba_and_ood", overflowing)
    assert main(["score", str(path), str(folder), "--out", str(out), "--cache", str(cache), "--no-progress",
                 "--force"]) == 1
    err = capsys.readouterr().err
    assert "non-finite probabilities" in err and "1.jpg" in err and "1 of 3 rows" in err and "0.jpg" not in err
    assert out.read_bytes() == before and len(pipeline.FeatureStore.open(cache).paths) == 3


@pytest.mark.parametrize("layer", ["predictions", "penultimate+predictions"])
def test_a_head_on_the_class_scores_of_the_default_pass_scores_folders_and_stores(tmp_path, monkeypatch, capsys,
                                                                                     layer):
    monkeypatch.setenv("TFP_FEATURES", str(tmp_path / "features"))
    data = make_class_tree(tmp_path / "data", per_class=4)
    store = pipeline.featurize(data, out=tmp_path / "feat", progress=False)  # penultimate + predictions beside it
    clf = pipeline.train(store, head="logreg", C=1.0, layer=layer)
    assert clf.spec["layer"] == layer.replace("+", ",") and clf.metrics["feature_set"] == layer
    head = clf.save(tmp_path / "h.head.npz")
    expected = clf.predict_proba(store)  # the store's set the head reads
    assert main(["score", str(head), str(data), "--out", str(tmp_path / "f.csv"), "--no-progress"]) == 0
    assert main(["score", str(head), str(tmp_path / "feat"), "--out", str(tmp_path / "s.csv"), "--no-progress"]) == 0
    for csv_file in ("f.csv", "s.csv"):
        rows = {r["path"]: r for r in read(tmp_path / csv_file)}
        got = [[float(rows[p][c]) for c in clf.classes_] for p in store.paths]
        assert abs(np.asarray(got) - expected).max() < 1e-5
    caches = sorted(p.name.rsplit("-", 1)[0] for p in (tmp_path / "features" / "score-cache").iterdir())
    assert caches == sorted(f"data-mobilenet_v2_quant-{x}" for x in layer.split("+"))  # exactly what it reads
    # evaluate (and its report) reads the same set of the store: the metrics are those of these probabilities
    capsys.readouterr()
    assert main(["evaluate", str(head), str(tmp_path / "feat"), "--json"]) == 0
    metrics = json.loads(capsys.readouterr().out)
    y = np.asarray(store.labelled()[1])
    assert metrics["accuracy"] == pytest.approx(float(np.mean(clf.classes_[expected.argmax(1)] == y)))
