"""Cross-validation folds for long-tailed data: classes too small to validate still train in every fold.

``RareClassKFold`` is a scikit-learn CV splitter (usable in GridSearchCV): stratified k-fold over
the rows of classes with at least 2 images, k = min(n_splits, the smallest such class), and the
rows of classes with a single image added to every training part and never validated. Every
training part therefore holds every class. It is not a partition of all rows, so
``cross_val_predict`` cannot use it; ``validated`` says which rows it predicts.
"""
from __future__ import annotations

import numpy as np
from sklearn.model_selection import StratifiedKFold


def too_small(y, least: int = 2) -> list[str]:
    """Classes with fewer than `least` images: trained on, never validated."""
    classes, counts = np.unique(np.asarray(y, dtype=str), return_counts=True)
    return [str(c) for c, n in zip(classes, counts) if n < least]


class RareClassKFold:
    """Stratified k-fold over the classes that can be validated; the others in every training part."""

    def __init__(self, n_splits: int = 5, shuffle: bool = True, random_state: int | None = 0):
        self.n_splits, self.shuffle, self.random_state = n_splits, shuffle, random_state

    def _plan(self, y):
        y = np.asarray(y, dtype=str)
        small = np.isin(y, too_small(y))
        rows, rare = np.flatnonzero(~small), np.flatnonzero(small)
        if len(rows) < 2:
            return 0, rows, rare, y
        k = int(min(self.n_splits, np.unique(y[rows], return_counts=True)[1].min()))
        return k, rows, rare, y

    def get_n_splits(self, X=None, y=None, groups=None) -> int:
        return self._plan(y)[0] if y is not None else self.n_splits

    def split(self, X, y, groups=None):
        k, rows, rare, y = self._plan(y)
        if k < 2:
            raise ValueError("no class has 2 images, so nothing can be validated")
        skf = StratifiedKFold(n_splits=k, shuffle=self.shuffle,
                              random_state=self.random_state if self.shuffle else None)
        for tr, te in skf.split(rows, y[rows]):
            yield np.sort(np.concatenate([rows[tr], rare])), rows[te]

    def validated(self, y) -> np.ndarray:
        """Boolean mask of the rows that some fold validates."""
        return ~np.isin(np.asarray(y, dtype=str), too_small(y))
