"""Many binary logistic regressions on the same rows, fitted as one problem: a multi-label logreg head.

A multi-label ``logreg`` head (pipeline/training/multilabel.py) is one binary
``LogisticRegression(C, class_weight)`` per tag, all on the same rows. Fitted one by one, 131 tags x
5 folds x 5 values of C are 3,275 small fits whose time goes to per-fit and per-iteration overhead
(input checks, label encoding, one matrix-vector product per L-BFGS step), holding the GIL, so folds in
threads do not run in parallel. Their objectives are independent, so their sum is minimised by the same
weights; ``fit`` minimises that sum with ``scipy.optimize.minimize(method="L-BFGS-B")``, as
scikit-learn's lbfgs solver does for one tag, with one matrix-matrix product for every tag per step:

- the objective per tag is scikit-learn's: mean_i s_i logloss(y_i, z_i w + b) + ||w||^2 / (2 C sum_i s_i)
  (s_i: the class weights, 1 or 'balanced'; the intercept is not penalised);
- it stops when every tag's gradient is at most `tol` in absolute value (scikit-learn's ``gtol``), or
  after `max_iter` steps;
- the variables are scaled by the inverse square root of the Hessian's diagonal at the starting point
  (per tag and column: the column's squared values weighted by p(1-p)); on the orthonormal basis of the
  rows' span (pipeline/training/cpath.py ``row_space``: orthogonal columns) the Hessian is nearly
  diagonal, so the scaled problem is well conditioned and L-BFGS needs few steps;
- ``path`` fits a grid of C in increasing order, each warm-started from the previous solution.
"""
from __future__ import annotations

import numpy as np
from scipy import optimize
from scipy.special import expit


def sample_weights(T: np.ndarray, class_weight: str | None) -> np.ndarray:
    """(N, K) weights of each row in each tag's problem: 1, or scikit-learn's 'balanced' N / (2 n_class)."""
    T = np.asarray(T, dtype=bool)
    if class_weight is None:
        return np.ones(T.shape)
    if class_weight != "balanced":
        raise ValueError(f"class_weight must be None or 'balanced', got {class_weight!r}")
    n, pos = len(T), T.sum(0)
    return np.where(T, n / (2.0 * np.maximum(pos, 1)), n / (2.0 * np.maximum(n - pos, 1)))


def _loss_grad(Z, T, S, lam, n_weight):
    """f(W) and its gradient for W: (r + 1, K) (last row: intercepts), summed over the K tags."""

    def fg(W):
        F = Z @ W[:-1].astype(Z.dtype, copy=False) + W[-1]
        F = F.astype(np.float64, copy=False)
        e = np.exp(-np.abs(F))
        loss = np.sum(S * (np.log1p(e) + np.maximum(F, 0) - T * F)) / n_weight
        G = S * (np.where(F >= 0, 1.0, e) / (1.0 + e) - T) / n_weight  # weighted (p - t) / sum(s)
        grad = np.vstack([Z.T @ G.astype(Z.dtype, copy=False) + lam * W[:-1], G.sum(0)[None, :]])
        return loss + 0.5 * lam * np.sum(W[:-1] ** 2), grad

    return fg


def fit(Z, T, C: float, start=None, class_weight: str | None = None, tol: float = 1e-4,
        max_iter: int = 5000, S=None) -> tuple[np.ndarray, int]:
    """(W, steps): W (r + 1, K) the weights (rows of Z's columns) and intercepts (last row) of the K binary
    logistic regressions of T's columns (booleans, each with both values) on the rows Z (N, r), at `C`."""
    T = np.asarray(T, dtype=np.float64)
    S = sample_weights(T, class_weight) if S is None else S
    n_weight = float(S[:, 0].sum())  # the same for every tag: N (weights 1 or 'balanced')
    lam = 1.0 / (float(C) * n_weight)
    if start is None:  # no weights, the intercepts at the tags' log-odds: the optimum of intercepts alone
        W0 = np.zeros((Z.shape[1] + 1, T.shape[1]))
        rate = np.clip((S * T).sum(0) / S.sum(0), 1e-9, 1 - 1e-9)
        W0[-1] = np.log(rate / (1 - rate))
    else:
        W0 = np.array(start, dtype=np.float64)
    P = expit(np.asarray(Z @ W0[:-1].astype(Z.dtype), dtype=np.float64) + W0[-1])
    H = S * P * (1 - P) / n_weight
    diag = np.vstack([np.asarray((Z.astype(np.float64) ** 2).T @ H) + lam, H.sum(0)[None, :]])
    q = 1.0 / np.sqrt(np.maximum(diag, 1e-12))  # W = q * V: V's Hessian has a unit diagonal at the start
    fg = _loss_grad(Z, T, S, lam, n_weight)

    def scaled(v):
        loss, grad = fg(q * v.reshape(q.shape))
        return loss, (q * grad).ravel()

    # |gradient in W| = |gradient in V| / q: stopping at tol * min(q) in V guarantees tol in W
    res = optimize.minimize(scaled, (W0 / q).ravel(), jac=True, method="L-BFGS-B",
                            options={"maxiter": max_iter, "maxls": 50, "gtol": tol * float(q.min()),
                                     "ftol": 64 * np.finfo(float).eps})
    return q * res.x.reshape(q.shape), int(res.nit)


def path(Z, T, grid, class_weight: str | None = None, tol: float = 1e-4, max_iter: int = 5000) -> list:
    """``fit`` at each C of `grid` (returned in grid order), in increasing C, each warm-started from the last."""
    S = sample_weights(T, class_weight)
    out, W = [None] * len(grid), None
    for i in np.argsort(grid):
        W, _ = fit(Z, T, grid[i], W, class_weight, tol, max_iter, S)
        out[i] = W
    return out


def span(A, tolerance: float = 1e-7) -> tuple[np.ndarray, np.ndarray]:
    """(Z, M) for rows A (N, D) with N <= D: Z (N, r) the rows on an orthonormal basis V (D, r) of their span
    (orthogonal columns, as ``cpath.row_space``), and M (N, r) with V = A.T @ M, so that other rows B are
    ``(B @ A.T) @ M`` there and weights w on that basis are ``A.T @ (M @ w)`` on A's columns. From the
    eigenvectors of the N x N Gram matrix A A^T, a third of the time of A's SVD at 560 x 1280; directions
    whose singular value is below `tolerance` times the largest are left out."""
    A64 = np.asarray(A, dtype=np.float64)
    w, U = np.linalg.eigh(A64 @ A64.T)
    keep = w > max(w[-1], 0) * tolerance ** 2
    root = np.sqrt(w[keep])
    return U[:, keep] * root, U[:, keep] / root


def decisions(W: np.ndarray, B) -> np.ndarray:
    """(M, K) decision values of the rows B (M, r) under W (r + 1, K)."""
    return np.asarray(B @ W[:-1].astype(B.dtype, copy=False), dtype=np.float64) + W[-1]
