"""Rows that take the features of rows a store holds already: files of known content under a new label or path,
in this store, or in another store of the same features (``featurize --reuse-from``, :class:`Source`).

:meth:`~pipeline.store.writer.StoreWriter.copy_rows` and :func:`take_rows` commit them. :func:`source_indices` finds
each copy's source row by path *and* sha256 (the row of that content, even where the run wrote a new row for the path
since); :func:`copied_blocks` reads the sources back in one pass over the committed pieces (each checked as
it comes, as any read) and hands the copies over in the order of their sources, about `size` at a time.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..errors import StoreError, UsageError
from ..spec import FeatureSpec
from .reader import FeatureStore, live_chunks


@dataclass(frozen=True)
class Source:
    """Another store of the same features (``--reuse-from``): its store of each layer this run writes, and the
    contents (sha256) every one of them holds, with the log index of each in each store."""

    root: Path
    stores: dict  # layer -> FeatureStore
    rows: dict  # layer -> {sha256: log index of a row in force}

    @property
    def contents(self) -> set:
        """The contents every layer's store holds (a store that missed rows in a killed run lacks some)."""
        return set.intersection(*(set(r) for r in self.rows.values()))


def open_source(path, wanted: dict) -> Source:
    """The store at `path` as a :class:`Source` for the layers of `wanted` ({layer: the run's FeatureSpec}):
    the store itself or the stores its run wrote beside it (meta ``layers``), each of the same network,
    weights, layer and preprocessing as the run's, else a UsageError that says which and what to do."""
    root = Path(path)
    stores, rows = {}, {}
    try:
        main = FeatureStore.open(root)
        beside = main.meta.get("layers") if isinstance(main.meta.get("layers"), dict) else {}
        for layer, want in wanted.items():
            if main.spec.get("layer") != layer and not isinstance(beside.get(layer), str):
                raise UsageError(f"--reuse-from {root} holds no features of layer {layer!r} (it has "
                                 f"{', '.join(sorted(beside or [str(main.spec.get('layer'))]))}): give a store "
                                 f"featurized with that layer, or featurize with the layers that store has")
            store = main if main.spec.get("layer") == layer else FeatureStore.open(root / beside[layer])
            diff = want.differences(store.spec, full=False)
            if diff:
                theirs = FeatureSpec.of(store.spec).describe()
                raise UsageError(f"--reuse-from {store.root} holds features of {theirs}, not of {want.describe()} "
                                 f"(they differ in {', '.join(diff)}): only features of the same network, weights, "
                                 f"layer and preprocessing can be reused; drop --reuse-from or featurize with that "
                                 f"store's settings")
            stores[layer] = store
            rows[layer] = {sha: int(i) for sha, i in zip(store.sha256, store._live)}
    except (OSError, StoreError) as e:
        raise UsageError(f"--reuse-from {root}: cannot read it as a feature store: {e}") from None
    return Source(root, stores, rows)


def source_rows(source: FeatureStore, index: dict, rows: list[dict]) -> np.ndarray:
    """The log index in `source` of each row's content (`index`: sha256 -> log index, :attr:`Source.rows`)."""
    missing = [r["path"] for r in rows if r["sha256"] not in index]
    if missing:
        raise StoreError(f"{source.root} holds no row of the content of {missing[0]!r} any more (it changed "
                         f"during this run)")
    return np.array([index[r["sha256"]] for r in rows], np.int64)


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


def take_rows(writer, rows: list[dict], source: Source, size: int = 4096) -> None:
    """Commit `rows` to `writer` (a StoreWriter) with the features `source` holds for their content, in its store
    of the writer's layer, opened again now (it may have changed since the run began) and read in one pass.
    The store's spec stays the run's own (its model's path), completed with the tensor and D the source read."""
    own = FeatureSpec.of(writer.meta["spec"])
    layer = own.layer
    try:
        now = open_source(source.root, {layer: own})  # checked as at the start (full=False: tensor and D below)
        store = now.stores[layer]
        theirs = FeatureSpec.of(store.spec)
        if own.loaded and own.differences(theirs):
            raise UsageError(f"--reuse-from {store.root} holds features of {theirs.describe()}, but this run's "
                             f"network gave {own.describe()}: drop --reuse-from")
        want = source_rows(store, now.rows[layer], rows)
        writer.set_spec(own if own.loaded else own.loaded_as(theirs.tensor, theirs.dim))
        for x, block in copied_blocks(store.root, store.meta, store.committed_rows, want, rows, size):
            writer.append(x, block)
    except (OSError, StoreError) as e:
        raise StoreError(f"--reuse-from {source.root}: reading it failed ({e}); this run's other rows are "
                         f"committed: run the same command again to take the rest") from None
