"""Metrics of a head on labelled features, computed with scikit-learn's own functions.

scikit-learn is imported where the metrics are computed, not with this module: ``evaluate`` refuses a head
and a store of different features before it (a second or more of start-up on a small machine)."""
from __future__ import annotations

import numpy as np

from ..errors import UsageError
from ..heads.featuresets import head_chunks


def classification_metrics(y_true, proba: np.ndarray, classes) -> dict:
    """accuracy, balanced_accuracy, log_loss, top-k, per_class P/R/F1/support, confusion_matrix, classes."""
    classes = [str(c) for c in classes]
    y_true = np.asarray(y_true, dtype=str)
    unknown = sorted(str(u) for u in set(y_true) - set(classes))
    if unknown:
        raise UsageError(f"labels {', '.join(unknown)} are not classes of this head "
                         f"({', '.join(classes)}); evaluate on features labelled with the head's classes")
    from sklearn import metrics as skm

    y_pred = np.asarray(classes, dtype=object)[np.argmax(proba, axis=1)].astype(str)
    p, r, f, s = skm.precision_recall_fscore_support(y_true, y_pred, labels=classes, zero_division=0)
    out = {
        "n": int(len(y_true)),
        "accuracy": float(skm.accuracy_score(y_true, y_pred)),
        "balanced_accuracy": float(skm.balanced_accuracy_score(y_true, y_pred)),
        "log_loss": float(skm.log_loss(y_true, proba, labels=classes)),
        "per_class": {c: {"precision": float(p[i]), "recall": float(r[i]), "f1": float(f[i]),
                          "support": int(s[i])} for i, c in enumerate(classes)},
        "confusion_matrix": skm.confusion_matrix(y_true, y_pred, labels=classes).tolist(),
        "classes": classes,
    }
    if len(classes) > 5:
        out["top_5_accuracy"] = float(skm.top_k_accuracy_score(y_true, proba, k=5, labels=classes))
    return out


def format_metrics(m: dict) -> str:
    """A short human-readable table."""
    if m.get("multi_label"):
        from .multilabel import format_multilabel

        return format_multilabel(m)
    lines = [f"n={m['n']}  accuracy {m['accuracy']:.4f}  balanced accuracy {m['balanced_accuracy']:.4f}  "
             f"log loss {m['log_loss']:.4f}"]
    if "top_5_accuracy" in m:
        lines[0] += f"  top-5 {m['top_5_accuracy']:.4f}"
    if m.get("seen_in_training"):
        lines.append(f"warning: {len(m['seen_in_training'])} of these images were in the training set "
                     f"(identical content), e.g. {m['seen_in_training'][0]}: these figures are optimistic")
    width = max(len(c) for c in m["classes"])
    lines.append(f"{'class':<{width}}  precision  recall     f1  support")
    for c, v in m["per_class"].items():
        lines.append(f"{c:<{width}}  {v['precision']:9.3f}  {v['recall']:6.3f}  {v['f1']:5.3f}  {v['support']:7d}")
    lines.append("confusion matrix (rows: true, columns: predicted, order as above):")
    lines += ["  " + " ".join(f"{v:5d}" for v in row) for row in m["confusion_matrix"]]
    return "\n".join(lines)


def evaluate(model, store) -> dict:
    """Metrics of `model` (a Classifier) on the labelled rows of `store` (a FeatureStore).

    ``seen_in_training`` lists evaluation images identical to training images (leakage).
    """
    return predictions(model, store)[0]


def predictions(model, store) -> tuple[dict, np.ndarray, np.ndarray, list[dict]]:
    """(metrics, y_true, probabilities, rows) of `model` on the labelled rows of `store`."""
    keep, y, rows = store.labelled_rows()
    # the features the head reads: the store's own, or a layer beside it or a join (the default featurize pass);
    # any other spec is refused here, naming both (pipeline/heads/featuresets.py)
    chunks = head_chunks(model, store, keep)
    if len(y) == 0:
        raise ValueError(f"{store.root} has no labelled images to evaluate on")
    if bool(getattr(model, "multi_label", False)) != store.multi_label:
        kind = {True: "multi-label", False: "single-label"}
        raise UsageError(f"this head is {kind[bool(getattr(model, 'multi_label', False))]} but {store.root} is "
                         f"{kind[store.multi_label]}; evaluate on features labelled the way the head was trained")
    out = [model.predict_proba(x) for x in chunks]  # a chunk of features at a time
    proba = np.concatenate(out) if out else np.zeros((0, len(model.classes_)))
    if store.multi_label:
        from .multilabel import multilabel_metrics, tag_matrix

        classes = [str(c) for c in model.classes_]
        m = multilabel_metrics(tag_matrix(y, classes), proba, classes, model.thresholds_)
    else:
        m = classification_metrics(y, proba, model.classes_)
    trained = set(getattr(model, "train_hashes", []))
    m["seen_in_training"] = [r["path"] for r in rows if r["sha256"][:16] in trained]
    return m, y, proba, rows


def labelled_set(store, feature_set: str | None = None):
    """(X, y, rows) of the store's labelled rows, X from `feature_set` (one of the sets the store offers,
    pipeline/heads/featuresets.py) or the store's own layer."""
    X, y, rows = store.labelled(with_rows=True)
    if feature_set is not None:
        from ..heads.featuresets import feature_sets

        keep = store.labelled_rows()[0]
        X = next(s.features for s in feature_sets(store) if s.name == feature_set)[keep]
    return X, y, rows


def cross_validated(store, head: str, C: float, folds: int | str = 5, seed: int = 0, pca: int | None = None,
                    feature_set: str | None = None):
    """(metrics, y_true, out-of-fold probabilities, rows): how the head does on images it did not see.
    `feature_set`: one of the sets the store offers (pipeline/heads/featuresets.py) instead of its own layer;
    head 'zero_shot' scores the ImageNet class scores of that set with no training."""
    from .selection import cross_val_proba

    X, y, rows = labelled_set(store, feature_set)
    if head == "zero_shot":
        from scipy.special import softmax

        from .zeroshot import zero_shot_candidates

        proba = softmax(zero_shot_candidates({feature_set: X}, y)[feature_set][0], axis=1)
    else:
        proba = cross_val_proba(head, X, y, C, folds, seed, pca)
    return classification_metrics(y, proba, np.unique(y)), y, proba, rows


CLIP_CANDIDATES = (0.0, 0.001, 0.005, 0.01, 0.02, 0.03, 0.05, 0.1)


def clip_suggestion(y_true, proba: np.ndarray, classes, candidates=CLIP_CANDIDATES) -> dict:
    """Log loss of the probabilities clipped to [c, 1-c] (rows renormalised) for each c; the best c.

    Computed on cross-validated predictions, this is the bound to give ``score --clip``.
    """
    from sklearn import metrics as skm

    classes = [str(c) for c in classes]
    table = []
    for c in candidates:
        p = np.clip(proba, c, 1 - c) if c else proba
        p = p / p.sum(axis=1, keepdims=True)
        table.append((float(c), float(skm.log_loss(np.asarray(y_true, dtype=str), p, labels=classes))))
    best = min(table, key=lambda t: (round(t[1], 6), t[0]))[0]
    return {"best": best, "table": table}


def compare(stores, heads=("linear_svm", "logreg"), C: float | str = "auto", folds: int | str = 5, seed: int = 0,
            pca: int | None = None, progress: bool = True) -> list[dict]:
    """Cross-validated accuracy of each head on each feature store (paths or FeatureStores): one row per pair.

    C: 'auto' (chosen by CV per head and store), a number, or {head: C or 'auto'}.
    progress: a line on stderr as each (store, head) starts and ends.
    """
    from ..heads.kinds import get
    from ..progress import Steps
    from ..store import FeatureStore
    from .multilabel import refuse_multi_label
    from .selection import check_labels, cross_val_accuracy, select_C

    for head in heads:  # before any store is read
        get(head)
    out = []
    steps = Steps(len(stores) * len(heads), enabled=progress)
    cv = "leave-one-out" if folds == "loo" else f"{folds}-fold"
    for s in stores:
        store = s if isinstance(s, FeatureStore) else FeatureStore.open(s)
        refuse_multi_label(store, "compare")
        X, y = store.labelled()
        check_labels(y)
        for head in heads:
            c = C.get(head, "auto") if isinstance(C, dict) else C
            steps.start(f"{head} on {store.root} ({len(y)} images, D={X.shape[1]}): "
                        + (f"choosing C, then {cv} CV" if c == "auto" else f"{cv} CV"))
            if c == "auto":
                c = select_C(head, X, y, 5 if folds == "loo" else folds, seed, pca)[0]
            acc = cross_val_accuracy(head, X, y, c, folds, seed, pca)
            steps.done(f"{head} on {store.root}: accuracy {acc:.4f} (C={c:g})")
            spec = store.feature_spec
            out.append({"features": str(store.root), "backbone": spec.backbone, "layer": spec.layer or "",
                        "dim": pca or store.spec["dim"], "head": head, "C": c, "folds": folds, "pca": pca,
                        "accuracy": acc, "n": int(len(y))})
    return out
