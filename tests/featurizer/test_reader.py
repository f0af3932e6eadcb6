"""The reader stage: which stored rows a run may reuse unread, and which files it must read again."""
from __future__ import annotations

import numpy as np
import pytest
from conftest import noise_image

import pipeline


def _flat_folder(root, n=4):
    root.mkdir(parents=True)
    for i in range(n):
        noise_image(i, (40, 30)).save(root / f"img{i}.jpg")
    return root


def _no_forward_pass(monkeypatch):
    """Any image decoded or featurized from here on fails the test."""
    import pipeline.featurizer.prepare as prepare

    monkeypatch.setattr(prepare, "decode", lambda *a, **k: pytest.fail(f"{a[2]} was decoded again"))


def test_a_corrected_labels_csv_relabels_the_stored_rows(tmp_path, monkeypatch):
    """RELIABILITY B05 (stale cache): the label is part of what a row records. Fixing a label in the CSV
    (say after `suspects`) and featurizing again must give the new label, not keep the old row
    because the image itself is unchanged; a label taken out of the CSV leaves the image unlabelled.
    The features are the image's: the relabelled rows take them from the store, nothing is featurized."""
    images = _flat_folder(tmp_path / "images")
    csv = tmp_path / "labels.csv"
    csv.write_text("id,label\nimg0,cat\nimg1,cat\nimg2,dog\nimg3,dog\n")
    out = tmp_path / "store"
    first = pipeline.featurize(images, labels=csv, out=out, progress=False)
    before = dict(zip(first.paths, first.features))
    csv.write_text("id,label\nimg0,dog\nimg1,cat\nimg2,dog\n")  # img0 was mislabelled; img3's label withdrawn
    with monkeypatch.context() as m:
        _no_forward_pass(m)
        run = pipeline.featurize(images, labels=csv, out=out, progress=False, report=True)
    labels = dict(zip(run.store.paths, run.store.labels))
    assert labels == {"img0.jpg": "dog", "img1.jpg": "cat", "img2.jpg": "dog", "img3.jpg": None}
    assert len(run.store) == 4 and (run.computed, run.reused, len(run.copied)) == (0, 4, 2)
    assert run.store.report["copied"] == 2 and "2 rows took the features of the same image" in run.summary()
    for path, row in zip(run.store.paths, run.store.features):
        np.testing.assert_allclose(row, before[path], atol=1e-6)
    again = pipeline.featurize(images, labels=csv, out=out, progress=False, report=True)
    assert again.reused == 4 and again.computed == 0


def test_a_file_that_hit_an_io_error_is_read_again_next_run(tmp_path, monkeypatch):
    """RELIABILITY A32/E-NOLOSS: the skip cache skips a file unread while its stat is unchanged. That suits bad
    bytes, but an I/O error (too many open files, a network mount) is about that moment: the file was skipped
    on every later run with the old "Too many open files", and only touching it brought it back."""
    import errno

    from conftest import make_class_tree

    import pipeline.featurizer.prepare as prepare

    data = make_class_tree(tmp_path / "data", per_class=2)
    real = prepare.read_bytes

    def flaky(path):
        if str(path).endswith("red_1.jpg"):
            raise OSError(errno.EMFILE, "Too many open files")
        return real(path)
    monkeypatch.setattr(prepare, "read_bytes", flaky)
    first = pipeline.featurize(data, out=tmp_path / "s", progress=False, report=True, workers=1)
    assert [(s["path"], s["reason"]) for s in first.skipped] == [("red/red_1.jpg", "io_error:OSError")]
    monkeypatch.setattr(prepare, "read_bytes", real)
    again = pipeline.featurize(data, out=tmp_path / "s", progress=False, report=True)
    assert again.skipped == [] and again.computed == 1 and "red/red_1.jpg" in again.store.paths
    (data / "blue" / "blue_0.jpg").write_bytes(b"not an image")  # bad bytes stay skipped unread until changed
    assert [s["reason"] for s in pipeline.featurize(data, out=tmp_path / "s", progress=False,
                                                   report=True).skipped] == ["not_an_image"]
    monkeypatch.setattr(prepare, "read_bytes", lambda path: (_ for _ in ()).throw(AssertionError(f"read {path}")))
    assert [s["reason"] for s in pipeline.featurize(data, out=tmp_path / "s", progress=False,
                                                   report=True).skipped] == ["not_an_image"]


def test_a_file_moved_to_another_class_folder_keeps_its_features(tmp_path, monkeypatch):
    """Fixing a label by moving the file to the right class folder (or copying an image under a second name)
    changes its path, not its content: the new path's row takes the stored features, the old one is pruned.
    (With decode processes: tests/featurizer/test_decodepool.py.)"""
    from conftest import make_class_tree

    data = make_class_tree(tmp_path / "data", per_class=3)
    out = tmp_path / "store"
    first = pipeline.featurize(data, out=out, progress=False)
    before = dict(zip(first.paths, first.features))
    (data / "red" / "red_0.jpg").rename(data / "blue" / "red_0.jpg")
    (data / "blue" / "copy.jpg").write_bytes((data / "blue" / "blue_1.jpg").read_bytes())
    with monkeypatch.context() as m:
        _no_forward_pass(m)
        run = pipeline.featurize(data, out=out, progress=False, report=True, prune=True)
    assert (run.computed, len(run.copied), run.pruned) == (0, 2, 1)
    labels = dict(zip(run.store.paths, run.store.labels))
    assert labels["blue/red_0.jpg"] == "blue" and "red/red_0.jpg" not in labels and labels["blue/copy.jpg"] == "blue"
    rows = dict(zip(run.store.paths, run.store.features))
    np.testing.assert_array_equal(rows["blue/red_0.jpg"], before["red/red_0.jpg"])
    np.testing.assert_array_equal(rows["blue/copy.jpg"], before["blue/blue_1.jpg"])
    clean = pipeline.featurize(data, out=tmp_path / "clean", progress=False)  # what featurizing them gives
    for path, row in zip(clean.paths, clean.features):
        np.testing.assert_allclose(rows[path], row, atol=1e-6)
    again = pipeline.featurize(data, out=out, progress=False, report=True)
    assert (again.computed, again.reused, again.copied) == (0, 7, [])  # the copies' stat is recorded


def test_a_copy_takes_the_features_of_its_content_even_where_the_source_path_now_holds_another(tmp_path):
    """red_0 moved to blue/, and a new image saved at red/red_0.jpg in the same run: blue/red_0.jpg takes the
    features of the content it has (the old row), not of the new image written at its old path."""
    from conftest import make_class_tree

    data = make_class_tree(tmp_path / "data", per_class=2)
    out = tmp_path / "store"
    first = pipeline.featurize(data, out=out, progress=False)
    old = dict(zip(first.paths, first.features))["red/red_0.jpg"]
    (data / "red" / "red_0.jpg").rename(data / "blue" / "moved.jpg")
    noise_image(77, (80, 60), (230, 30, 30)).save(data / "red" / "red_0.jpg")
    run = pipeline.featurize(data, out=out, progress=False, report=True)
    assert (run.computed, len(run.copied)) == (1, 1)
    rows = dict(zip(run.store.paths, run.store.features))
    np.testing.assert_array_equal(rows["blue/moved.jpg"], old)
    assert np.abs(rows["red/red_0.jpg"] - old).max() > 1e-3  # the new image: features of its own


def test_a_relabelled_two_layer_run_copies_every_layers_row(tmp_path, monkeypatch):
    """The default pass writes penultimate features and class scores beside them: a corrected label is
    copied into both stores, each with its own layer's features."""
    images = _flat_folder(tmp_path / "images")
    csv = tmp_path / "labels.csv"
    csv.write_text("id,label\nimg0,cat\nimg1,cat\nimg2,dog\nimg3,dog\n")
    out = tmp_path / "store"
    pipeline.featurize(images, labels=csv, out=out, progress=False)
    stores = [out, tmp_path / "store-predictions"]
    before = [dict(zip(pipeline.FeatureStore.open(p).paths, pipeline.FeatureStore.open(p).features)) for p in stores]
    csv.write_text("id,label\nimg0,dog\nimg1,cat\nimg2,dog\nimg3,dog\n")
    with monkeypatch.context() as m:
        _no_forward_pass(m)
        run = pipeline.featurize(images, labels=csv, out=out, progress=False, report=True)
    assert (run.computed, len(run.copied)) == (0, 1)
    for path, rows in zip(stores, before):
        store = pipeline.FeatureStore.open(path)
        assert dict(zip(store.paths, store.labels))["img0.jpg"] == "dog" and len(store) == 4
        for p, row in zip(store.paths, store.features):
            np.testing.assert_array_equal(row, rows[p])
