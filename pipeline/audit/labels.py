"""Label issues by confident learning: cleanlab's ``find_label_issues`` over out-of-fold probabilities.

The probabilities are those `suspects` ranks (pipeline/training/quality.py ``out_of_fold``: a
calibrated head cross-validated on the store's labelled rows). `suspects` lists every image whose
held-out prediction is another class; confident learning (Northcutt et al., 2021) is stricter: it
estimates the joint distribution of given and true labels from per-class confidence thresholds
and flags about as many images as that estimate says are mislabelled, ranked by the probability
of their given label. cleanlab is an optional dependency: ``pip install 'tf-feature-pipeline[audit]'``.
"""
from __future__ import annotations

import numpy as np

from ..errors import UsageError
from .findings import Finding


def cleanlab_available() -> bool:
    try:
        import cleanlab.filter  # noqa: F401
    except ImportError:
        return False
    return True


def label_issues(store, head: str = "logreg", C: float | str = "auto", folds: int = 5, seed: int = 0,
                 top: int | None = None) -> list[Finding]:
    """Likely mislabelled images of `store` (a FeatureStore or its path), most doubtful first."""
    from ..training.quality import out_of_fold
    from .checks import open_store

    try:
        from cleanlab.filter import find_label_issues
    except ImportError as e:
        raise UsageError(f"label issues need cleanlab ({e}); pip install 'tf-feature-pipeline[audit]' "
                         f"(or run `suspects`, which needs nothing more)") from e
    store = open_store(store)
    proba, y, classes, rows = out_of_fold(store, head, C, folds, seed, "audit")
    given = np.searchsorted(classes, y)
    ranked = find_label_issues(given, proba, filter_by="prune_by_noise_rate",
                               return_indices_ranked_by="self_confidence")
    best = np.argmax(proba, axis=1)
    found = [Finding("label_issue", rows[i]["path"], float(1.0 - proba[i, given[i]]), "", str(y[i]),
                     str(classes[best[i]]), -1, str(store.root)) for i in ranked]
    return found[:top] if top else found
