"""What an audit finds: one :class:`Finding` per row, and the CSV and JSON forms of a list of them.

Columns (``COLUMNS``, kept in this order): ``kind`` (``near_duplicate``, ``leak``, ``label_issue``,
``outlier``), ``path`` and ``other_path`` (relative to their stores' folders, as in score CSVs;
``other_path`` empty where there is none), ``score`` (higher: a surer finding; see KINDS),
``label`` and ``other_label``, ``group`` (near-duplicate group, -1 elsewhere) and ``store`` (the
store ``path`` belongs to).
"""
from __future__ import annotations

from dataclasses import asdict, dataclass

KINDS = {
    "near_duplicate": "two images of one store whose features' cosine similarity is at least the threshold "
                      "(score: the similarity; other_path: the other image; group: all images linked so)",
    "leak": "an image of the second store (test, or a new batch) with a near-duplicate in the first (training) "
            "store (score: the similarity; other_path: the training image)",
    "label_issue": "an image whose given label confident learning doubts (score: 1 - the out-of-fold probability "
                   "of the given label; other_label: the class the held-out head predicts)",
    "outlier": "an image far from every image of the training store (score: 1 - the mean cosine similarity "
               "of its nearest neighbours there)",
}
COLUMNS = ("kind", "path", "other_path", "score", "label", "other_label", "group", "store")


@dataclass(frozen=True)
class Finding:
    """One row of an audit."""

    kind: str
    path: str
    score: float
    other_path: str = ""
    label: str = ""
    other_label: str = ""
    group: int = -1
    store: str = ""

    def as_dict(self) -> dict:
        d = asdict(self)
        return {c: d[c] for c in COLUMNS}


def as_dicts(findings) -> list[dict]:
    """The findings as plain dicts with the keys of COLUMNS, in that order."""
    return [f.as_dict() for f in findings]


def write_csv(out, findings, force: bool = False) -> None:
    """One row per finding (COLUMNS), written atomically and spreadsheet-safe, never over an input."""
    from ..outputs import atomic_open, check_output, csv_writer

    check_output(out, "csv", force=force)
    with atomic_open(out, newline="") as f:
        w = csv_writer(f)
        w.writerow(COLUMNS)
        for d in as_dicts(findings):
            w.writerow([f"{d['score']:.6f}" if c == "score" else d[c] for c in COLUMNS])
