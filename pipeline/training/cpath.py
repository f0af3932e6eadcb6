"""Cross-validated decision values along a C grid, fast: one pass per fold, warm-started from C to C.

``oof_path(kind, X, y, grid, splits)`` returns, for every C of ``grid``, the out-of-fold decision
values of StandardScaler + the kind's classifier (rows no fold validates stay NaN). It is the work
of ``GridSearchCV(make_head(kind), {"clf__C": grid}, cv=splits)`` done with what scikit-learn offers
to make it cheap:

- **Warm starts along the C path** (kinds whose classifier has ``warm_start``: LogisticRegression):
  within a fold the C values are fitted in increasing order, each starting from the previous solution
  (the path ``LogisticRegressionCV`` follows).
- **The row space**: an L2-penalised linear model's weights lie in the span of its training rows
  (representer theorem; liblinear's penalised intercept column does not change this, as its weights
  are sum_i a_i [x_i, 1]), so each fold fits on the standardised training rows expressed in an
  orthonormal basis of their span, ``Z = X_s V`` (``V`` from ``numpy.linalg.svd``): n_train columns
  instead of D when n_train < D, the same decision values for every row, validated or not, since the
  part of a row outside the span meets zero weight. RBF kernels depend on distances outside the span,
  so the RBF SVM fits on the standardised rows as they are.
- **Folds in parallel**: ``joblib.Parallel(n_jobs, prefer="threads")`` over the folds (``n_jobs=None``:
  one per core, at most one per fold), BLAS limited to one thread meanwhile (``threadpoolctl``;
  ``one_thread``). Threads, not processes: the fits release the GIL in BLAS and Cython, and on a busy
  2-core machine starting worker processes cost 50 s of a 68 s selection (threads: 15.5 s; one thread
  in turn: 17.5 s).

The caller (pipeline/training/search.py) scores accuracy from these values, reuses the chosen C's values
to fit the SVMs' temperature (pipeline/heads/calibration.py) instead of refitting calibration folds,
and refits the chosen C once on every row.
"""
from __future__ import annotations

import warnings
from dataclasses import dataclass

import numpy as np
from joblib import Parallel, delayed
from sklearn.decomposition import PCA
from sklearn.exceptions import ConvergenceWarning
from sklearn.linear_model import LogisticRegression
from sklearn.preprocessing import StandardScaler
from threadpoolctl import threadpool_limits

from ..heads.kinds import KINDS
from ..machine import usable_cores
from . import ovrlogreg

SPAN_TOLERANCE = 1e-7  # singular values below this fraction of the largest are outside the rows' span


def one_thread():
    """BLAS and OpenMP limited to one thread in this block: the folds are the parallelism. (On a busy machine
    OpenBLAS's spinning threads made one fold's fits 12x slower: 242 s against 20 s.)"""
    return threadpool_limits(limits=1)


def row_space(A: np.ndarray) -> np.ndarray:
    """(D, r) orthonormal basis of the span of the rows of A (r <= min(N, D))."""
    _, s, vt = np.linalg.svd(A, full_matrices=False)
    keep = s > (s[0] if len(s) else 0) * SPAN_TOLERANCE
    return vt[keep].T


def _fold_space(head: str, X, train, test, pca: int | None, project: bool | None):
    """The fold's standardised (+ PCA, or span-projected) training and test rows."""
    scaler = StandardScaler().fit(X[train])
    A, B = scaler.transform(X[train]), scaler.transform(X[test])
    if pca:
        reducer = PCA(n_components=int(pca), random_state=0).fit(A)
        return reducer.transform(A), reducer.transform(B)
    if ((KINDS[head].scorer == "linear") if project is None else project) and A.shape[0] < A.shape[1]:
        V = row_space(A)
        return A @ V, B @ V
    return A, B


def _path(clf, A, target, B, grid) -> list:
    """Decision values on B for each C of grid (grid order), fitted in increasing C, warm-started."""
    warm = "warm_start" in clf.get_params()
    out = [None] * len(grid)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        for i in np.argsort(grid):
            clf.set_params(C=float(grid[i]), **({"warm_start": True} if warm else {}))
            out[i] = clf.fit(A, target).decision_function(B)
    return out


def fold_path(head: str, X, y, train, test, grid, class_weight=None, project: bool | None = None,
              pca: int | None = None) -> list:
    """Decision values on X[test] for each C of `grid` (in grid order), fitted on X[train], warm-started."""
    A, B = _fold_space(head, X, train, test, pca, project)
    return _path(KINDS[head].make(grid[0], class_weight), A, y[train], B, grid)


def ovr_fold_path(head: str, X, Y, train, test, grid, class_weight=None, project: bool | None = None,
                  pca: int | None = None) -> list:
    """Multi-label (Y: (N, K) booleans): per C, (n_test, K) decision values of one binary head per tag, each
    warm-started along C; a tag constant in the training rows gets +-50 (as OneVsRest does)."""
    if KINDS[head].estimator is LogisticRegression:
        return _joint_logreg_path(X, Y, train, test, grid, class_weight, pca)
    A, B = _fold_space(head, X, train, test, pca, project)
    cols = []
    for k in range(Y.shape[1]):
        t = Y[train, k]
        if t.all() or not t.any():
            cols.append([np.full(len(test), 50.0 if t[0] else -50.0)] * len(grid))
        else:
            cols.append(_path(KINDS[head].make(grid[0], class_weight), A, t.astype(int), B, grid))
    return [np.column_stack([c[i] for c in cols]) for i in range(len(grid))]


def _joint_logreg_path(X, Y, train, test, grid, class_weight, pca) -> list:
    """``ovr_fold_path`` for logistic regression: every tag at once (pipeline/training/ovrlogreg.py) on the
    orthonormal basis of the span of the fold's standardised (+ PCA) training rows."""
    A, B = _fold_space("logreg", X, train, test, pca, project=False)
    if A.shape[0] <= A.shape[1]:
        Z, M = ovrlogreg.span(A, SPAN_TOLERANCE)
        B = (B.astype(np.float64) @ A.T.astype(np.float64)) @ M
    else:
        V = row_space(A)
        Z, B = A @ V, B @ V
    T = Y[train]
    fitted = np.flatnonzero(T.any(0) & ~T.all(0))
    out = [np.where(T[0], 50.0, -50.0)[None, :].repeat(len(test), 0) for _ in grid]
    if len(fitted):
        for F, W in zip(out, ovrlogreg.path(Z.astype(A.dtype), T[:, fitted], list(grid), class_weight)):
            F[:, fitted] = ovrlogreg.decisions(W, B)
    return out


def n_workers(n_jobs: int | None, n_folds: int) -> int:
    """Processes for `n_folds` folds: `n_jobs`, or one per core; at most one per fold."""
    cores = usable_cores()
    return max(1, min(n_folds, cores if n_jobs in (None, 0) else (cores if n_jobs < 0 else n_jobs)))


@dataclass(frozen=True)
class CVSettings:
    """How heads are cross-validated: `folds` (a number, or 'loo') shuffled by `seed`, the class weights
    and PCA of every fit, and `n_jobs` folds at once (None: one per core)."""

    folds: int | str = 5
    seed: int = 0
    class_weight: str | None = None
    pca: int | None = None
    n_jobs: int | None = None

    @classmethod
    def of(cls, options, n_jobs: int | None = None) -> "CVSettings":
        """The settings of a HeadOptions (pipeline/options.py) or a FeatureHead."""
        return cls(options.folds, options.seed, options.class_weight, options.pca, n_jobs)


def oof_path(head: str, X, y, grid, splits, cv: CVSettings = CVSettings(), progress=None, fold=fold_path) -> list:
    """For each C of `grid`: (N,) or (N, K) out-of-fold decision values (NaN where no fold validates).

    `splits`: (train, test) index pairs (`cv`'s folds and seed are not used: the splits are given);
    `progress(k)`: called as fold k (1-based) finishes. `fold`:
    ``fold_path`` (y: labels) or ``ovr_fold_path`` (y: an (N, K) indicator matrix of tags).
    """
    X, y = np.asarray(X, dtype=np.float32), np.asarray(y)
    splits = list(splits)
    jobs = (delayed(fold)(head, X, y, tr, te, list(grid), cv.class_weight, None, cv.pca) for tr, te in splits)
    results = []
    par = Parallel(n_jobs=n_workers(cv.n_jobs, len(splits)), return_as="generator", prefer="threads")
    with one_thread():  # for every thread of this process: the folds are the parallelism
        for k, res in enumerate(par(jobs), 1):
            results.append(res)
            if progress is not None:
                progress(k)
    out = []
    for c in range(len(grid)):
        first = results[0][c]
        F = np.full((len(y),) + first.shape[1:], np.nan)
        for (_, te), res in zip(splits, results):
            F[te] = res[c]
        out.append(F)
    return out
