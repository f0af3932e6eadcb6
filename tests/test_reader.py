"""The reader stage: which stored rows a run may reuse unread, and which files it must read again."""
from __future__ import annotations

import numpy as np

import pipeline
from conftest import noise_image


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
