"""Exact and approximate nearest neighbours by cosine over features read a chunk at a time."""
import numpy as np
import pytest

from pipeline.audit.neighbours import Lookup, _drop_self, choose, search, unit
from pipeline.errors import UsageError


def chunks_of(x, size=7):
    return lambda: (x[s:s + size] for s in range(0, len(x), size))


def test_exact_search_matches_a_brute_force_ranking_across_chunks():
    rng = np.random.default_rng(0)
    base, queries = rng.normal(size=(53, 16)).astype(np.float32), rng.normal(size=(11, 16)).astype(np.float32)
    nb = search(chunks_of(queries), chunks_of(base), 4, lookup=Lookup("exact"))
    sims = unit(queries, None) @ unit(base, None).T
    assert nb.index.tolist() == np.argsort(-sims, axis=1)[:, :4].tolist()
    assert np.allclose(nb.similarity, np.sort(sims, axis=1)[:, ::-1][:, :4], atol=1e-5)


def test_self_search_leaves_each_row_out_of_its_own_neighbours_even_among_identical_rows():
    x = np.repeat(np.eye(3, dtype=np.float32), 2, axis=0)  # rows 0,1 identical, 2,3, 4,5
    nb = search(chunks_of(x, 4), chunks_of(x, 4), 1, self_search=True, lookup=Lookup("exact"))
    assert nb.index[:, 0].tolist() == [1, 0, 3, 2, 5, 4]
    assert np.allclose(nb.similarity[:, 0], 1.0)


def test_a_centre_is_subtracted_before_the_cosine():
    rng = np.random.default_rng(1)
    x = np.abs(rng.normal(size=(40, 32))).astype(np.float32) + 3  # all raw cosines near 1
    centre = x.mean(axis=0)
    raw = search(chunks_of(x), chunks_of(x), 1, self_search=True, lookup=Lookup("exact"))
    centred = search(chunks_of(x), chunks_of(x), 1, self_search=True, lookup=Lookup("exact"), centre=centre)
    assert raw.similarity.min() > 0.95 and centred.similarity.max() < 0.6


def test_fewer_base_rows_than_k_are_padded():
    x = np.eye(3, dtype=np.float32)
    nb = search(chunks_of(x), chunks_of(x), 5, self_search=True, lookup=Lookup("exact"))
    assert nb.index.shape == (3, 5) and (nb.index[:, 2:] == -1).all() and np.isneginf(nb.similarity[:, 2:]).all()


def test_approximate_index_finds_what_the_exact_search_finds_on_clustered_rows():
    pytest.importorskip("faiss")
    rng = np.random.default_rng(2)
    centres = rng.normal(0, 3, (8, 24))
    x = (centres[np.arange(400) % 8] + rng.normal(0, 1, (400, 24))).astype(np.float32)
    exact = search(chunks_of(x, 64), chunks_of(x, 64), 5, self_search=True, lookup=Lookup("exact"))
    approx = search(chunks_of(x, 64), chunks_of(x, 64), 5, self_search=True, lookup=Lookup("approximate"))
    assert approx.method.startswith("approximate")
    hits = sum(len(set(a) & set(b)) for a, b in zip(exact.index.tolist(), approx.index.tolist()))
    assert hits / exact.index.size > 0.95


def test_auto_picks_exact_up_to_the_limit_and_names_a_bad_method():
    assert choose("auto", 10, exact_max=10) == "exact" and choose("auto", 11, exact_max=10) == "approximate"
    with pytest.raises(UsageError, match="index='fast'"):
        choose("fast", 10)


def test_drop_self_removes_the_last_when_the_row_is_not_among_its_neighbours():
    idx = np.array([[5, 6, 7]])
    out, sim = _drop_self(idx, np.array([[0.9, 0.8, 0.7]], np.float32), 2)
    assert out.tolist() == [[5, 6]] and np.allclose(sim, [[0.9, 0.8]])


def test_an_empty_base_gives_no_neighbours():
    nb = search(chunks_of(np.eye(2, dtype=np.float32)), chunks_of(np.zeros((0, 2), np.float32)), 3)
    assert (nb.index == -1).all() and nb.index.shape == (2, 3)
