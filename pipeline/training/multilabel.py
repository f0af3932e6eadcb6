"""Multi-label heads: several labels (tags) per image, one-vs-rest, a threshold per tag tuned by CV.

Labels come from a CSV column holding several tags separated by spaces or ``|`` (Kaggle Planet's
``tags``: ``"clear primary water"``). In a store, a row's label is its tags, sorted, joined by one
space, and ``meta.json`` records ``"multi_label": true`` (single-label stores are unchanged).

The head is StandardScaler (+ PCA) -> :class:`OneVsRest`: one binary head per tag, of a head kind with
a one-vs-rest form (``HeadKind.multi_label_ok`` in pipeline/heads/kinds.py: ``logreg`` or
``linear_svm``), so tag k has its own probability p_k = sigmoid(alpha_k * f_k) of its decision
value f_k, and is predicted when p_k >= its threshold t_k. Everything is tuned on out-of-fold
decision values (shuffled K-fold, seeded), one pass per C: for ``linear_svm`` alpha_k is the
temperature that fits the out-of-fold values best (as in pipeline/heads/calibration.py), for ``logreg``
alpha_k = 1 (its own probabilities); then the thresholds maximise micro-F1 on the out-of-fold
probabilities: from the best single threshold, each tag in turn takes the threshold best for the
micro-F1 of all tags, until none changes; a tag with fewer than MIN_POSITIVES images keeps the single
threshold. ``--C auto`` does this for every C of the grid and keeps the C with the best out-of-fold
micro-F1 at its tuned thresholds (ties: the best mean average precision, then the C nearest 0.1).
It used to keep the best mean average precision over the tags, pooled across folds: on 700 images x
119 rare class tags + 12 group tags (bench/train_speed.py) that ranked C backwards (C=10: 0.777, C=0.01:
0.696) while the held-out micro-F1 went the other way (0.376 against 0.585); the out-of-fold
micro-F1 ranks the Cs as the held-out images do.

A ``logreg`` head's binary regressions are fitted all at once (pipeline/training/ovrlogreg.py), in the
CV folds (pipeline/training/cpath.py) and in the final fit (:meth:`OneVsRest.fit`).
"""
from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np
from scipy.special import expit
from sklearn import metrics as skm
from sklearn.base import BaseEstimator, ClassifierMixin, clone
from sklearn.decomposition import PCA
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import KFold
from sklearn.pipeline import Pipeline
from sklearn.preprocessing import StandardScaler

from ..dataset.labels import normalise, split_tags, tags_of  # noqa: F401 (normalise: part of this API)
from ..errors import UsageError
from ..heads.classifier import label_sets
from ..heads.kinds import KINDS, check_head, multi_label_kind
from . import ovrlogreg
from .cpath import CVSettings, one_thread, oof_path, ovr_fold_path, row_space

log = logging.getLogger(__name__)

THRESHOLDS = np.round(np.arange(0.02, 0.981, 0.02), 2)  # candidates for the tuned thresholds
MIN_POSITIVES = 3  # tags with fewer out-of-fold positives use the single best threshold


# ---- tags ----------------------------------------------------------------------------------------
def tag_matrix(labels, classes) -> np.ndarray:
    """(N, K) booleans: image i has tag classes[k]. Tags outside `classes` are refused, by name."""
    index = {c: k for k, c in enumerate(classes)}
    Y = np.zeros((len(labels), len(classes)), dtype=bool)
    unknown = set()
    for i, v in enumerate(labels):
        for t in split_tags(v):
            if t in index:
                Y[i, index[t]] = True
            else:
                unknown.add(t)
    if unknown:
        raise UsageError(f"tags {', '.join(sorted(unknown)[:10])} are not classes of this head "
                         f"({', '.join(classes[:20])}); evaluate on features tagged with the head's classes")
    return Y


# ---- the estimator -------------------------------------------------------------------------------
class OneVsRest(ClassifierMixin, BaseEstimator):
    """One binary head per column of an indicator matrix Y; ``decision_function`` and ``predict_proba``
    are (N, K): p_k = sigmoid(alphas_[k] * f_k), rows need not sum to 1; ``predict`` is Y-shaped
    booleans (probability >= ``thresholds_``). alphas_ = 1 and thresholds_ = 0.5 until tuned.

    A column that is constant in the training rows (possible inside a CV fold) predicts that constant;
    such a fitted head cannot be saved. `head`: the name of the binary heads' kind (pipeline/heads/kinds.py).
    """

    def __init__(self, classes=(), head: str = "logreg", C: float = 1.0, class_weight=None):
        self.classes, self.head, self.C, self.class_weight = classes, head, C, class_weight

    def fit(self, X, Y):
        Y = np.asarray(Y, dtype=bool)
        self.classes_ = np.asarray(list(self.classes), dtype=object)
        if Y.ndim != 2 or Y.shape[1] != len(self.classes_):
            raise ValueError(f"Y must be (N, {len(self.classes_)}) booleans, got shape {Y.shape}")
        varies = Y.any(0) & ~Y.all(0)
        self.estimators_ = [bool(col[0]) for col in Y.T]  # a tag constant in these rows predicts that constant
        if KINDS[self.head].estimator is LogisticRegression:
            for k, est in zip(np.flatnonzero(varies), self._joint_logregs(X, Y[:, varies])):
                self.estimators_[k] = est
        else:
            for k in np.flatnonzero(varies):
                binary = KINDS[self.head].make(self.C, self.class_weight)
                self.estimators_[k] = clone(binary).fit(X, Y[:, k].astype(int))
        self.alphas_ = np.ones(len(self.classes_))
        self.thresholds_ = np.full(len(self.classes_), 0.5)
        self.n_features_in_ = X.shape[1]
        return self

    def _joint_logregs(self, X, Y) -> list:
        """The LogisticRegression of each column of Y, all fitted as one problem (pipeline/training/ovrlogreg.py)
        on the orthonormal basis of the span of X's rows, their weights mapped back to X's columns."""
        X = np.asarray(X)
        if X.shape[0] <= X.shape[1]:
            Z, M = ovrlogreg.span(X)
            W, steps = ovrlogreg.fit(Z.astype(X.dtype), Y, self.C, class_weight=self.class_weight)
            coef = (X.T.astype(np.float64) @ (M @ W[:-1])).T
        else:
            V = row_space(X)
            W, steps = ovrlogreg.fit(X @ V, Y, self.C, class_weight=self.class_weight)
            coef = (V @ W[:-1].astype(V.dtype)).T.astype(np.float64)
        out = []
        for k in range(Y.shape[1]):
            est = KINDS[self.head].make(self.C, self.class_weight)
            est.coef_, est.intercept_, est.classes_ = coef[k:k + 1], W[-1, k:k + 1].copy(), np.array([0, 1])
            est.n_features_in_, est.n_iter_ = X.shape[1], np.array([steps], dtype=np.int32)
            out.append(est)
        return out

    def decision_function(self, X) -> np.ndarray:
        """(N, K) decision values; a tag constant in the training rows gets +-50 (probability ~1 or ~0)."""
        fitted = [k for k, e in enumerate(self.estimators_) if not isinstance(e, bool)]
        F = np.array([[50.0 if e else -50.0 for e in self.estimators_]]).repeat(len(X), 0)
        if fitted and all(hasattr(self.estimators_[k], "coef_") for k in fitted):  # linear: one product
            coef = np.vstack([np.ravel(self.estimators_[k].coef_) for k in fitted])
            intercept = np.array([np.ravel(self.estimators_[k].intercept_)[0] for k in fitted])
            F[:, fitted] = np.asarray(X, dtype=np.float64) @ coef.T + intercept
        else:
            for k in fitted:
                F[:, k] = self.estimators_[k].decision_function(X)
        return F

    def predict_proba(self, X) -> np.ndarray:
        return expit(self.alphas_[None, :] * self.decision_function(X))

    def predict(self, X) -> np.ndarray:
        return self.predict_proba(X) >= self.thresholds_[None, :]


def make_multilabel(classes, head: str = "logreg", C: float = 1.0, pca: int | None = None,
                    class_weight=None) -> Pipeline:
    """An unfitted StandardScaler (+ PCA) + OneVsRest pipeline over the tags `classes`; `head` must be a kind
    with a one-vs-rest form (``HeadKind.multi_label_ok``)."""
    multi_label_kind(head)
    steps = [("scale", StandardScaler())]
    if pca:
        steps.append(("pca", PCA(n_components=int(pca), random_state=0)))
    return Pipeline(steps + [("clf", OneVsRest(list(classes), head, float(C), class_weight))])


# ---- cross-validation, C and thresholds ------------------------------------------------------------
def out_of_fold(head, X, Y, classes, C, folds: int = 5, seed: int = 0, pca=None, class_weight=None) -> np.ndarray:
    """(N, K) out-of-fold decision values of the head with C (shuffled K-fold, seeded)."""
    F = np.zeros(Y.shape)
    for tr, te in KFold(n_folds(folds, len(X)), shuffle=True, random_state=seed).split(X):
        model = make_multilabel(classes, head, C, pca, class_weight).fit(X[tr], Y[tr])
        F[te] = model.decision_function(X[te])
    return F


def n_folds(folds, n: int) -> int:
    return int(min(5 if folds == "loo" else int(folds), n))


def fit_alphas(head: str, Y, F) -> np.ndarray:
    """Per tag: 1 for heads with their own probabilities (logreg), else the temperature fitted on decision values F."""
    from ..heads.calibration import fit_alpha

    if not KINDS[head].needs_calibration:
        return np.ones(Y.shape[1])
    return np.array([fit_alpha(F[:, k], Y[:, k].astype(int), 2) if 0 < Y[:, k].sum() < len(Y) else 1.0
                     for k in range(Y.shape[1])])


def average_precisions(Y, F) -> np.ndarray:
    """Per column of F: scikit-learn's ``average_precision_score`` of the column of Y (booleans), all columns at
    once; NaN for a column without positives. Equal scores are one threshold, as there: each positive counts
    the precision at the last row of its run of ties, in decreasing score order."""
    Y, F = np.asarray(Y, dtype=bool), np.asarray(F, dtype=np.float64)
    order = np.argsort(-F, axis=0, kind="stable")
    s, t = np.take_along_axis(F, order, 0), np.take_along_axis(Y, order, 0)
    n = len(F)
    precision = np.cumsum(t, 0) / np.arange(1, n + 1)[:, None]
    ends = np.ones(s.shape, dtype=bool)
    ends[:-1] = s[1:] != s[:-1]  # the last row of each run of ties
    last = np.minimum.accumulate(np.where(ends, np.arange(n)[:, None], n)[::-1], axis=0)[::-1]
    positives = t.sum(0)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(positives > 0, (t * np.take_along_axis(precision, last, 0)).sum(0) / positives, np.nan)


def mean_ap(Y, F) -> float:
    """Mean over the tags (with positives) of their average precision."""
    return float(np.nanmean(average_precisions(Y, F)))


def micro_f1(Y, P, thresholds) -> float:
    return float(skm.f1_score(Y, P >= np.asarray(thresholds)[None, :], average="micro", zero_division=0))


def tune_thresholds(Y, P, candidates=THRESHOLDS, min_positives: int = MIN_POSITIVES,
                    passes: int = 5) -> tuple[np.ndarray, float]:
    """(per-tag thresholds, the best single threshold), both maximising micro-F1 on (Y, P).

    Starting from the best single threshold, each tag in turn takes the threshold that maximises
    the micro-F1 of all tags with the others held (the middle of a run of ties), until nothing
    changes; tags with fewer than `min_positives` positives keep the single threshold.
    """
    Y, P, cand = np.asarray(Y, dtype=bool), np.asarray(P), np.asarray(candidates)
    hits = [P[:, k, None] >= cand[None, :] for k in range(Y.shape[1])]  # per tag (N, T): memory N x T
    tp = np.array([(h & Y[:, k, None]).sum(0) for k, h in enumerate(hits)])  # (K, T) counts at each candidate
    fp = np.array([(h & ~Y[:, k, None]).sum(0) for k, h in enumerate(hits)])
    fn = Y.sum(0)[:, None] - tp

    def f1(tp_, fp_, fn_):
        return np.divide(2 * tp_, 2 * tp_ + fp_ + fn_, out=np.zeros(np.shape(tp_), float), where=2 * tp_ + fp_ + fn_ > 0)

    s = int(np.searchsorted(cand, _best(f1(tp.sum(0), fp.sum(0), fn.sum(0)), cand)))
    at = np.full(Y.shape[1], s)
    tunable = np.flatnonzero(Y.sum(0) >= min_positives)
    for _ in range(passes):
        before = at.copy()
        for k in tunable:
            rows = np.arange(len(at))
            others = [v[rows, at].sum() - v[k, at[k]] for v in (tp, fp, fn)]
            at[k] = np.searchsorted(cand, _best(f1(others[0] + tp[k], others[1] + fp[k], others[2] + fn[k]), cand))
        if np.array_equal(at, before):
            break
    return cand[at].astype(float), float(cand[s])


def _best(scores: np.ndarray, candidates) -> float:
    tied = np.flatnonzero(scores >= scores.max() - 1e-12)
    return float(candidates[tied[len(tied) // 2]])


def multilabel_metrics(Y, P, classes, thresholds) -> dict:
    """micro/macro F1, precision, recall at `thresholds`; per-tag AP, F1 and threshold; micro F1 at 0.5."""
    Y, P = np.asarray(Y, dtype=bool), np.asarray(P, dtype=float)
    classes, t = [str(c) for c in classes], np.asarray(thresholds, dtype=float)
    pred = P >= t[None, :]
    p, r, f, s = skm.precision_recall_fscore_support(Y, pred, average=None, zero_division=0)
    ap = [None if np.isnan(a) else float(a) for a in average_precisions(Y, P)]
    scored = [a for a in ap if a is not None]
    return {
        "multi_label": True, "n": int(len(Y)), "classes": classes,
        "micro_f1": micro_f1(Y, P, t), "macro_f1": float(skm.f1_score(Y, pred, average="macro", zero_division=0)),
        "micro_precision": float(skm.precision_score(Y, pred, average="micro", zero_division=0)),
        "micro_recall": float(skm.recall_score(Y, pred, average="micro", zero_division=0)),
        "subset_accuracy": float(np.mean(np.all(pred == Y, axis=1))),
        "micro_f1_at_0.5": micro_f1(Y, P, np.full(len(classes), 0.5)),
        "mean_average_precision": float(np.mean(scored)) if scored else None,
        "per_class": {c: {"average_precision": ap[k], "threshold": float(t[k]), "precision": float(p[k]),
                          "recall": float(r[k]), "f1": float(f[k]), "support": int(s[k])}
                      for k, c in enumerate(classes)},
    }


def refuse_multi_label(store, command: str) -> None:
    """`command` treats each label as one class: refuse a multi-label store, saying what to use."""
    if store.multi_label:
        raise UsageError(f"{command} works on single-label stores, and {store.root} is multi-label (tags); "
                         f"use train (one-vs-rest heads, thresholds per tag) and evaluate")


def format_multilabel(m: dict) -> str:
    """The metrics of :func:`multilabel_metrics` as a short table."""
    map_ = m.get("mean_average_precision")
    lines = [f"n={m['n']}  micro-F1 {m['micro_f1']:.4f}  macro-F1 {m['macro_f1']:.4f}  micro precision "
             f"{m['micro_precision']:.4f}  micro recall {m['micro_recall']:.4f}  subset accuracy "
             f"{m['subset_accuracy']:.4f}  (micro-F1 at 0.5: {m['micro_f1_at_0.5']:.4f})"
             + (f"  mean AP {map_:.4f}" if map_ is not None else "")]
    if m.get("seen_in_training"):
        lines.append(f"warning: {len(m['seen_in_training'])} of these images were in the training set "
                     f"(identical content), e.g. {m['seen_in_training'][0]}: these figures are optimistic")
    width = max(len("tag"), *(len(c) for c in m["classes"]))
    lines.append(f"{'tag':<{width}}     AP  threshold  precision  recall     f1  support")
    for c, v in m["per_class"].items():
        ap = f"{v['average_precision']:.3f}" if v["average_precision"] is not None else "    -"
        lines.append(f"{c:<{width}}  {ap}  {v['threshold']:9.2f}  {v['precision']:9.3f}  {v['recall']:6.3f}  "
                     f"{v['f1']:5.3f}  {v['support']:7d}")
    return "\n".join(lines)


# ---- training ---------------------------------------------------------------------------------------
def fit_multilabel(head: str, X, y, C: float | str = "auto", cv: CVSettings = CVSettings(), progress=None):
    """Fit one-vs-rest heads on the tags of `y` (stored label strings); return (fitted pipeline, metrics).

    C: a number, or 'auto' (the grid of `head`, by the micro-F1 of out-of-fold probabilities at thresholds tuned
    on them, on `cv`'s folds; they run in parallel (`cv.n_jobs`) and each fits the grid warm-started along C, see
    pipeline/training/cpath.py). alphas and thresholds are tuned on the out-of-fold values of the chosen C.
    `progress(k)`: called as fold k finishes.
    """
    X = np.asarray(X, dtype=np.float32)
    folds, seed, pca, class_weight = cv.folds, cv.seed, cv.pca, cv.class_weight
    classes = tags_of(y)
    Y = tag_matrix(y, classes)
    _check(head, Y, classes, X, pca, class_weight)
    metrics = {"head": head, "multi_label": True, "n_train": int(len(Y)), "pca": pca, "class_weight": class_weight,
               "class_counts": {c: int(n) for c, n in zip(classes, Y.sum(0))},
               "cv_folds": n_folds(folds, len(X))}
    splits = KFold(n_folds(folds, len(X)), shuffle=True, random_state=seed).split(X)
    grid = KINDS[head].c_grid if C == "auto" else (float(C),)
    paths = oof_path(head, X, Y, grid, splits, cv, progress, ovr_fold_path)
    tuned = {c: _tuned(head, Y, F) for c, F in zip(grid, paths)}
    if C == "auto":
        C = max(tuned, key=lambda c: (round(tuned[c].micro_f1, 9), round(tuned[c].mean_ap, 9),
                                      -abs(np.log10(c) - np.log10(0.1))))
        metrics["cv_scores"] = {str(k): v.mean_ap for k, v in tuned.items()}
        metrics["cv_micro_f1"] = {str(k): v.micro_f1 for k, v in tuned.items()}
        log.info("%s: C=%g chosen by %d-fold CV (micro-F1 %.4f with the thresholds tuned on the folds, mean "
                 "average precision %.4f)", head, C, metrics["cv_folds"], tuned[C].micro_f1, tuned[C].mean_ap)
    C = float(C)
    alphas, P, thresholds, single = (getattr(tuned[C], k) for k in ("alphas", "P", "thresholds", "single"))
    with one_thread():  # see pipeline/training/cpath.py
        model = make_multilabel(classes, head, float(C), pca, class_weight).fit(X, Y)
    model.named_steps["clf"].alphas_, model.named_steps["clf"].thresholds_ = alphas, thresholds
    cv = multilabel_metrics(Y, P, classes, thresholds)
    metrics.update(C=float(C), thresholds={c: float(t) for c, t in zip(classes, thresholds)},
                   single_threshold=single, unvalidated_classes=[c for c, n in zip(classes, Y.sum(0))
                                                                 if n < MIN_POSITIVES],
                   cv={k: cv[k] for k in ("micro_f1", "macro_f1", "micro_f1_at_0.5", "mean_average_precision")}
                   | {"micro_f1_single_threshold": micro_f1(Y, P, np.full(len(classes), single))},
                   calibration=(f"temperature scaling per tag (sigmoid(alpha_k f_k), alpha_k fitted on "
                                f"{metrics['cv_folds']}-fold cross-validated decision values)"
                                if KINDS[head].needs_calibration
                                else f"{KINDS[head].estimator.__name__}'s own probabilities, one per tag"))
    metrics["train_micro_f1"] = micro_f1(Y, model.predict_proba(X), thresholds)
    return model, metrics


@dataclass
class _Tuned:
    """One C's out-of-fold decision values F, their alphas and probabilities P, the thresholds tuned on them (and
    the best single one), and the micro-F1 and mean average precision they give."""

    F: np.ndarray
    alphas: np.ndarray
    P: np.ndarray
    thresholds: np.ndarray
    single: float
    micro_f1: float
    mean_ap: float


def _tuned(head: str, Y, F) -> _Tuned:
    alphas = fit_alphas(head, Y, F)
    P = expit(alphas[None, :] * F)
    thresholds, single = tune_thresholds(Y, P)
    return _Tuned(F, alphas, P, thresholds, single, micro_f1(Y, P, thresholds), mean_ap(Y, F))


def _check(head, Y, classes, X, pca, class_weight) -> None:
    check_head(head, class_weight)
    multi_label_kind(head)  # refuses heads without a multi-label form
    if len(classes) < 2:
        raise UsageError(f"multi-label training needs at least 2 tags, found {classes or 'none'}")
    everywhere = [c for c, col in zip(classes, Y.T) if col.all()]
    if everywhere:
        raise UsageError(f"tags {', '.join(everywhere)} are on every image, so there is nothing to learn about "
                         f"them; drop them from the labels CSV")
    if len(Y) < 4:
        raise UsageError(f"multi-label training needs at least 4 labelled images, found {len(Y)}")
    if pca and pca >= min(X.shape):
        raise UsageError(f"pca={pca} must be below the number of images ({len(X)}) and of features ({X.shape[1]})")


def validate(model, X, y, classes, rows_train, rows_valid) -> dict:
    """Metrics of the fitted head on held-out rows; tags unseen in training are left out."""
    from ..dataset.splits import leaked

    known = set(classes)
    y = [" ".join(t for t in split_tags(v) if t in known) for v in y]
    m = multilabel_metrics(tag_matrix(y, classes), model.predict_proba(X), classes,
                           model.named_steps["clf"].thresholds_)
    pairs = leaked(rows_train, rows_valid)
    m["leakage"] = [{"train": t, "validation": v} for t, v in pairs]
    return m


def summary(clf, path) -> str:
    """What `train` prints for a multi-label head."""
    m = clf.metrics
    cv = m["cv"]
    lines = [f"{m['head']} C={m['C']:g} on {m['n_train']} images, {len(clf.classes_)} tags (one-vs-rest) -> {path}",
             f"{m['cv_folds']}-fold CV micro-F1 {cv['micro_f1']:.4f} with the tuned thresholds (tuned on these "
             f"folds: optimistic), {cv['micro_f1_single_threshold']:.4f} at the best single threshold "
             f"{m['single_threshold']:.2f}, {cv['micro_f1_at_0.5']:.4f} at 0.5; mean AP "
             f"{cv['mean_average_precision']:.4f}",
             f"probabilities: {m['calibration']}",
             "thresholds: " + ", ".join(f"{c} {t:.2f}" for c, t in list(m["thresholds"].items())[:30])
             + (" ..." if len(m["thresholds"]) > 30 else "")]
    if m.get("unvalidated_classes"):
        lines.append(f"{len(m['unvalidated_classes'])} tags have fewer than {MIN_POSITIVES} images: they use the "
                     f"single threshold: {', '.join(m['unvalidated_classes'][:20])}")
    return "\n".join(lines)


def cross_validated(store, head: str, C: float, folds: int | str = 5, seed: int = 0, pca: int | None = None):
    """(metrics, Y, out-of-fold probabilities, rows) of a multi-label store, thresholds tuned on them."""
    X, y, rows = store.labelled(with_rows=True)
    classes = tags_of(y)
    Y = tag_matrix(y, classes)
    F = out_of_fold(head, X, Y, classes, C, folds, seed, pca)
    P = expit(fit_alphas(head, Y, F)[None, :] * F)
    return multilabel_metrics(Y, P, classes, tune_thresholds(Y, P)[0]), Y, P, rows


def write_label_sets(out, paths, proba, classes, thresholds) -> None:
    """CSV ``path,labels,<one probability column per tag>``; labels: the predicted tags, space-separated."""
    from ..outputs import atomic_open, csv_writer

    with atomic_open(out, newline="") as f:
        w = csv_writer(f)
        w.writerow(["path", "labels", *[str(c) for c in classes]])
        for p, tags, row in zip(paths, label_sets(proba, classes, thresholds), proba):
            w.writerow([p, " ".join(tags), *(f"{v:.6f}" for v in row)])
