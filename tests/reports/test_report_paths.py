"""A report reads images only below its data folder and writes only inside its own folder."""
from __future__ import annotations

import numpy as np
from PIL import Image

from pipeline.training.evaluation import classification_metrics
from pipeline.reports.report import Predictions, image_inside, write_report


def test_tampered_row_paths_and_hashes_never_leave_the_data_and_report_folders(tmp_path):
    data, out = tmp_path / "data" / "train", tmp_path / "reports" / "r"
    (data / "a").mkdir(parents=True)
    Image.new("RGB", (40, 30), (200, 10, 10)).save(data / "a" / "ok.jpg")
    Image.new("RGB", (40, 30), (10, 10, 200)).save(tmp_path / "secret.jpg")  # outside the data folder
    paths = ["a/ok.jpg", "../../secret.jpg", str(tmp_path / "secret.jpg")]
    hashes = ["ab" * 32, "../../../pwned", "../../evil"]
    proba = np.array([[0.9, 0.1], [0.2, 0.8], [0.6, 0.4]])
    y = np.array(["a", "a", "b"])
    metrics = classification_metrics(y, proba, ["a", "b"])
    before = {p for p in tmp_path.rglob("*")}
    page = write_report(out, metrics, Predictions(y, proba, paths, hashes, data), title="t")
    written = {p for p in tmp_path.rglob("*")} - before
    assert written and all(p.is_relative_to(out) or p == out.parent for p in written)
    thumbs = sorted(p.name for p in (out / "thumbs").iterdir())
    assert thumbs == [f"{'ab' * 12}.jpg"]  # only the image inside the data folder was read
    assert "secret" not in "".join(thumbs) and page.is_file()


def test_image_inside_accepts_listed_paths_and_refuses_climbing_or_absolute_ones(tmp_path):
    (tmp_path / "a").mkdir()
    (tmp_path / "a" / "x.jpg").write_bytes(b"x")
    assert image_inside(tmp_path, "a/x.jpg") == tmp_path / "a" / "x.jpg"
    for bad in ("../a/x.jpg", "a/../a/x.jpg", "/etc/passwd", "a//x.jpg", "a/missing.jpg"):
        assert image_inside(tmp_path, bad) is None
