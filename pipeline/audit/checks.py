"""The neighbour checks of an audit: near-duplicates in a store, leaks from one store into another,
outliers. Each reads the stores a chunk of features at a time (pipeline/audit/neighbours.py).

The threshold: cosine similarity of penultimate features at or above NEAR_DUPLICATE (chosen
on real photos, bench/audit_realdata.py: copies re-encoded at JPEG quality 50-95, resized 0.5-2x,
centre-cropped to 80% or mirrored against distinct photos of the same class; BENCHMARKS.md,
"Near-duplicates and leaks"). Outliers: the distance to the nearest images (1 - the mean
similarity of the OUTLIER_K nearest) beyond the far-out fence of the training store's own
distances (third quartile + 3 x the interquartile range, Tukey's "far out").
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from ..errors import SpecMismatchError, UsageError
from ..spec import FeatureSpec
from .findings import Finding
from .neighbours import EXACT_MAX, NPROBE, Lookup, Neighbours, search

NEAR_DUPLICATE = 0.83  # default threshold (see the module docstring)
OUTLIER_K = 5
FENCE_IQR = 3.0
NEIGHBOURS = 10  # neighbours looked at per image (near-duplicates linked to an image beyond them are missed)


def _flag(default, help: str, **argparse_kw):
    """A field with its command-line flag (pipeline/cli/arguments.py add_group reads the metadata)."""
    return field(default=default, metadata={"help": help, **argparse_kw})


@dataclass(frozen=True)
class Search:
    """How neighbours are searched: `threshold` for near-duplicates and leaks, `k` neighbours per image,
    `index` ('auto', 'exact', 'approximate'), `exact_max` base rows searched exactly by 'auto'."""

    threshold: float = _flag(NEAR_DUPLICATE, "near-duplicate when the cosine similarity of the features is at "
                             "least this (default: %(default)s, measured on real photos: docs/audit.md)",
                             type="float")
    k: int = _flag(NEIGHBOURS, "neighbours looked at per image (default: %(default)s)", flag="--neighbours",
                   type="positive_int")
    index: str = _flag("auto", "exact (numpy), approximate (faiss) or auto: exact up to --exact-max rows "
                       "(default: %(default)s)", choices=("auto", "exact", "approximate"))
    exact_max: int = _flag(EXACT_MAX, "rows searched exactly with --index auto (default: %(default)s)",
                           type="positive_int")
    nprobe: int = _flag(NPROBE, "inverted lists the approximate index searches per image: more is slower and "
                        "surer (default: %(default)s)", type="positive_int")
    seed: int = 0

    def __post_init__(self):
        if not -1 <= self.threshold <= 1:
            raise UsageError(f"threshold={self.threshold!r} must be a cosine similarity in [-1, 1], e.g. 0.9")
        if self.k < OUTLIER_K:
            raise UsageError(f"k={self.k!r} must be at least {OUTLIER_K}")


def open_store(store):
    from ..store import FeatureStore

    return store if isinstance(store, FeatureStore) else FeatureStore.open(store)


def check_same_features(a, b) -> None:
    """Refuse to compare stores whose features come from different backbones, layers or preprocessing."""
    diff = a.feature_spec.differences(FeatureSpec.of(b.spec))
    if diff:
        raise SpecMismatchError(f"{b.root} holds {b.feature_spec.describe()} but {a.root} holds "
                                f"{a.feature_spec.describe()} (different {', '.join(diff)}); featurize both with "
                                f"the same backbone and layer before auditing them together")


def neighbours_of(queries, base, s: Search, self_search: bool) -> Neighbours:
    """`queries`' neighbours among `base`'s rows (both FeatureStores)."""
    return search(queries.feature_chunks, base.feature_chunks, s.k, self_search=self_search, n_base=len(base),
                  lookup=Lookup(s.index, s.exact_max, s.nprobe, s.seed))


def pairs_above(nb: Neighbours, threshold: float, symmetric: bool) -> list[tuple[int, int, float]]:
    """(query row, base row, similarity) of every neighbour at or above `threshold`; with `symmetric`
    (a store against itself) each pair once, as (lower row, higher row)."""
    q, j = np.nonzero((nb.similarity >= threshold) & (nb.index >= 0))
    b, sim = nb.index[q, j], nb.similarity[q, j]
    if not symmetric:
        return [(int(x), int(y), float(v)) for x, y, v in zip(q, b, sim)]
    best: dict[tuple[int, int], float] = {}
    for x, y, v in zip(q.tolist(), b.tolist(), sim.tolist()):
        key = (min(x, y), max(x, y))
        best[key] = max(v, best.get(key, v))
    return [(x, y, v) for (x, y), v in sorted(best.items())]


def groups(pairs, n: int) -> np.ndarray:
    """Group number of each of `n` rows (connected by `pairs`), -1 for rows in no pair; groups numbered
    by their first row."""
    from scipy.sparse import coo_matrix
    from scipy.sparse.csgraph import connected_components

    out = np.full(n, -1, np.int64)
    if not pairs:
        return out
    a = np.array([p[0] for p in pairs])
    b = np.array([p[1] for p in pairs])
    _, comp = connected_components(coo_matrix((np.ones(len(a)), (a, b)), shape=(n, n)), directed=False)
    linked = np.zeros(n, bool)
    linked[a] = linked[b] = True
    firsts = {}
    for i in np.flatnonzero(linked):
        out[i] = firsts.setdefault(comp[i], len(firsts))
    return out


def _label(labels, i) -> str:
    v = labels[i]
    return "" if v is None else str(v)


def duplicate_findings(store, nb: Neighbours, threshold: float) -> list[Finding]:
    pairs = pairs_above(nb, threshold, symmetric=True)
    group = groups(pairs, len(store))
    paths, labels = store.paths, store.labels
    found = [Finding("near_duplicate", paths[a], v, paths[b], _label(labels, a), _label(labels, b),
                     int(group[a]), str(store.root)) for a, b, v in pairs]
    return sorted(found, key=lambda f: (f.group, -f.score, f.path, f.other_path))


def leak_findings(train, test, nb: Neighbours, threshold: float) -> list[Finding]:
    paths, labels = test.paths, test.labels
    tpaths, tlabels = train.paths, train.labels
    found = [Finding("leak", paths[q], v, tpaths[b], _label(labels, q), _label(tlabels, b), -1, str(test.root))
             for q, b, v in pairs_above(nb, threshold, symmetric=False)]
    return sorted(found, key=lambda f: (-f.score, f.path, f.other_path))


def distances(nb: Neighbours) -> np.ndarray:
    """1 - the mean similarity of each row's OUTLIER_K nearest neighbours (rows with none: 1)."""
    sim = nb.similarity[:, :OUTLIER_K].astype(np.float64)
    sim = np.where(np.isfinite(sim) & (nb.index[:, :OUTLIER_K] >= 0), sim, 0.0)
    return 1.0 - sim.mean(axis=1) if sim.shape[1] else np.ones(len(sim))


def fence(reference: np.ndarray) -> float:
    """Tukey's far-out fence of the reference distances: Q3 + FENCE_IQR x (Q3 - Q1)."""
    q1, q3 = np.percentile(reference, [25, 75]) if len(reference) else (0.0, 0.0)
    return float(q3 + FENCE_IQR * (q3 - q1))


def outlier_findings(store, d: np.ndarray, limit: float) -> list[Finding]:
    paths, labels = store.paths, store.labels
    found = [Finding("outlier", paths[i], float(d[i]), "", _label(labels, i), "", -1, str(store.root))
             for i in np.flatnonzero(d > limit)]
    return sorted(found, key=lambda f: (-f.score, f.path))


def near_duplicates(store, search: Search | None = None) -> list[Finding]:
    """Pairs of images of `store` (a FeatureStore or its path) whose features are nearly the same: re-encoded,
    resized, cropped or mirrored copies, burst shots; each pair once, with its group of linked images."""
    s, store = search or Search(), open_store(store)
    return duplicate_findings(store, neighbours_of(store, store, s, True), s.threshold)


def leaks(train, test, search: Search | None = None) -> list[Finding]:
    """Every image of `test` with a near-duplicate in `train` (both FeatureStores or paths), one row per pair."""
    s, train, test = search or Search(), open_store(train), open_store(test)
    check_same_features(train, test)
    return leak_findings(train, test, neighbours_of(test, train, s, False), s.threshold)


def outliers(store, reference=None, search: Search | None = None) -> list[Finding]:
    """Images of `store` far from every image of `reference` (default: the rest of `store` itself), beyond
    the far-out fence of the reference's own neighbour distances."""
    s, store = search or Search(), open_store(store)
    ref = open_store(reference) if reference is not None else store
    own = distances(neighbours_of(ref, ref, s, True))
    if ref is store:
        return outlier_findings(store, own, fence(own))
    check_same_features(ref, store)
    return outlier_findings(store, distances(neighbours_of(store, ref, s, False)), fence(own))
