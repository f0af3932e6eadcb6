"""Choosing among feature sets, head kinds and C on one set of folds: the table and the winner."""
from __future__ import annotations

import numpy as np

from pipeline.training.cpath import CVSettings
from pipeline.training.search import Candidate, choose, format_table, plateau


def sets(n_per=12, k=3, seed=0):
    rng = np.random.default_rng(seed)
    y = np.repeat([f"c{i}" for i in range(k)], n_per)
    idx = np.searchsorted(np.unique(y), y)
    good = (rng.normal(0, 4, (k, 10))[idx] + rng.normal(0, 1, (len(y), 10))).astype(np.float32)
    noise = rng.normal(0, 1, (len(y), 10)).astype(np.float32)
    return {"noise": noise, "good": good}, y


def test_the_informative_features_win_and_the_table_has_a_row_per_candidate_and_C():
    fs, y = sets()
    c = choose(fs, y, [Candidate("noise", "logreg"), Candidate("good", "logreg"),
                       Candidate("good", "linear_svm", (0.01, 1.0))], cv=CVSettings(n_jobs=1))
    assert c.features == "good" and c.cv_accuracy > 0.9
    assert len(c.rows) == 5 + 5 + 2 and sum(r.chosen for r in c.rows) == 1
    chosen = next(r for r in c.rows if r.chosen)
    assert (chosen.features, chosen.head, chosen.C) == (c.features, c.head, c.C)
    assert max(r.cv_accuracy for r in c.rows if r.features == "noise") < 0.7


def test_ties_go_to_the_earlier_candidate():
    fs, y = sets()
    c = choose({"a": fs["good"], "b": fs["good"].copy()}, y, [Candidate("a", "logreg"), Candidate("b", "logreg")],
               cv=CVSettings(n_jobs=1))
    assert c.features == "a"


def test_a_zero_shot_candidate_competes_on_the_same_rows_without_training():
    fs, y = sets()
    perfect = (y[:, None] == np.unique(y)[None, :]).astype(float)
    c = choose(fs, y, [Candidate("noise", "logreg"), Candidate("scores", "zero_shot")], cv=CVSettings(n_jobs=1),
               zero_shot={"scores": perfect})
    assert (c.head, c.C, c.cv_accuracy) == ("zero_shot", None, 1.0)


def test_the_plateau_rule_takes_the_middle_of_the_best_run():
    assert plateau([0.5, 0.9, 0.9, 0.9, 0.7]) == 2 and plateau([0.9, 0.9, 0.1]) == 1


def test_the_table_marks_the_chosen_row():
    fs, y = sets()
    text = format_table(choose(fs, y, [Candidate("good", "logreg", (0.1,))], cv=CVSettings(n_jobs=1)).rows)
    assert text.splitlines()[1].startswith("* good") and "CV accuracy" in text
