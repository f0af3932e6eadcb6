"""The audit's table and HTML report: pairs of thumbnails side by side, from each store's data folder."""
from pathlib import Path

from PIL import Image

from pipeline.audit import AuditResult, Finding
from pipeline.reports.audit import audit_table, write_audit_report


def _result(train: str, test: str) -> AuditResult:
    return AuditResult(
        [Finding("near_duplicate", "a/1.jpg", 0.95, "a/2.jpg", "a", "a", 0, train),
         Finding("leak", "t1.jpg", 0.99, "a/1.jpg", "a", "a", -1, test),
         Finding("outlier", "../../etc/passwd", 0.7, "", "", "", -1, test)],
        [train, test], 0.9, "exact",
        {"head": "logreg", "C": 1.0, "n": 10, "accuracy": 0.9, "leaked": 1, "n_without": 9, "accuracy_without": 8 / 9})


def _images(folder: Path, names) -> Path:
    for n in names:
        (folder / n).parent.mkdir(parents=True, exist_ok=True)
        Image.new("RGB", (40, 30), (200, 10, 10)).save(folder / n)
    return folder


def test_table_shows_counts_accuracy_with_and_without_and_rows():
    text = audit_table(_result("train", "test"))
    assert "found: 1 near_duplicate, 1 leak, 0 label_issue, 1 outlier" in text
    assert "0.9000 on all 10" in text and "0.8889 on the 9 without a near-duplicate in training (1 leaked)" in text
    assert "t1.jpg  a/1.jpg" in text


def test_report_puts_both_images_of_a_pair_side_by_side_and_never_reads_outside_the_folders(tmp_path):
    train = _images(tmp_path / "train_images", ["a/1.jpg", "a/2.jpg"])
    test = _images(tmp_path / "test_images", ["t1.jpg"])
    page = write_audit_report(tmp_path / "rep", _result("S1", "S2"), {"S1": str(train), "S2": str(test)})
    html = page.read_text()
    pairs = html.split('<div class="pair">')[1:]
    assert len(pairs) == 2 and all(p.count("<img ") == 2 for p in pairs)
    assert "0.8889" in html and "../../etc/passwd" in html and "no image" in html
    assert len(list((tmp_path / "rep" / "thumbs").iterdir())) == 3
