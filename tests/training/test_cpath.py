"""The C path: per fold, warm-started along C on the span of the training rows, folds in parallel."""
from __future__ import annotations

import numpy as np
import pytest
from sklearn.base import clone

from pipeline.heads.folds import RareClassKFold
from pipeline.heads.kinds import KINDS
from pipeline.training.cpath import (
    CVSettings,
    fold_path,
    n_workers,
    oof_path,
    ovr_fold_path,
    row_space,
)
from pipeline.training.selection import make_head


def wide(n=30, d=80, k=3, seed=0):
    """Fewer images than features, as with 700 photos and 1280 features."""
    rng = np.random.default_rng(seed)
    y = np.repeat([f"c{i}" for i in range(k)], n // k)
    X = (rng.normal(0, 1, (k, d))[np.searchsorted(np.unique(y), y)] + rng.normal(0, 1.5, (len(y), d)))
    return X.astype(np.float32), y


def test_row_space_is_an_orthonormal_basis_of_the_rows():
    X, _ = wide()
    V = row_space(X)
    assert V.shape == (80, 30) and np.allclose(V.T @ V, np.eye(30), atol=1e-5)
    assert np.allclose(X @ V @ V.T, X, atol=1e-4)  # every row lies in the span


@pytest.mark.parametrize("head", ["logreg", "linear_svm"])
def test_fitting_on_the_span_gives_the_decision_values_of_the_full_features(head):
    X, y = wide()
    tr, te = np.arange(0, 30, 1)[np.arange(30) % 5 != 0], np.arange(0, 30, 5)
    grid = [0.01, 1.0]
    span = fold_path(head, X, y, tr, te, grid, project=True)
    full = [make_head(head, C).fit(X[tr], y[tr]).decision_function(X[te]) for C in grid]
    for a, b in zip(span, full):
        assert np.allclose(a, b, atol=2e-3 * np.abs(b).max())
        assert (a.argmax(1) == b.argmax(1)).all()


def test_the_path_is_returned_in_grid_order_whatever_order_it_was_fitted_in():
    X, y = wide()
    tr, te = np.arange(20), np.arange(20, 30)
    up = fold_path("logreg", X, y, tr, te, [0.001, 1.0])
    down = fold_path("logreg", X, y, tr, te, [1.0, 0.001])
    assert np.allclose(up[0], down[1], atol=1e-3) and np.allclose(up[1], down[0], atol=1e-2)
    assert np.abs(up[1]).max() > np.abs(up[0]).max()  # weaker penalty, larger decision values


def test_out_of_fold_values_fill_the_validated_rows_and_leave_the_rest_nan():
    X, y = wide()
    y = y.copy()
    y[0] = "solo"  # one image: trained in every fold, never validated
    splits = list(RareClassKFold(3).split(None, y))
    seen = []
    F = oof_path("logreg", X, y, list(KINDS["logreg"].c_grid), splits, CVSettings(n_jobs=1), progress=seen.append)
    assert len(F) == 5 and F[0].shape == (30, 4) and seen == [1, 2, 3]
    assert np.isnan(F[2][0]).all() and not np.isnan(F[2][1:]).any()


def test_multilabel_path_gives_a_constant_tag_fixed_values():
    X, y = wide()
    Y = np.column_stack([y == "c0", np.zeros(30, bool)])
    out = ovr_fold_path("logreg", X, Y, np.arange(20), np.arange(20, 30), [0.1, 1.0])
    assert out[0].shape == (10, 2) and (out[1][:, 1] == -50).all()


def test_workers_never_exceed_the_folds():
    assert n_workers(8, 3) == 3 and n_workers(1, 5) == 1 and 1 <= n_workers(None, 5) <= 5


def test_clone_of_a_warm_started_kind_is_unchanged():  # the path sets warm_start on its own copy only
    assert "warm_start" not in {k for k, v in clone(KINDS["logreg"].make(1.0)).get_params().items() if v is True}
