"""Out-of-distribution: how unlike a head's training images an image is, from its features alone.

A head records a summary of the features it was trained on (:func:`summarize`, called once where a
head is trained): a bounded sample of its training vectors, L2-normalised and kept as float16 (at most
:data:`MAX_ROWS` rows, every class represented), and a threshold. The distance of an image is the
cosine distance (1 - cosine similarity) from its features to their `k`-th nearest neighbour in that
sample (the k-NN detector of Sun et al., ICML 2022). The threshold is calibrated on held-out folds:
the training rows are split into :data:`FOLDS` folds, each fold's distances are measured against a
sample of the other folds, and the threshold is the :data:`QUANTILE` quantile of those held-out
distances, so about 1 - QUANTILE (2.5%) of in-distribution images exceed it. An image is flagged
(``ood`` = 1) when its distance exceeds the threshold, or is not a number.

Measured (BENCHMARKS.md, bench/ood.py): a cats/dogs head on the bundled mobilenet_v2_quant features flags
all 7 car test photos and about 2% of held-out cats and dogs.

In the head file (pipeline/heads/headfile.py): the array ``ood.bank`` (M, D) float16 and the header key
``ood`` (method, k, threshold, quantile, folds, rows, bank_rows, heldout_flagged). Heads saved before
this existed have neither: they score without OOD columns.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import NamedTuple

import numpy as np

from ..errors import UsageError

METHOD = "knn_cosine"
K = 5  # the k-th nearest neighbour (fewer when the sample is smaller)
MAX_ROWS = 1024  # training vectors kept: 1024 x 1280 float16 = 2.6 MB in the head file
QUANTILE = 0.975  # of the held-out distances: ~2.5% of in-distribution images are flagged
FOLDS = 5
MIN_ROWS = 4  # fewer training rows: no summary (nothing to calibrate on)
MAX_CALIBRATION = 10_000  # held-out rows measured when calibrating on a large training set
_CHUNK = 4096  # query rows per distance matrix
PREFIX = "ood."
MISSING = ("has no out-of-distribution summary (it was saved before heads kept one, or trained on fewer than "
           f"{MIN_ROWS} images); retrain it to get OOD distances")


class OODScores(NamedTuple):
    """Per image: ``distance`` (cosine distance to the k-th nearest training vector) and ``flagged``
    (True where it exceeds the head's threshold, or is not a number)."""

    distance: np.ndarray
    flagged: np.ndarray


@dataclass(frozen=True)
class Calibration:
    """How the threshold was chosen: the `quantile` of the distances of `rows` held-out training images
    (over `folds` folds); `heldout_flagged` is the fraction of them above it."""

    threshold: float
    quantile: float
    folds: int
    rows: int
    heldout_flagged: float


class OODSummary:
    """The training features' summary a head keeps: ``bank`` (M, D) L2-normalised vectors, `k`, `calibration`."""

    def __init__(self, bank: np.ndarray, k: int, calibration: Calibration):
        self.bank = np.asarray(bank)
        self.k, self.calibration = int(k), calibration
        if self.bank.ndim != 2 or not len(self.bank) or not 1 <= self.k <= len(self.bank):
            raise ValueError(f"ood.bank must be a non-empty (M, D) matrix with M >= k={self.k}, "
                             f"got shape {self.bank.shape}")
        if not np.all(np.isfinite(self.bank)) or not np.isfinite(calibration.threshold) or calibration.threshold < 0:
            raise ValueError("ood.bank and the ood threshold must be finite numbers, the threshold >= 0")

    @property
    def threshold(self) -> float:
        return self.calibration.threshold

    @property
    def n_features_in_(self) -> int:
        return int(self.bank.shape[1])

    def distance(self, X) -> np.ndarray:
        """(N,) cosine distance of each row of `X` to its k-th nearest vector of the bank."""
        return knn_distance(self.bank, np.asarray(X, np.float32), self.k)

    def score(self, X) -> OODScores:
        d = self.distance(X)
        return OODScores(d, ~(d <= self.threshold))

    # ---- the head file ---------------------------------------------------------------------------
    def header(self) -> dict:
        return {"method": METHOD, "k": self.k, "bank_rows": len(self.bank), **asdict(self.calibration)}

    def arrays(self) -> dict:
        return {f"{PREFIX}bank": self.bank.astype(np.float16)}

    @classmethod
    def from_file(cls, header: dict, arrays: dict) -> "OODSummary":
        """The summary a head file's ``ood`` header key and ``ood.*`` arrays hold; ValueError naming what is wrong."""
        if not isinstance(header, dict) or header.get("method") != METHOD:
            found = header.get("method") if isinstance(header, dict) else header
            raise ValueError(f"unknown out-of-distribution method {found!r} (this version reads {METHOD!r})")
        try:
            cal = Calibration(**{f: header[f] for f in Calibration.__dataclass_fields__})
            return cls(arrays[f"{PREFIX}bank"], int(header["k"]), cal)
        except (KeyError, TypeError) as e:
            raise ValueError(f"the ood summary misses {e}") from None


def l2_normalise(X: np.ndarray) -> np.ndarray:
    X = np.asarray(X, np.float32)
    norm = np.linalg.norm(X, axis=1, keepdims=True)
    return X / np.maximum(norm, 1e-12)


def knn_distance(bank: np.ndarray, X: np.ndarray, k: int) -> np.ndarray:
    """Cosine distance of each row of `X` to its k-th nearest row of `bank` (rows L2-normalised), in chunks."""
    B = np.asarray(bank, np.float32)
    k = min(int(k), len(B))
    out = np.empty(len(X), np.float64)
    for a in range(0, len(X), _CHUNK):
        sim = l2_normalise(X[a:a + _CHUNK]) @ B.T
        kth = np.partition(-sim, k - 1, axis=1)[:, k - 1]  # minus the k-th largest similarity
        out[a:a + _CHUNK] = np.clip(1.0 + kth, 0.0, 2.0)
    return out


def sample_rows(y, max_rows: int, rng: np.random.Generator, k: int = K) -> np.ndarray:
    """Sorted positions of at most ~`max_rows` rows, each class (value of `y`) keeping its share and at
    least `k` rows (all of them if it has fewer)."""
    y = np.asarray(y).astype(str)
    if len(y) <= max_rows:
        return np.arange(len(y))
    keep = []
    for c in np.unique(y):
        rows = np.flatnonzero(y == c)
        n = min(len(rows), max(k, int(max_rows * len(rows) / len(y))))
        keep.append(rng.choice(rows, n, replace=False))
    return np.sort(np.concatenate(keep))


def _bank(X, y, max_rows: int, rng) -> np.ndarray:
    return l2_normalise(X[sample_rows(y, max_rows, rng)]).astype(np.float16)


def summarize(X, y=None, *, seed: int = 0, k: int = K, max_rows: int = MAX_ROWS, quantile: float = QUANTILE,
              folds: int = FOLDS) -> OODSummary | None:
    """The OOD summary of training features `X` (labels `y` keep every class in the sample); None when
    there are fewer than MIN_ROWS rows. The threshold: the `quantile` of the held-out distances over
    `folds` folds (sklearn KFold, shuffled with `seed`), each measured against a sample of the others."""
    from sklearn.model_selection import KFold

    X = np.asarray(X, np.float32)
    y = np.zeros(len(X)) if y is None else np.asarray(y)
    if len(X) < MIN_ROWS:
        return None
    rng = np.random.default_rng(seed)
    folds = min(folds, len(X))
    heldout = []
    for fit, held in KFold(folds, shuffle=True, random_state=seed).split(X):
        if len(held) * folds > MAX_CALIBRATION:  # a large set: a sample of each held-out fold is enough
            held = rng.choice(held, MAX_CALIBRATION // folds, replace=False)
        heldout.append(knn_distance(_bank(X[fit], y[fit], max_rows, rng), X[held], k))
    d = np.concatenate(heldout)
    threshold = float(np.quantile(d, quantile))
    cal = Calibration(threshold, quantile, folds, len(d), float(np.mean(d > threshold)))
    bank = _bank(X, y, max_rows, rng)
    return OODSummary(bank, min(k, len(bank)), cal)


def split_arrays(arrays: dict) -> tuple[dict, dict]:
    """(the head's own arrays, the ``ood.*`` arrays) of a head file's arrays."""
    ood = {n: a for n, a in arrays.items() if n.startswith(PREFIX)}
    return {n: a for n, a in arrays.items() if n not in ood}, ood


def check_reject_ood(summary: OODSummary | None, classes, unknown: str) -> None:
    """Refuse to turn flagged images into `unknown` for a head without a summary or with a class of that name."""
    if summary is None:
        raise UsageError(f"reject_ood needs a head with an out-of-distribution summary; this head {MISSING}")
    if unknown in [str(c) for c in classes]:
        raise UsageError(f"this head has a class named {unknown!r}, so reject_ood could not be told apart from it")


def describe(summary: OODSummary | None) -> str:
    if summary is None:
        return "no out-of-distribution summary"
    c = summary.calibration
    return (f"out-of-distribution: cosine distance to the {summary.k}-th nearest of {len(summary.bank)} training "
            f"vectors, flagged above {c.threshold:.4f} (the {c.quantile:g} quantile of {c.rows} held-out "
            f"training images over {c.folds} folds)")
