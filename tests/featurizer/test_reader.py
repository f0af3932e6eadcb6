"""The reader stage: which stored rows a run may reuse unread, and which files it must read again."""
from __future__ import annotations

import numpy as np
from conftest import noise_image

import pipeline


def _flat_folder(root, n=4):
    root.mkdir(parents=True)
    for i in range(n):
        noise_image(i, (40, 30)).save(root / f"img{i}.jpg")
    return root


def test_a_corrected_labels_csv_relabels_the_stored_rows(tmp_path):
    """RELIABILITY B05 (stale cache): the label is part of what a row records. Fixing a label in the CSV
    (say after `suspects`) and featurizing again must give the new label, not keep the old row
    because the image itself is unchanged; a label taken out of the CSV leaves the image unlabelled."""
    images = _flat_folder(tmp_path / "images")
    csv = tmp_path / "labels.csv"
    csv.write_text("id,label\nimg0,cat\nimg1,cat\nimg2,dog\nimg3,dog\n")
    out = tmp_path / "store"
    first = pipeline.featurize(images, labels=csv, out=out, progress=False)
    before = dict(zip(first.paths, first.features))
    csv.write_text("id,label\nimg0,dog\nimg1,cat\nimg2,dog\n")  # img0 was mislabelled; img3's label withdrawn
    run = pipeline.featurize(images, labels=csv, out=out, progress=False, report=True)
    labels = dict(zip(run.store.paths, run.store.labels))
    assert labels == {"img0.jpg": "dog", "img1.jpg": "cat", "img2.jpg": "dog", "img3.jpg": None}
    assert len(run.store) == 4 and run.reused == 2  # only the relabelled rows were written again
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

    import pipeline.featurizer.prepare as reader  # where the reader stage reads files (read_bytes)

    data = make_class_tree(tmp_path / "data", per_class=2)
    real = reader.read_bytes

    def flaky(path):
        if str(path).endswith("red_1.jpg"):
            raise OSError(errno.EMFILE, "Too many open files")
        return real(path)
    monkeypatch.setattr(reader, "read_bytes", flaky)
    first = pipeline.featurize(data, out=tmp_path / "s", progress=False, report=True, workers=1)
    assert [(s["path"], s["reason"]) for s in first.skipped] == [("red/red_1.jpg", "io_error:OSError")]
    monkeypatch.setattr(reader, "read_bytes", real)
    again = pipeline.featurize(data, out=tmp_path / "s", progress=False, report=True)
    assert again.skipped == [] and again.computed == 1 and "red/red_1.jpg" in again.store.paths
    (data / "blue" / "blue_0.jpg").write_bytes(b"not an image")  # bad bytes stay skipped unread until changed
    assert [s["reason"] for s in pipeline.featurize(data, out=tmp_path / "s", progress=False,
                                                   report=True).skipped] == ["not_an_image"]
    monkeypatch.setattr(reader, "read_bytes", lambda path: (_ for _ in ()).throw(AssertionError(f"read {path}")))
    assert [s["reason"] for s in pipeline.featurize(data, out=tmp_path / "s", progress=False,
                                                   report=True).skipped] == ["not_an_image"]
