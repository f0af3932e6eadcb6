"""Feature stores in and out: Parquet and NumPy (.npz) files other tools read and write.

Export: one row per live image of a store, in the store's order: ``id`` (the image's path
relative to the featurized folder, as in score CSVs), ``label`` (null / "" when unlabelled),
``sha256`` (the content hash the store keys on) and ``features`` (float32). A Parquet file keeps
the store's spec as JSON under the schema-metadata key ``tf_feature_pipeline``; an .npz file in
its 0-d ``spec`` array. Both are written atomically and never over an input.

Import: a Parquet or .npz file (list or fixed-size-list feature column, or an N x D array)
becomes a feature store written through the store's own writer. The project's exports keep
their spec, so they mix with stores made here; any other file gets the spec
``{"backbone": "imported", "source": NAME, "sha256": HASH, "dim": D}``. Everything is checked
before the store's folder is created, so a refused file leaves nothing behind.
"""
from __future__ import annotations

import hashlib
import json
import shutil
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..backbones.base import file_sha256
from ..errors import UsageError
from ..outputs import atomic_open
from ..spec import FeatureSpec
from ..versions import versions
from . import FeatureStore, open_writer

META_KEY = "tf_feature_pipeline"
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
@dataclass
class Columns:
    """Which columns of an imported file hold what; label None: 'label' (or, in an .npz, 'labels') when
    the file has one. An .npz without an 'id' array uses 'ids' (the name of this project's exports)."""

    id: str = "id"
    features: str = "features"
    label: str | None = None


@dataclass
class Imported:
    """The checked content of a file to import."""

    ids: list[str]
    labels: list[str | None]
    hashes: list[str] | None
    features: np.ndarray
    spec: dict  # the feature spec as stored (FeatureSpec.to_dict)


def _missing(file: Path, wanted: list[str], have: list[str]) -> None:
    gone = [c for c in wanted if c not in have]
    if gone:
        raise UsageError(f"{file} has no column {', '.join(repr(c) for c in gone)}; its columns are "
                         f"{', '.join(repr(c) for c in have) or 'none'} (give the column "
                         f"names: id_column=, features_column=, label_column=)")


def _label_column(cols: Columns, have: list[str]) -> str | None:
    if cols.label is not None:
        return cols.label
    return next((c for c in ("label", "labels") if c in have), None)


def _read_parquet(file: Path, cols: Columns):
    import pyarrow as pa
    import pyarrow.parquet as pq

    try:
        table = pq.read_table(file)
    except (pa.ArrowException, OSError) as e:
        raise UsageError(f"{file} is not a readable Parquet file: {e}") from e
    have = table.column_names
    label = _label_column(cols, have)
    _missing(file, [cols.id, cols.features] + ([label] if label else []), have)
    ids = table.column(cols.id).to_pylist()
    labels = table.column(label).to_pylist() if label else [None] * len(ids)
    hashes = table.column("sha256").to_pylist() if "sha256" in have else None
    meta = (table.schema.metadata or {}).get(META_KEY.encode())
    return ids, labels, hashes, _list_matrix(file, table.column(cols.features), ids), meta


def _list_matrix(file: Path, column, ids) -> np.ndarray:
    """An N x D float32 matrix from a list or fixed-size-list column; refuses nulls and ragged rows."""
    import pyarrow as pa
    import pyarrow.compute as pc

    column = column.combine_chunks() if isinstance(column, pa.ChunkedArray) else column
    if not (pa.types.is_list(column.type) or pa.types.is_large_list(column.type)
            or pa.types.is_fixed_size_list(column.type)):
        raise UsageError(f"{file}: the features column holds {column.type}, not lists of numbers")
    if column.null_count:
        raise UsageError(f"{file}: the row with id {ids[column.is_null().to_pylist().index(True)]!r} has no features")
    lengths = pc.list_value_length(column).to_numpy(zero_copy_only=False)
    if len(lengths) and (lengths != lengths[0]).any():
        i = int(np.argmax(lengths != lengths[0]))
        raise UsageError(f"{file}: vectors of different lengths: {ids[0]!r} has {lengths[0]} values, "
                         f"{ids[i]!r} has {lengths[i]}")
    dim = int(lengths[0]) if len(lengths) else 0
    values = pc.list_flatten(column)
    if not (pa.types.is_floating(values.type) or pa.types.is_integer(values.type)):
        raise UsageError(f"{file}: the features column holds lists of {values.type}, not of numbers")
    if values.null_count:
        raise UsageError(f"{file}: the features hold null values; fill or drop those rows")
    return values.to_numpy(zero_copy_only=False).astype(np.float32).reshape(len(column), dim)


def _read_npz(file: Path, cols: Columns):
    try:
        with np.load(file, allow_pickle=False) as z:
            arrays = {k: z[k] for k in z.files}
    except ValueError as e:  # object arrays need pickle: refused
        raise UsageError(f"{file} holds arrays that need pickle to load ({e}); save plain numeric and "
                         f"unicode arrays") from e
    except (OSError, EOFError) as e:
        raise UsageError(f"{file} is not a readable .npz file: {e}") from e
    have = list(arrays)
    if cols.id == "id" and "id" not in have and "ids" in have:  # the name this project's exports use
        cols = Columns("ids", cols.features, cols.label)
    label = _label_column(cols, have)
    _missing(file, [cols.id, cols.features] + ([label] if label else []), have)
    x = arrays[cols.features]
    ids = [str(v) for v in arrays[cols.id].reshape(-1)]
    if x.ndim != 2 or not np.issubdtype(x.dtype, np.number) or len(x) != len(ids):
        raise UsageError(f"{file}: {cols.features!r} must be an N x D numeric array with one row per id; "
                         f"it is {x.dtype} {x.shape} for {len(ids)} ids")
    labels = [str(v) or None for v in arrays[label].reshape(-1)] if label else [None] * len(ids)
    hashes = [str(v) for v in arrays["sha256"].reshape(-1)] if "sha256" in arrays else None
    meta = str(arrays["spec"]) if "spec" in arrays and arrays["spec"].ndim == 0 else None
    return ids, labels, hashes, x.astype(np.float32), meta


def _spec(file: Path, meta, dim: int) -> dict:
    if meta:
        try:
            spec = json.loads(meta)
        except ValueError as e:
            raise UsageError(f"{file}: its {META_KEY} metadata is not JSON ({e})") from e
        if not isinstance(spec, dict) or not spec.get("backbone"):
            raise UsageError(f"{file}: its {META_KEY} metadata is not a feature spec (no backbone named)")
        spec.pop("package_version", None)
        if spec.get("dim") != dim:
            raise UsageError(f"{file}: its metadata says D={spec.get('dim')}, its vectors have {dim} values")
        return FeatureSpec.from_dict(spec).to_dict()
    return FeatureSpec.imported(file.name, file_sha256(file), dim).to_dict()


def _check(file: Path, ids, labels, x: np.ndarray) -> None:
    if not len(ids):
        raise UsageError(f"{file} holds no rows; nothing to import")
    if any(i is None or str(i) == "" for i in ids):
        raise UsageError(f"{file}: row {next(k for k, i in enumerate(ids) if i is None or str(i) == '')} has no id")
    seen = set()
    for i in ids:
        if i in seen:
            raise UsageError(f"{file}: the id {i!r} appears more than once; ids must be unique")
        seen.add(i)
    bad = ~np.isfinite(x).all(axis=1)
    if bad.any():
        raise UsageError(f"{file}: the features of {ids[int(np.argmax(bad))]!r} hold NaN or infinity "
                         f"({int(bad.sum())} rows do); fix or drop them")
    if x.shape[1] == 0:
        raise UsageError(f"{file}: the feature vectors are empty")


def read_features(file, columns: Columns | None = None) -> Imported:
    """Read and check a Parquet or .npz file of features (nothing is written)."""
    file, cols = Path(file), columns or Columns()
    ext = _format(file, "the file ")
    if not file.is_file():
        raise UsageError(f"{file} does not exist")
    ids, labels, hashes, x, meta = (_read_parquet if ext == ".parquet" else _read_npz)(file, cols)
    ids = [None if i is None else str(i) for i in ids]
    _check(file, ids, labels, x)
    labels = [None if v is None or str(v) == "" else str(v) for v in labels]
    return Imported(ids, labels, hashes, x, _spec(file, meta, x.shape[1]))


def _row_hashes(data: Imported) -> list[str]:
    """The file's sha256 column, or a hash of each vector (identical vectors: the same image)."""
    if data.hashes and all(isinstance(h, str) and h for h in data.hashes):
        return data.hashes
    return [hashlib.sha256(row.tobytes()).hexdigest() for row in data.features]


def import_features(file, out, columns: Columns | None = None, batch: int = 4096) -> FeatureStore:
    """Build the feature store `out` from a Parquet or .npz file; return it. `out` must not exist yet."""
    data = read_features(file, columns)
    out = Path(out)
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise UsageError(f"{out} exists; import into a new folder")
    if Path(file).resolve() == out.resolve() or out.resolve() in Path(file).resolve().parents:
        raise UsageError(f"out={out} would write over the input {file}")
    spec = data.spec
    request = FeatureSpec.of(spec).request().to_dict()
    hashes = _row_hashes(data)
    rows = [{"path": i, "label": lab, "sha256": h} for i, lab, h in zip(data.ids, data.labels, hashes)]
    existed = out.exists()
    try:
        writer = open_writer(out, request)
        try:
            writer.set_spec(spec)
            writer.meta["imported_from"] = {"file": str(Path(file).resolve()), "sha256": file_sha256(file)}
            for s in range(0, len(rows), batch):
                writer.append(data.features[s:s + batch], rows[s:s + batch])
        except BaseException:
            writer.abort()
            raise
        store = writer.close()
        writer.write_report({"complete": True, "imported_from": str(file), "featurized": 0,
                             "discovered": len(rows), "skipped": []})
    except BaseException:  # nothing left behind: the folder as it was (absent, or empty)
        shutil.rmtree(out, ignore_errors=True)
        if existed:
            out.mkdir()
        raise
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
