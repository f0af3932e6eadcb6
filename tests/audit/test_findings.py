"""Findings as rows: the CSV's columns, spreadsheet-safe cells, never over an input."""
import csv

import pytest

from pipeline.audit import COLUMNS, KINDS, Finding, as_dicts, write_csv
from pipeline.errors import UsageError


def test_csv_has_the_issue_columns_first_and_one_row_per_finding(tmp_path):
    found = [Finding("leak", "a/x.jpg", 0.97, "b/y.jpg", "a", "b", -1, "test"),
             Finding("outlier", "=cmd|x.jpg", 0.5)]
    write_csv(tmp_path / "f.csv", found)
    rows = list(csv.reader((tmp_path / "f.csv").open()))
    assert rows[0] == list(COLUMNS) and COLUMNS[:4] == ("kind", "path", "other_path", "score")
    assert rows[1][:4] == ["leak", "a/x.jpg", "b/y.jpg", "0.970000"]
    assert rows[2][1] != "=cmd|x.jpg" and rows[2][2] == ""  # a formula is neutralised; no other path: empty
    assert set(KINDS) == {"near_duplicate", "leak", "label_issue", "outlier"}
    assert as_dicts(found)[1] == {"kind": "outlier", "path": "=cmd|x.jpg", "other_path": "", "score": 0.5,
                                  "label": "", "other_label": "", "group": -1, "store": ""}


def test_csv_is_not_written_over_a_file_this_tool_did_not_write(tmp_path):
    theirs = tmp_path / "notes.csv"
    theirs.write_text("precious,data\n")
    with pytest.raises(UsageError):
        write_csv(theirs, [])
    assert theirs.read_text() == "precious,data\n"
