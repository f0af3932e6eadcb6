"""Rows that take the features of rows the store holds already: files of known content under a new label or path.

:meth:`~pipeline.store.writer.StoreWriter.copy_rows` commits them. :func:`source_indices` finds each copy's
source row by path *and* sha256 (the row of that content, even where the run wrote a new row for the path
since); :func:`copied_blocks` reads the sources back in one pass over the committed pieces (each checked as
it comes, as any read) and hands the copies over in the order of their sources, about `size` at a time.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from ..errors import StoreError
from .reader import live_chunks


def source_indices(log: list[dict], rows: list[dict], sources: list[str], root: Path) -> np.ndarray:
    """The log index of each copy's source: the last row of path `sources[k]` with `rows[k]`'s sha256."""
    index = {(r["path"], r.get("sha256")): i for i, r in enumerate(log) if "removed" not in r}
    keys = [(source, row["sha256"]) for row, source in zip(rows, sources)]
    missing = [k for k in keys if k not in index]
    if missing:
        raise StoreError(f"cannot copy the features of {missing[0][0]!r}: {root} has no row of it with "
                         f"sha256 {missing[0][1]}; nothing of this run's copies was written: run the same "
                         f"command again (it featurizes what it cannot copy), and please report this bug")
    return np.array([index[k] for k in keys], np.int64)


def copied_blocks(root: Path, meta: dict, n: int, want: np.ndarray, rows: list[dict], size: int):
    """(features, rows) blocks of about `size` copies: row k takes the features of log row want[k] (below n)."""
    order = np.argsort(want, kind="stable")
    have = np.unique(want)  # the log indices to read, each once, in the order the pass meets them
    block, start, done = [], 0, 0  # `start`: rows of `have` read so far; `done`: copies handed over
    for x in live_chunks(root, meta, n, have, size):
        read = have[start:start + len(x)]
        end = done + int(np.searchsorted(want[order[done:]], read[-1], side="right"))
        picked = order[done:end]
        block.append((x[np.searchsorted(read, want[picked])], [rows[i] for i in picked]))
        start, done = start + len(x), end
        if sum(len(r) for _, r in block) >= size:
            yield np.concatenate([f for f, _ in block]), [r for _, b in block for r in b]
            block = []
    if block:
        yield np.concatenate([f for f, _ in block]), [r for _, b in block for r in b]
