"""suspects: the held-out head's doubts, with a given head or the one train's head='auto' would choose."""
from __future__ import annotations

import pytest
from audit_stores import features, store_of

from pipeline.cli import main
from pipeline.heads.kinds import KINDS
from pipeline.training.quality import pick_head, suspects
from pipeline.training.train import auto_heads


@pytest.fixture
def mislabelled(tmp_path):
    x, y = features(60, seed=4, noise=0.6)
    y = y.copy()
    y[7] = "c2" if y[7] != "c2" else "c0"  # one image filed under the wrong class
    return store_of(tmp_path / "s", x, y), y[7]


def test_head_auto_ranks_with_the_kind_and_C_train_would_choose(mislabelled):
    store, wrong = mislabelled
    head, C = pick_head(store, "auto")
    assert head in auto_heads(60, 3) and C in KINDS[head].c_grid
    found = suspects(store, "auto")
    assert found[0]["path"] == f"{wrong}/img007.jpg"
    assert found == suspects(store, head, C)  # the same ranking as naming that head and C
    assert pick_head(store, "logreg", 0.5) == ("logreg", 0.5)  # a named head is kept as given


def test_cli_suspects_head_auto_says_which_head_ranked(mislabelled, capsys):
    store, wrong = mislabelled
    assert main(["suspects", str(store.root), "--head", "auto"]) == 0
    out = capsys.readouterr().out
    assert "chosen by --head auto" in out and f"{wrong}/img007.jpg" in out


def test_cli_compare_heads_auto_is_refused_with_what_to_list(mislabelled, capsys):
    store, _ = mislabelled
    assert main(["compare", str(store.root), "--heads", "auto,logreg"]) == 2
    err = capsys.readouterr().err
    assert "--heads auto" in err and "--heads linear_svm,svm,logreg" in err
