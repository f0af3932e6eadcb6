"""Choosing a head by cross-validation: feature sets x head kinds x C, one protocol, one table.

``choose(feature_sets, y, heads, C=..., folds=5, seed=0)`` cross-validates every candidate, a
(feature set, head kind) pair, along its C grid (or at the given C) on the SAME folds: those of
``selection_splitter`` (pipeline/training/selection.py: RareClassKFold, one-image classes train in every
fold and are never validated; or leave-one-out). The out-of-fold decision values come from
pipeline/training/cpath.py (warm starts along C, the rows' span, folds in parallel). A candidate's C is
the middle of its best plateau (``plateau_index``, the rule C='auto' always used); across candidates
the best CV accuracy wins, ties going to the earlier candidate (the caller lists the cheaper ones first).

Zero-shot candidates (pipeline/training/zeroshot.py) need no training: their "out-of-fold" values are
their scores on the validated rows themselves, so they compete on the same rows.

The result, :class:`Choice`, holds the table (one :class:`Row` per candidate and C) that ``train``
prints, records in its metrics (``selection``), its ``--json`` and the HTML report.
"""
from __future__ import annotations

import logging
from dataclasses import asdict, dataclass, field

import numpy as np
from sklearn.model_selection import LeaveOneOut

from ..heads.calibration import decision_matrix
from ..heads.kinds import KINDS, check_head
from .cpath import CVSettings, oof_path
from .selection import selection_splitter

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Candidate:
    """One thing to cross-validate: the features it reads (a name from the feature sets) and a head kind
    (or ``zero_shot``), with the C values to try (empty for zero-shot)."""

    features: str
    head: str
    grid: tuple = ()


@dataclass
class Row:
    """One line of the table: a candidate at one C, its mean CV accuracy, and whether it was chosen."""

    features: str
    head: str
    C: float | None
    cv_accuracy: float
    chosen: bool = False


@dataclass
class Choice:
    """What ``choose`` found: the winner, its out-of-fold decision values, the table and the folds."""

    features: str
    head: str
    C: float | None
    cv_accuracy: float
    rows: list[Row] = field(default_factory=list)
    n_splits: int = 0
    oof: np.ndarray | None = None  # the winner's out-of-fold decision values (NaN where not validated)
    validated: np.ndarray | None = None  # rows some fold validates

    def table(self) -> list[dict]:
        """The table as JSON-ready dicts."""
        return [asdict(r) for r in self.rows]

    def scores(self, features: str, head: str) -> dict[float, float]:
        """{C: CV accuracy} of one candidate."""
        return {r.C: r.cv_accuracy for r in self.rows if r.features == features and r.head == head}


def fold_accuracies(F: np.ndarray, y_index: np.ndarray, splits) -> np.ndarray:
    """Accuracy of the decision values F on each fold's validated rows."""
    pred = np.argmax(decision_matrix(np.nan_to_num(F)), axis=1)
    return np.array([np.mean(pred[te] == y_index[te]) for _, te in splits])


def plateau(scores: list[float]) -> int:
    """Of the positions whose score equals the best (within 1e-12), the middle one."""
    best = max(scores)
    tied = [i for i, v in enumerate(scores) if v >= best - 1e-12]
    return tied[len(tied) // 2]


def choose(feature_sets: dict, y, candidates: list[Candidate], cv: CVSettings = CVSettings(), zero_shot=None,
           progress=None) -> Choice:
    """Cross-validate `candidates` on `feature_sets` ({name: (N, D) array}) and labels `y` with the folds of
    `cv` (pipeline/training/cpath.py); the best wins.

    `zero_shot`: {features name: (N, K) scores in sorted class order} for zero-shot candidates.
    `progress(candidate, k, n)`: called when fold k of n of a candidate finishes.
    """
    y = np.asarray(y, dtype=str)
    classes, y_index = np.unique(y, return_inverse=True)
    splitter = selection_splitter(y, cv.folds, cv.seed)
    splits = list(splitter.split(np.zeros(len(y)), y))
    validated = np.zeros(len(y), dtype=bool)
    for _, te in splits:
        validated[te] = True
    rows, best = [], None
    for cand in candidates:
        if cand.head == "zero_shot":
            paths, grid = [np.where(validated[:, None], zero_shot[cand.features], np.nan)], [None]
        else:
            check_head(cand.head, cv.class_weight)
            grid = list(cand.grid or KINDS[cand.head].c_grid)
            step = None if progress is None else (lambda k, c=cand: progress(c, k, len(splits)))
            paths = oof_path(cand.head, feature_sets[cand.features], y, grid, splits, cv, step)
        scores = [float(fold_accuracies(F, y_index, splits).mean()) for F in paths]
        i = plateau(scores)
        for C, s in zip(grid, scores):
            rows.append(Row(cand.features, cand.head, None if C is None else float(C), s))
        log.info("candidate %s on %s: CV accuracy %.4f at C=%s (%d folds)", cand.head, cand.features, scores[i],
                 "-" if grid[i] is None else f"{grid[i]:g}", len(splits))
        if best is None or scores[i] > best[0] + 1e-12:
            best = (scores[i], cand, grid[i], paths[i], len(rows) - len(grid) + i)
    score, cand, C, F, at = best
    rows[at].chosen = True
    return Choice(cand.features, cand.head, None if C is None else float(C), score, rows,
                  len(splits) if not isinstance(splitter, LeaveOneOut) else len(y), F, validated)


def format_table(rows: list[dict] | list[Row], limit: int = 40) -> str:
    """The table as text: one line per candidate and C, the chosen one marked with *."""
    rows = [r if isinstance(r, dict) else asdict(r) for r in rows]
    if not rows:
        return ""
    fw = max(len("features"), *(len(r["features"]) for r in rows))
    hw = max(len("head"), *(len(r["head"]) for r in rows))
    lines = [f"  {'features':<{fw}}  {'head':<{hw}}  {'C':>8}  CV accuracy"]
    for r in rows[:limit]:
        C = "-" if r["C"] is None else f"{r['C']:g}"
        lines.append(f"{'*' if r['chosen'] else ' '} {r['features']:<{fw}}  {r['head']:<{hw}}  {C:>8}  "
                     f"{r['cv_accuracy']:.4f}")
    if len(rows) > limit:
        lines.append(f"  ... {len(rows) - limit} more rows in the head file's metrics (selection)")
    return "\n".join(lines)
