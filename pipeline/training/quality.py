"""Data quality: likely mislabelled images (exact duplicates: pipeline/store/duplicates.py).

"Clean data matters more than a good model": these read a feature store's rows (path, label,
sha256) and features, and say which images to look at.
"""
from __future__ import annotations

import numpy as np


def suspects(store, head: str = "logreg", C: float | str = "auto", folds: int = 5, seed: int = 0,
             top: int | None = 20) -> list[dict]:
    """Likely mislabelled images, most suspicious first, from out-of-fold predicted probabilities.

    Each entry: path, label (given), predicted, p_label (the probability the held-out head gives
    the given label), p_predicted. Only images the held-out head assigns to another class are
    listed, ranked by p_label, lowest first; `top` caps the list (None: all).
    """
    proba, y, classes, rows = out_of_fold(store, head, C, folds, seed, "suspects")
    given = np.searchsorted(classes, y)
    p_label = proba[np.arange(len(y)), given]
    best = np.argmax(proba, axis=1)
    order = np.argsort(p_label, kind="stable")
    out = [{"path": rows[i]["path"], "label": str(y[i]), "predicted": str(classes[best[i]]),
            "p_label": float(p_label[i]), "p_predicted": float(proba[i, best[i]])}
           for i in order if best[i] != given[i]]
    return out[:top] if top else out


def out_of_fold(store, head: str = "logreg", C: float | str = "auto", folds: int = 5, seed: int = 0,
                command: str = "suspects"):
    """(probabilities, y, classes, rows): each labelled image's class probabilities from a calibrated head
    that did not see it (`folds`-fold cross-validation; C='auto': chosen by CV first; head='auto': the kind
    and C ``train`` would choose, see :func:`auto_head`); classes sorted,
    the probabilities' columns in their order. What `suspects` and `audit`'s label issues rank."""
    from .multilabel import refuse_multi_label
    from .selection import check_labels, cross_val_proba, select_C

    refuse_multi_label(store, command)
    X, y, rows = store.labelled(with_rows=True)
    check_labels(y)
    if head == "auto":
        head, C = auto_head(X, y, C, folds, seed)
    elif C == "auto":
        C = select_C(head, X, y, folds, seed)[0]
    return cross_val_proba(head, X, y, C, folds, seed), y, np.unique(y), rows


def pick_head(store, head: str, C: float | str = "auto", folds: int | str = 5, seed: int = 0,
              command: str = "suspects") -> tuple[str, float | str]:
    """(head, C) as given, or for head='auto' the kind and C ``train`` would choose on the store's labelled
    features (:func:`auto_head`): what `suspects --head auto` ranks with."""
    if head != "auto":
        return head, C
    from .multilabel import refuse_multi_label
    from .selection import check_labels

    refuse_multi_label(store, command)
    X, y = store.labelled()
    check_labels(y)
    return auto_head(X, y, C, folds, seed)


def auto_head(X, y, C: float | str = "auto", folds: int | str = 5, seed: int = 0) -> tuple[str, float]:
    """(head kind, C) that ``train --head auto`` chooses on these features: the kinds of ``auto_heads``
    (pipeline/training/train.py) along their C grids (or at `C`), cross-validated on one set of folds by
    pipeline/training/search.py (the zero-shot candidate is left out: it has no out-of-fold head)."""
    from .cpath import CVSettings
    from .search import Candidate, choose
    from .train import auto_heads

    grid = () if C == "auto" else (float(C),)
    heads = auto_heads(len(y), len(np.unique(y)))
    choice = choose({"features": X}, y, [Candidate("features", h, grid) for h in heads], CVSettings(folds, seed))
    return choice.head, choice.C


SUSPECT_COLUMNS = ("path", "label", "predicted", "p_label", "p_predicted")


def write_suspects_csv(out, found: list[dict], force: bool = False) -> None:
    """Write the ranked suspects (see :func:`suspects`) as a CSV, atomically and spreadsheet-safe."""
    from ..outputs import atomic_open, check_output, csv_writer

    check_output(out, "csv", force=force)
    with atomic_open(out, newline="") as f:
        w = csv_writer(f)
        w.writerow(SUSPECT_COLUMNS)
        w.writerows([r[k] for k in SUSPECT_COLUMNS] for r in found)
