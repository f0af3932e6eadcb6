"""Feature stores in and out: Parquet and NumPy (.npz) files other tools read and write.

Export: one row per live image of a store, in the store's order: ``id`` (the image's path
relative to the featurized folder, as in score CSVs), ``label`` (null / "" when unlabelled),
``sha256`` (the content hash the store keys on) and ``features`` (float32). A Parquet file keeps
the store's spec as JSON under the schema-metadata key ``tf_feature_pipeline``; an .npz file in
its 0-d ``spec`` array. Both are written atomically and never over an input.

Import: a Parquet or .npz file (list or fixed-size-list feature column, or an N x D array)
becomes a feature store written through the store's own writer. The project's exports keep
their spec, so they mix with stores made here; any other file gets the spec
``{"backbone": "imported", "source": NAME, "sha256": HASH, "dim": D}``. What the file declares
is checked before it is read, then it streams a batch of rows at a time (``imports.py``), each batch
checked before it is committed as one block line of the log (the writer keeps none of its rows); a
file refused at any row leaves nothing behind.
"""
from __future__ import annotations

import contextlib
import hashlib
import itertools
import json
import shutil
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..backbones.base import file_sha256
from ..errors import UsageError
from ..jsontext import loads
from ..outputs import atomic_open
from ..spec import FeatureSpec
from ..versions import versions
from . import FeatureStore, open_writer
from .writer import RepeatedPath
from .imports import MAX_DIM, META_KEY, Batch, Columns, open_source
from .log import RowBlock
from .pathset import PathSet

FORMATS = (".parquet", ".npz")


# ---- export ------------------------------------------------------------------------------------
def _format(path: Path, what: str) -> str:
    ext = path.suffix.lower()
    if ext not in FORMATS:
        raise UsageError(f"{what}{str(path)!r}: the format comes from the extension; use .parquet or .npz")
    return ext


def _export_spec(store: FeatureStore) -> str:
    ver = store.meta.get("versions", {}).get("tf-feature-pipeline") or versions().get("tf-feature-pipeline")
    return json.dumps({**store.spec, "package_version": ver}, ensure_ascii=False)


def _check_target(out: Path, inputs: list[Path], force: bool) -> None:
    target = out.resolve()
    for src in inputs:
        src = src.resolve()
        if target == src or src in target.parents:
            raise UsageError(f"out={out} would write over or into the input {src}; choose another path")
    if out.exists() and not force:
        raise UsageError(f"{out} exists; pass force=True to replace it")
    if out.is_dir():
        raise UsageError(f"{out} is a folder; give a file name ending in .parquet or .npz")


def export_features(store, out, force: bool = False) -> Path:
    """Write the live rows of `store` (a path or FeatureStore) to `out` (.parquet or .npz); return `out`.

    The features are read and written a chunk of rows at a time (a Parquet row group, or a slice of
    the .npz's ``features`` array), so a store larger than memory exports."""
    out = Path(out)
    ext = _format(out, "out=")
    store = store if isinstance(store, FeatureStore) else FeatureStore.open(store)
    if not store.spec.get("dim"):
        raise UsageError(f"{store.root} holds no rows yet (no run has stored a feature in it): nothing to "
                         f"export; featurize into it first")
    _check_target(out, [store.root], force)
    columns = {"ids": store.paths, "labels": [None if v is None else str(v) for v in store.labels],
               "sha256": store.sha256}
    writer = _write_parquet if ext == ".parquet" else _write_npz
    with atomic_open(out, "wb") as f:  # a new O_EXCL temp file, fsynced and renamed: never a planted link
        writer(f, store, columns, _export_spec(store))
    return out


def _write_parquet(f, store: FeatureStore, columns: dict, spec: str) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    dim = store.spec["dim"]
    schema = pa.schema([("id", pa.string()), ("label", pa.string()), ("sha256", pa.string()),
                        ("features", pa.list_(pa.float32(), dim))], metadata={META_KEY: spec})
    with pq.ParquetWriter(f, schema) as w:
        start = 0
        for x in store.feature_chunks():
            end = start + len(x)
            flat = pa.array(np.ascontiguousarray(x, np.float32).reshape(-1), pa.float32())
            w.write_table(pa.table({"id": pa.array(columns["ids"][start:end], pa.string()),
                                    "label": pa.array(columns["labels"][start:end], pa.string()),
                                    "sha256": pa.array(columns["sha256"][start:end], pa.string()),
                                    "features": pa.FixedSizeListArray.from_arrays(flat, dim)}, schema=schema))
            start = end
        if start == 0:
            w.write_table(schema.empty_table())


def _write_npz(f, store: FeatureStore, columns: dict, spec: str) -> None:
    """An .npz as numpy.savez writes it (uncompressed .npy members), `features` streamed in chunks."""
    import zipfile

    n, dim = len(store), store.spec["dim"]
    small = {"ids": np.array(columns["ids"], dtype=str).reshape(n),
             "labels": np.array(["" if v is None else v for v in columns["labels"]], dtype=str).reshape(n),
             "sha256": np.array(columns["sha256"], dtype=str).reshape(n), "spec": np.array(spec, dtype=str)}
    with zipfile.ZipFile(f, "w", zipfile.ZIP_STORED, allowZip64=True) as z:
        with z.open("features.npy", "w", force_zip64=True) as member:
            np.lib.format.write_array_header_2_0(member, {"descr": np.dtype("<f4").str, "fortran_order": False,
                                                          "shape": (n, dim)})
            for x in store.feature_chunks():
                member.write(np.ascontiguousarray(x, "<f4").tobytes())
        for name, arr in small.items():
            with z.open(f"{name}.npy", "w", force_zip64=True) as member:
                np.lib.format.write_array(member, arr, allow_pickle=False)


# ---- import ------------------------------------------------------------------------------------
READ_ROWS = 65536  # rows read and committed at a time (fewer for wide vectors: about 64 MiB of features)


@dataclass
class Imported:
    """The checked content of a file to import (:func:`read_features`; importing streams it instead)."""

    ids: list[str]
    labels: list[str | None]
    hashes: list[str] | None
    features: np.ndarray
    spec: dict  # the feature spec as stored (FeatureSpec.to_dict)


def _spec(file: Path, meta, dim: int) -> dict:
    if meta:
        try:
            spec = loads(meta)
        except ValueError as e:
            raise UsageError(f"{file}: its {META_KEY} metadata is not JSON ({e})") from e
        if not isinstance(spec, dict) or not spec.get("backbone"):
            raise UsageError(f"{file}: its {META_KEY} metadata is not a feature spec (no backbone named)")
        spec.pop("package_version", None)
        if spec.get("dim") != dim:
            raise UsageError(f"{file}: its metadata says D={spec.get('dim')}, its vectors have {dim} values")
        return FeatureSpec.from_dict(spec).to_dict()
    return FeatureSpec.imported(file.name, file_sha256(file), dim).to_dict()


class _RowCheck:
    """The checks every batch passes, across the whole file: an id on every row, one D, finite values, and
    with `earlier` each id once (an import leaves that to the store's writer: ``new_paths``). Returns the
    batch's rows as a block (a missing sha256 is the hash of the vector). The ids seen are kept as 64-bit
    hashes (:class:`PathSet`); a repeated hash is confirmed against the batch and `earlier(id)`."""

    def __init__(self, file: Path, earlier: Callable[[str], bool] | None):
        self.file, self.earlier, self.first = file, earlier, None
        self.seen = PathSet() if earlier else None

    def __call__(self, b: Batch) -> RowBlock:
        file, x = self.file, b.features
        if None in b.ids or "" in b.ids:
            empty = next(k for k, i in enumerate(b.ids) if i is None or i == "")
            raise UsageError(f"{file}: row {b.start + empty} has no id")
        for k in self.seen.add(b.ids) if self.seen is not None else ():
            i = b.ids[k]
            if i in b.ids[:k] or self.earlier(i):
                raise _repeated(file, i)
        if self.first is None:
            self.first = (b.ids[0], x.shape[1]) if b.ids else None
        elif x.shape[1] != self.first[1]:
            raise UsageError(f"{file}: vectors of different lengths: {self.first[0]!r} has {self.first[1]} values, "
                             f"{b.ids[0]!r} has {x.shape[1]}")
        if x.shape[1] == 0:
            raise UsageError(f"{file}: the feature vectors are empty")
        bad = ~np.isfinite(x).all(axis=1)
        if bad.any():
            raise UsageError(f"{file}: the features of {b.ids[int(np.argmax(bad))]!r} hold NaN or infinity "
                             f"({int(bad.sum())} rows of this batch do); fix or drop them")
        labels = [None if lab == "" else lab for lab in b.labels] if "" in b.labels else b.labels
        return RowBlock(list(b.ids), list(labels), _hashes(b.hashes, x))


def _repeated(file: Path, i: str) -> UsageError:
    return UsageError(f"{file}: the id {i!r} appears more than once; ids must be unique")


def _hashes(given: list | None, x: np.ndarray) -> list[str]:
    """The batch's sha256 column: the file's, where it gives one; else the sha256 of the row's float32 bytes."""
    data = np.ascontiguousarray(x, np.float32).tobytes()
    step, sha = 4 * x.shape[1], hashlib.sha256
    if given is None:
        return [sha(data[s:s + step]).hexdigest() for s in range(0, len(data), step)]
    return [h if isinstance(h, str) and h else sha(data[k * step:(k + 1) * step]).hexdigest()
            for k, h in enumerate(given)]


@contextlib.contextmanager
def _checked(file, columns: Columns | None, max_dim: int, batch: int, earlier: Callable[[str], bool] | None):
    """(spec, batches of (features, RowBlock)) of a file to import, each batch checked as it is read;
    `earlier(id)`: whether a row of that id was read before (asked only when its hash was seen); None:
    repeated ids are left to the caller."""
    file = Path(file)
    _format(file, "the file ")
    if not file.is_file():
        raise UsageError(f"{file} does not exist")
    with open_source(file, columns or Columns(), max_dim, batch) as src:
        batches = iter(src.batches)
        first = next(batches, None) if src.rows else None
        if first is None or not len(first.ids):
            raise UsageError(f"{file} holds no rows; nothing to import")
        check = _RowCheck(file, earlier)
        spec = _spec(file, src.meta, first.features.shape[1])
        yield spec, ((b.features, check(b)) for b in itertools.chain([first], batches))


def read_features(file, columns: Columns | None = None, max_dim: int = MAX_DIM) -> Imported:
    """Read and check a Parquet or .npz file of features, all at once (nothing is written)."""
    xs, ids, labels, hashes = [], [], [], []
    with _checked(file, columns, max_dim, READ_ROWS, lambda i: i in ids) as (spec, batches):
        for x, block in batches:
            xs.append(x)
            ids += block.path
            labels += block.label
            hashes += block.sha256
    return Imported(ids, labels, hashes, np.concatenate(xs), spec)


def import_features(file, out, columns: Columns | None = None, batch: int = READ_ROWS,
                    max_dim: int = MAX_DIM) -> FeatureStore:
    """Build the feature store `out` from a Parquet or .npz file; return it. `out` must not exist yet.

    The file is read and committed `batch` rows at a time (fewer for wide vectors), in bounded memory;
    D is capped at `max_dim`. A file refused at any row leaves nothing behind."""
    out = Path(out)
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise UsageError(f"{out} exists; import into a new folder")
    if Path(file).resolve() == out.resolve() or out.resolve() in Path(file).resolve().parents:
        raise UsageError(f"out={out} would write over the input {file}")
    existed = out.exists()
    try:
        with _checked(file, columns, max_dim, batch, None) as (spec, batches):
            store = _write_store(file, out, spec, batches)
    except BaseException:  # nothing left behind: the folder as it was (absent, or empty)
        shutil.rmtree(out, ignore_errors=True)
        if existed:
            out.mkdir()
        raise
    return store


def _write_store(file, out: Path, spec: dict, batches) -> FeatureStore:
    """The store, written a batch at a time; each id once (the writer refuses a block repeating a path)."""
    writer = open_writer(out, FeatureSpec.of(spec).request().to_dict())
    n = 0
    try:
        writer.set_spec(spec)
        writer.meta["imported_from"] = {"file": str(Path(file).resolve()), "sha256": file_sha256(file)}
        for x, block in batches:
            writer.append_block(x, block, new_paths=True)
            n += len(block)
    except RepeatedPath as e:
        writer.abort()
        raise _repeated(Path(file), e.path) from None
    except BaseException:
        writer.abort()
        raise
    store = writer.close()
    writer.write_report({"complete": True, "imported_from": str(file), "featurized": 0, "discovered": n,
                         "skipped": []})
    return store


# ---- scoring a store ---------------------------------------------------------------------------
def is_feature_store(path) -> bool:
    return (Path(path) / "meta.json").is_file()


@dataclass
class StoreScoring:
    """What scoring a feature store did (the CLI prints ``summary()``)."""

    store: FeatureStore

    def summary(self) -> str:
        return f"{len(self.store)} rows of the feature store {self.store.root} scored"


def predict_store(clf, store, predict=None):
    """(ids, probabilities, StoreScoring) for every live row of a store; refuses another spec.
    `predict(clf, store)` replaces :func:`store_proba` (what it returns takes the probabilities' place)."""
    store = store if isinstance(store, FeatureStore) else FeatureStore.open(store)
    clf.check_spec(store.spec, str(store.root), store.meta.get("data_dir"))
    return store.paths, (predict or store_proba)(clf, store), StoreScoring(store)


def store_chunks(store: FeatureStore, keep=None):
    """The features of the store's live rows (or of those at the sorted positions `keep`), a chunk of rows at
    a time: the store's features are never all in memory at once."""
    keep = None if keep is None else np.asarray(keep, np.int64)
    start = 0
    for x in store.feature_chunks():
        end = start + len(x)
        if keep is not None:
            a, b = np.searchsorted(keep, [start, end])
            x = x[keep[a:b] - start]
        if len(x):
            yield x
        start = end


def store_proba(clf, store: FeatureStore, keep=None) -> np.ndarray:
    """`clf`'s probabilities for the store's live rows (or those at the sorted positions `keep`),
    computed a chunk of rows at a time (:func:`store_chunks`)."""
    out = [clf.predict_proba(x) for x in store_chunks(store, keep)]
    return np.concatenate(out) if out else np.zeros((0, len(clf.classes_)))


__all__ = ["export_features", "import_features", "read_features", "Columns", "predict_store", "store_chunks",
           "store_proba"]
