"""``audit(store, store2=None)``: every check of one store (near-duplicates, label issues, outliers) and,
with a second store (a test set or a new batch), its leaks from the first and its outliers against it,
with the accuracy of a head trained on the first on the second, with and without the leaked images.

One neighbour search per store pair serves both the near-duplicates (or leaks) and the outliers.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass, field

import numpy as np

from ..errors import UsageError
from ..options import HeadOptions
from .checks import (
    Search,
    check_same_features,
    distances,
    duplicate_findings,
    fence,
    leak_findings,
    neighbours_of,
    open_store,
    outlier_findings,
)
from .findings import Finding, as_dicts
from .labels import cleanlab_available, label_issues

log = logging.getLogger(__name__)
CHECKS = ("near_duplicate", "leak", "label_issue", "outlier")


@dataclass
class AuditResult:
    """What :func:`audit` found: ``findings`` (one :class:`Finding` each), ``accuracy`` (with two labelled
    stores: the head's accuracy on the second store with and without its leaked images, else None),
    ``notes`` (checks skipped and why), ``stores`` (their folders), the ``threshold`` and the neighbour
    ``method`` used."""

    findings: list[Finding]
    stores: list[str]
    threshold: float
    method: str = ""
    accuracy: dict | None = None
    notes: list[str] = field(default_factory=list)

    def counts(self) -> dict[str, int]:
        return {k: sum(f.kind == k for f in self.findings) for k in CHECKS}

    def to_dict(self) -> dict:
        return {"stores": self.stores, "threshold": self.threshold, "method": self.method, "counts": self.counts(),
                "accuracy": self.accuracy, "notes": self.notes, "findings": as_dicts(self.findings)}


def audit(store, store2=None, search: Search | None = None, head: HeadOptions | None = None,
          checks=CHECKS) -> AuditResult:
    """Audit `store` (a FeatureStore or its path), and `store2` against it when given.

    `search`: threshold, neighbours and index (pipeline.audit.checks.Search); `head`: the head of the
    label issues and of the accuracy with and without leaks (default: logreg, C chosen by CV);
    `checks`: which kinds of finding to look for.
    """
    s, head = search or Search(), head or HeadOptions("logreg")
    unknown = sorted(set(checks) - set(CHECKS))
    if unknown:
        raise UsageError(f"checks={','.join(unknown)} are not checks of audit; choose among {', '.join(CHECKS)}")
    store = open_store(store)
    other = open_store(store2) if store2 is not None else None
    if other is not None:
        check_same_features(store, other)
    result = AuditResult([], [str(store.root)] + ([str(other.root)] if other is not None else []), s.threshold)
    if {"near_duplicate", "outlier"} & set(checks) or other is not None:
        _neighbour_checks(store, other, s, checks, result)
    if "label_issue" in checks:
        _label_checks(store, head, result)
    if other is not None and "leak" in checks:
        result.accuracy = accuracy_with_and_without(store, other, [f for f in result.findings if f.kind == "leak"],
                                                    head, result.notes)
    return result


def _neighbour_checks(store, other, s: Search, checks, result: AuditResult) -> None:
    own = neighbours_of(store, store, s, self_search=True)
    result.method = own.method
    if "near_duplicate" in checks:
        result.findings += duplicate_findings(store, own, s.threshold)
    d_own = distances(own)
    limit = fence(d_own)
    if "outlier" in checks:
        result.findings += outlier_findings(store, d_own, limit)
    if other is None or not {"leak", "outlier"} & set(checks):
        return
    cross = neighbours_of(other, store, s, self_search=False)
    if "leak" in checks:
        result.findings += leak_findings(store, other, cross, s.threshold)
    if "outlier" in checks:
        result.findings += outlier_findings(other, distances(cross), limit)


def _label_checks(store, head: HeadOptions, result: AuditResult) -> None:
    if store.multi_label:
        result.notes.append("label issues: not looked for in a multi-label store")
        return
    labelled = store.labelled_rows()[1]
    if len(np.unique(labelled)) < 2:
        result.notes.append(f"label issues: {store.root} has fewer than 2 labelled classes")
        return
    if not cleanlab_available():
        result.notes.append("label issues: skipped, cleanlab is not installed (pip install "
                            "'tf-feature-pipeline[audit]'); `suspects` lists doubtful labels without it")
        return
    result.findings += label_issues(store, head.head, head.C, head.folds, head.seed)


def accuracy_with_and_without(train, test, leak_rows, head: HeadOptions, notes: list) -> dict | None:
    """Accuracy on `test`'s labelled rows of a head trained on `train`, on all of them and on those
    without a near-duplicate in `train` (`leak_rows`): the gap is how much the leaks inflate it."""
    from ..training.evaluation import predictions
    from ..training.train import train as fit

    if train.multi_label or test.multi_label:
        notes.append("accuracy with and without leaks: not computed for multi-label stores")
        return None
    if not len(test.labelled_rows()[1]):
        notes.append(f"accuracy with and without leaks: {test.root} has no labels")
        return None
    clf = fit(train, head)
    known = set(clf.classes_)
    m, y, proba, rows = predictions(clf, _only_known(test, known, notes))
    correct = np.asarray(clf.classes_)[np.argmax(proba, axis=1)] == np.asarray(y)
    leaked = {f.path for f in leak_rows}
    clean = np.array([r["path"] not in leaked for r in rows], dtype=bool)
    return {"head": head.head, "C": clf.metrics.get("C"), "n": int(len(y)), "accuracy": float(correct.mean()),
            "leaked": int((~clean).sum()), "n_without": int(clean.sum()),
            "accuracy_without": float(correct[clean].mean()) if clean.any() else None}


def _only_known(test, known: set, notes: list):
    """`test` itself, or a view without the rows labelled with classes the head does not know."""
    labels = test.labels
    unknown = {str(v) for v in labels if v is not None and str(v) not in known}
    if not unknown:
        return test
    notes.append(f"accuracy with and without leaks: images of {test.root} labelled {', '.join(sorted(unknown))} "
                 f"(classes absent from training) are left out")
    return _Without(test, unknown)


class _Without:
    """A store seen without the rows of some labels (what `predictions` reads of it)."""

    def __init__(self, store, labels: set):
        self._store, self._labels = store, labels

    def __getattr__(self, name):
        return getattr(self._store, name)

    def labelled_rows(self):
        keep, y, rows = self._store.labelled_rows()
        ok = np.array([v not in self._labels for v in y], dtype=bool)
        return keep[ok], y[ok], [r for r, o in zip(rows, ok) if o]
