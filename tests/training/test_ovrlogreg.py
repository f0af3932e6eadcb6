"""Every tag's logistic regression fitted as one problem gives what scikit-learn gives for each tag alone."""
from __future__ import annotations

import numpy as np
import pytest
from sklearn.linear_model import LogisticRegression
from sklearn.utils.class_weight import compute_class_weight

from pipeline.training import ovrlogreg


def tagged(n=80, d=10, k=4, seed=0):
    rng = np.random.default_rng(seed)
    Z = rng.normal(size=(n, d))
    T = (Z[:, :k] + rng.normal(scale=1.5, size=(n, k)) > np.linspace(0.2, 1.6, k)).astype(bool)
    return Z, T


@pytest.mark.parametrize("class_weight", [None, "balanced"])
@pytest.mark.parametrize("C", [0.01, 1.0, 100.0])
def test_the_joint_fit_gives_each_tags_own_logistic_regression(C, class_weight):
    Z, T = tagged()
    W, _ = ovrlogreg.fit(Z, T, C, class_weight=class_weight, tol=1e-10)
    for k in range(T.shape[1]):
        alone = LogisticRegression(C=C, class_weight=class_weight, tol=1e-10, max_iter=10000).fit(Z, T[:, k])
        np.testing.assert_allclose(W[:-1, k], alone.coef_[0], atol=1e-4 * max(1, np.abs(alone.coef_).max()))
        np.testing.assert_allclose(W[-1, k], alone.intercept_[0], atol=1e-4 * max(1, abs(alone.intercept_[0])))


def test_the_path_is_in_grid_order_and_each_c_is_its_own_fit():
    Z, T = tagged(seed=1)
    grid = [10.0, 0.01, 1.0]
    for C, W in zip(grid, ovrlogreg.path(Z, T, grid, tol=1e-10)):
        alone, _ = ovrlogreg.fit(Z, T, C, tol=1e-10)
        np.testing.assert_allclose(ovrlogreg.decisions(W, Z), ovrlogreg.decisions(alone, Z), atol=1e-4)


def test_balanced_weights_are_scikit_learns():
    _, T = tagged()
    S = ovrlogreg.sample_weights(T, "balanced")
    for k in range(T.shape[1]):
        w = compute_class_weight("balanced", classes=np.array([False, True]), y=T[:, k])
        np.testing.assert_allclose(S[:, k], np.where(T[:, k], w[1], w[0]))
    with pytest.raises(ValueError, match="class_weight"):
        ovrlogreg.sample_weights(T, "heavy")


def test_span_gives_the_rows_on_an_orthonormal_basis_and_maps_other_rows_and_weights_back():
    rng = np.random.default_rng(2)
    A, B = rng.normal(size=(12, 40)), rng.normal(size=(5, 40))
    Z, M = ovrlogreg.span(A)
    V = A.T @ M  # the basis, (D, r)
    np.testing.assert_allclose(V.T @ V, np.eye(Z.shape[1]), atol=1e-10)
    np.testing.assert_allclose(Z, A @ V, atol=1e-10)
    np.testing.assert_allclose(Z.T @ Z, np.diag(np.diag(Z.T @ Z)), atol=1e-9)  # orthogonal columns
    np.testing.assert_allclose((B @ A.T) @ M, B @ V, atol=1e-10)
    T = A[:, :3] + rng.normal(size=(12, 3)) > 0
    T[0], T[1] = True, False  # every tag has both values
    W, _ = ovrlogreg.fit(Z, T, 1.0, tol=1e-10)
    full = LogisticRegression(C=1.0, tol=1e-10, max_iter=10000).fit(A, T[:, 0])
    np.testing.assert_allclose(ovrlogreg.decisions(W, B @ V)[:, 0], full.decision_function(B), atol=1e-4)
