"""Nearest neighbours by cosine similarity over a store's features, read a chunk at a time.

Every audit check is a nearest-neighbour question: :func:`search` answers it for the rows of one
store against those of another (or of itself), exactly for up to ``exact_max`` base rows (chunked
matrix products of unit float32 vectors, numpy only) and, above that, with an approximate index
(faiss's inverted lists, ``pip install 'tf-feature-pipeline[audit]'``), which is what keeps a
100,000-row store within minutes on two cores (BENCHMARKS.md, "Audit at scale").

Similarities are raw cosines of the features as stored, so one threshold holds for every store.
Centring them first (`centre=`: the store's mean subtracted) was measured on real photos: at the
same share of copies found it flags as many distinct pairs, and its threshold moves with each
store's mean (bench/audit_realdata.py, docs/audit.md).
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..errors import UsageError

EXACT_MAX = 20_000  # base rows searched exactly; above this the approximate index (BENCHMARKS.md)
BLOCK_BYTES = 64 << 20  # similarity block of one exact search step (queries x base x 4 bytes)
TRAIN_PER_LIST = 40  # rows sampled per inverted list to train the approximate index (k-means)
NPROBE = 4  # inverted lists searched per query (of sqrt(N)); recall measured by bench/audit_scale.py
INDEXES = ("auto", "exact", "approximate")


@dataclass(frozen=True)
class Lookup:
    """How a search looks: `method` (auto, exact, approximate), `exact_max` base rows searched exactly by
    auto, `nprobe` inverted lists the approximate index searches per row, `seed` of its k-means."""

    method: str = "auto"
    exact_max: int = EXACT_MAX
    nprobe: int = NPROBE
    seed: int = 0


@dataclass(frozen=True)
class Neighbours:
    """The `k` nearest base rows of each query row, most similar first: ``index`` (int64, -1 where
    the base has fewer rows) and ``similarity`` (cosine similarity, float32)."""

    index: np.ndarray
    similarity: np.ndarray
    method: str  # "exact" or "approximate (faiss IVF float16, nlist=..., nprobe=...)"


def unit(x: np.ndarray, centre: np.ndarray | None) -> np.ndarray:
    """Rows of `x` minus `centre`, scaled to length 1 (float32; an all-zero row stays zero)."""
    x = np.asarray(x, dtype=np.float32)
    if centre is not None:
        x = x - centre
    norms = np.linalg.norm(x, axis=1, keepdims=True)
    return x / np.maximum(norms, 1e-12)


def choose(method: str, n_base: int, exact_max: int = EXACT_MAX) -> str:
    if method not in INDEXES:
        raise UsageError(f"index={method!r} is not one of {', '.join(map(repr, INDEXES))}")
    if method == "auto":
        return "exact" if n_base <= exact_max else "approximate"
    return method


def search(queries, base, k: int, *, self_search: bool = False, lookup: Lookup = Lookup(),
           centre: np.ndarray | None = None, n_base: int | None = None) -> Neighbours:
    """The `k` most similar `base` rows of every `queries` row.

    `queries` and `base`: zero-argument callables returning an iterator of float32 chunks (a
    store's ``feature_chunks``, so each is read as often as needed, never whole) with `n` rows.
    `self_search`: queries are the base, each row's own match is left out. `lookup`: exact or
    approximate, and how (:class:`Lookup`). `centre`: the vector subtracted before normalising (None:
    raw cosine). `n_base`: the base's rows when known (else counted by reading it once more).
    """
    n_base = sum(len(x) for x in base()) if n_base is None else n_base
    how = choose(lookup.method, n_base, lookup.exact_max)
    if not n_base:  # nothing to be near
        n = sum(len(q) for q in queries())
        return Neighbours(np.full((n, k), -1, np.int64), np.full((n, k), -np.inf, np.float32), how)
    k_ask = min(k + int(self_search), n_base)
    if how == "exact":
        B = np.concatenate([unit(x, centre) for x in base()])
        found = [_exact_top(unit(q, centre), B, k_ask) for q in queries()]
        name = "exact"
    else:
        index, name = _approximate(base, n_base, centre, lookup.seed, lookup.nprobe)
        found = [index.search(unit(q, centre), k_ask) for q in queries()]
    idx = np.concatenate([f[0] for f in found]) if found else np.zeros((0, k_ask), np.int64)
    sim = np.concatenate([f[1] for f in found]) if found else np.zeros((0, k_ask), np.float32)
    if self_search:
        idx, sim = _drop_self(idx.astype(np.int64), sim, k)
    return Neighbours(_pad(idx.astype(np.int64), k, -1), _pad(sim.astype(np.float32), k, -np.inf), name)


def _exact_top(Q: np.ndarray, B: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """(indices, similarities) of the `k` largest of Q @ B.T per row, a block of Q rows at a time."""
    rows = max(1, BLOCK_BYTES // (4 * max(len(B), 1)))
    idx = np.empty((len(Q), k), np.int64)
    sim = np.empty((len(Q), k), np.float32)
    for s in range(0, len(Q), rows):
        S = Q[s:s + rows] @ B.T
        part = np.argpartition(-S, k - 1, axis=1)[:, :k] if k < S.shape[1] else np.tile(np.arange(k), (len(S), 1))
        vals = np.take_along_axis(S, part, axis=1)
        order = np.argsort(-vals, axis=1, kind="stable")
        idx[s:s + rows] = np.take_along_axis(part, order, axis=1)
        sim[s:s + rows] = np.take_along_axis(vals, order, axis=1)
    return idx, sim


def _approximate(base, n_base: int, centre, seed: int, nprobe: int):
    """A faiss inverted-file index over the base: k-means lists, float16 vectors, `NPROBE` lists searched."""
    try:
        import faiss
    except ImportError as e:
        raise UsageError(f"stores of more than {EXACT_MAX} rows are searched with an approximate index from "
                         f"faiss ({e}); pip install 'tf-feature-pipeline[audit]', or pass index='exact' "
                         f"(slower)") from e
    nlist = max(1, int(np.sqrt(n_base)))
    nprobe = min(nlist, nprobe)
    dim = None
    sample = []
    rng = np.random.default_rng(seed)
    share = min(1.0, TRAIN_PER_LIST * nlist / max(n_base, 1))
    for x in base():  # a sample spread over the whole store, not its first rows (often one class)
        dim = x.shape[1]
        pick = rng.random(len(x)) < share
        sample.append(unit(x[pick], centre))
    # vectors kept as float16: a search streams the probed lists from memory, half the bytes of float32
    # (bench/audit_index.py: half the time, recall@11 0.9997 against 1.0)
    index = faiss.IndexIVFScalarQuantizer(faiss.IndexFlatIP(dim), dim, nlist, faiss.ScalarQuantizer.QT_fp16,
                                          faiss.METRIC_INNER_PRODUCT)
    index.cp.niter = 10
    index.train(np.ascontiguousarray(np.concatenate(sample)))
    for x in base():
        index.add(np.ascontiguousarray(unit(x, centre)))
    index.nprobe = nprobe
    return _Faiss(index), f"approximate (faiss IVF float16, nlist={nlist}, nprobe={nprobe})"


class _Faiss:
    def __init__(self, index):
        self.index = index

    def search(self, q: np.ndarray, k: int):
        sim, idx = self.index.search(np.ascontiguousarray(q), k)
        return idx, sim


def _drop_self(idx: np.ndarray, sim: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Each row's own index removed from its neighbours (or the last one, when it was not found)."""
    own = idx == np.arange(len(idx))[:, None]
    drop = np.where(own.any(axis=1), own.argmax(axis=1), idx.shape[1] - 1)
    keep = np.ones_like(own)
    keep[np.arange(len(idx)), drop] = False
    width = idx.shape[1] - 1
    return idx[keep].reshape(len(idx), width)[:, :k], sim[keep].reshape(len(idx), width)[:, :k]


def _pad(a: np.ndarray, k: int, fill) -> np.ndarray:
    if a.shape[1] >= k:
        return a[:, :k]
    return np.concatenate([a, np.full((len(a), k - a.shape[1]), fill, a.dtype)], axis=1)
