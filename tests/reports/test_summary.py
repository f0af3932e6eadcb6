"""The text the CLI prints for suspects."""
from __future__ import annotations

from pipeline.reports.summary import suspects_table


def test_suspects_without_any_says_so_instead_of_an_empty_table():
    text = suspects_table([], 40, "logreg", 20)
    assert text == "0 of 40 labelled images are predicted as another class by a held-out logreg: no suspects"


def test_suspects_table_counts_every_suspect_and_shows_the_top_ones():
    found = [{"path": f"a/{i}.jpg", "label": "a", "predicted": "b", "p_label": 0.1 * i} for i in range(3)]
    lines = suspects_table(found, 40, "logreg", 2).splitlines()
    assert lines[0].startswith("3 of 40 labelled images") and lines[0].endswith("the 2 most doubtful:")
    assert [line.split()[-1] for line in lines[2:]] == ["a/0.jpg", "a/1.jpg"]
