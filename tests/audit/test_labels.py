"""Label issues: cleanlab's confident learning over out-of-fold probabilities, and what happens without it."""
import sys

import pytest

from pipeline.audit import audit, label_issues
from pipeline.errors import UsageError
from pipeline.options import HeadOptions

from audit_stores import features, store_of

QUICK = HeadOptions("logreg", C=1.0, folds=3)


def test_label_issues_come_from_cleanlab_over_out_of_fold_probabilities(tmp_path):
    pytest.importorskip("cleanlab")
    x, y = features(90, seed=5, noise=0.5)  # classes well apart
    y[[4, 8]] = "c0"  # images of c1 and c2 labelled c0
    r = audit(store_of(tmp_path / "s", x, y), head=QUICK, checks=("label_issue",))
    issues = [f for f in r.findings if f.kind == "label_issue"]
    assert {"c0/img004.jpg", "c0/img008.jpg"} <= {f.path for f in issues}
    assert {(f.label, f.other_label) for f in issues if f.path == "c0/img004.jpg"} == {("c0", "c1")}
    assert len(issues) <= 6



def test_without_cleanlab_the_audit_says_so_and_label_issues_say_what_to_install(tmp_path, monkeypatch):
    x, y = features(30, seed=5, noise=0.5)
    store = store_of(tmp_path / "s", x, y)
    monkeypatch.setitem(sys.modules, "cleanlab.filter", None)  # import fails as if not installed
    r = audit(store, head=QUICK, checks=("label_issue",))
    assert r.findings == [] and any("cleanlab is not installed" in n for n in r.notes)
    with pytest.raises(UsageError, match=r"pip install 'tf-feature-pipeline\[audit\]'"):
        label_issues(store, C=1.0, folds=3)
