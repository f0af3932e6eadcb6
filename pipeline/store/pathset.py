"""Which paths (ids) have been seen, in 8 bytes each: their 64-bit hashes in sorted numpy runs, not the text.

An import of millions of rows checks each id against every earlier one, and the writer knows whether a
block of rows adds only new paths, without holding the paths themselves. A hash can collide: :meth:`add`
answers "maybe seen", and the caller confirms the exact text where it is kept (the batch, the log).
"""
from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np


class PathSet:
    """64-bit hashes of the paths added, as a few sorted runs (merged as they grow: each run at least twice
    the next, so a check searches ~log2(N / batch) runs and every hash is re-sorted ~log2 times)."""

    def __init__(self, key: Callable[[str], int] = hash):
        self._key = key
        self._runs: list[np.ndarray] = []

    def __len__(self) -> int:
        return sum(len(r) for r in self._runs)

    @property
    def nbytes(self) -> int:
        return sum(r.nbytes for r in self._runs)

    def add(self, paths: Sequence[str]) -> list[int]:
        """Add `paths`; return the positions in `paths` whose hash was seen before (earlier in `paths`, or in
        an earlier call): the same path again, or (rarely) a collision the caller tells apart."""
        h = np.fromiter(map(self._key, paths), np.int64, count=len(paths))
        if not len(h):
            return []
        order = np.argsort(h, kind="stable")
        s = h[order]
        seen = np.zeros(len(h), bool)
        if len(s) > 1:
            seen[order[1:][s[1:] == s[:-1]]] = True  # equal hashes: every one after the first (stable order)
        for run in self._runs:  # sorted needles: the search walks each run in order
            at = np.minimum(np.searchsorted(run, s), len(run) - 1)
            seen[order[run[at] == s]] = True
        self._runs.append(s)
        while len(self._runs) > 1 and 2 * len(self._runs[-1]) >= len(self._runs[-2]):
            last = self._runs.pop()
            merged = np.concatenate([self._runs[-1], last])
            merged.sort()  # in place: the merge holds one copy of the two runs
            self._runs[-1] = merged
        return np.flatnonzero(seen).tolist()
