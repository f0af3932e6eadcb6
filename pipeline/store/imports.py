"""Files of features made elsewhere (Parquet, .npz), read a batch of rows at a time in bounded memory.

What a file declares is checked before its data is read: the feature dimension D (at most
``MAX_DIM``, 65,536, unless raised), each .npz member's declared shape x itemsize against its
uncompressed size in the zip header, and the inflation of a compressed member (at most
``MAX_INFLATION`` times its compressed size); a Parquet file's values per row group against its
rows x D. Then rows stream: Parquet in record batches (``ParquetFile.iter_batches``), an .npz member
a slice of rows at a time, so neither a small file that inflates to gigabytes nor a long file is
ever held whole. Ids and labels are text: binary values are decoded as UTF-8, or refused naming the
row.
"""
from __future__ import annotations

import contextlib
import zipfile
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ..errors import UsageError

META_KEY = "tf_feature_pipeline"
MAX_DIM = 65_536  # values per feature vector (override: max_dim= / --max-dim)
MAX_INFLATION = 200  # a compressed .npz member may hold at most this many times its compressed size
BATCH_VALUES = 1 << 24  # feature values per batch read (64 MiB of float32)
_SPEC_BYTES = 1 << 20


@dataclass
class Columns:
    """Which columns of an imported file hold what; label None: 'label' (or, in an .npz, 'labels') when
    the file has one. An .npz without an 'id' array uses 'ids' (the name of this project's exports)."""

    id: str = "id"
    features: str = "features"
    label: str | None = None


@dataclass
class Batch:
    """Consecutive rows of a file: ids and labels as text (labels None when absent), the sha256 column
    when the file has one, and the features (rows x D float32)."""

    start: int
    ids: list
    labels: list
    hashes: list | None
    features: np.ndarray


@dataclass
class Source:
    """A file to import, checked from what it declares: rows, D (None until the first batch for Parquet
    lists of varying length), the spec JSON it carries, and its batches."""

    file: Path
    rows: int
    dim: int | None
    meta: str | None
    batches: Iterator[Batch] = field(repr=False)


def text(file: Path, what: str, values: list, start: int) -> list:
    """Ids or labels as str (None stays None); bytes are decoded as UTF-8 or refused naming the row."""
    if set(map(type, values)) <= {str, type(None)}:  # a text column (the usual case): as it is
        return values
    out = []
    for k, v in enumerate(values):
        if isinstance(v, (bytes, bytearray, np.bytes_)):
            try:
                v = bytes(v).decode("utf-8")
            except UnicodeDecodeError:
                raise UsageError(f"{file}: row {start + k} has a{'n' if what[0] in 'aeiou' else ''} {what} that is "
                                 f"not UTF-8 text ({bytes(v)[:40]!r}); store {what}s as text") from None
        out.append(None if v is None else str(v))
    return out


def batch_rows(dim: int | None, max_dim: int, batch: int) -> int:
    """Rows per batch: `batch`, fewer for wide vectors (about BATCH_VALUES values at a time)."""
    return max(1, min(batch, BATCH_VALUES // max(1, dim or max_dim)))


def _dim_ok(file: Path, dim: int, max_dim: int, what: str = "its feature vectors have") -> int:
    if dim > max_dim:
        raise UsageError(f"{file}: {what} {dim} values, more than the {max_dim:,} allowed (a file that is not "
                         f"features, or crafted to exhaust memory); if it is right, raise the limit: "
                         f"max_dim={dim}")
    return dim


@contextlib.contextmanager
def open_source(file: Path, cols: Columns, max_dim: int = MAX_DIM, batch: int = 4096):
    """The checked :class:`Source` of a .parquet or .npz file (nothing read but what it declares)."""
    if file.suffix.lower() == ".parquet":
        yield _parquet(file, cols, max_dim, batch)
        return
    try:
        zf = zipfile.ZipFile(file)
    except (zipfile.BadZipFile, OSError, EOFError) as e:
        raise UsageError(f"{file} is not a readable .npz file: {e}") from e
    with zf:
        yield _npz(file, zf, cols, max_dim, batch)


# ---- Parquet -----------------------------------------------------------------------------------
def _missing(file: Path, wanted: list[str], have: list[str]) -> None:
    gone = [c for c in wanted if c not in have]
    if gone:
        raise UsageError(f"{file} has no column {', '.join(repr(c) for c in gone)}; its columns are "
                         f"{', '.join(repr(c) for c in have) or 'none'} (give the column "
                         f"names: id_column=, features_column=, label_column=)")


def label_column(cols: Columns, have: list[str]) -> str | None:
    if cols.label is not None:
        return cols.label
    return next((c for c in ("label", "labels") if c in have), None)


def _parquet(file: Path, cols: Columns, max_dim: int, batch: int) -> Source:
    import pyarrow as pa
    import pyarrow.parquet as pq

    try:
        pf = pq.ParquetFile(file)
    except (pa.ArrowException, OSError) as e:
        raise UsageError(f"{file} is not a readable Parquet file: {e}") from e
    schema = pf.schema_arrow
    have = schema.names
    label = label_column(cols, have)
    _missing(file, [cols.id, cols.features] + ([label] if label else []), have)
    ftype = schema.field(cols.features).type
    if not (pa.types.is_list(ftype) or pa.types.is_large_list(ftype) or pa.types.is_fixed_size_list(ftype)):
        raise UsageError(f"{file}: the features column holds {ftype}, not lists of numbers")
    if not (pa.types.is_floating(ftype.value_type) or pa.types.is_integer(ftype.value_type)):
        raise UsageError(f"{file}: the features column holds lists of {ftype.value_type}, not of numbers")
    dim = _dim_ok(file, ftype.list_size, max_dim) if pa.types.is_fixed_size_list(ftype) else None
    widest = _check_value_counts(file, pf, cols.features, max_dim)
    meta = (schema.metadata or {}).get(META_KEY.encode())
    names = [cols.id, cols.features] + ([label] if label else []) + (["sha256"] if "sha256" in have else [])
    rows = batch_rows(dim or widest, max_dim, batch)

    def batches():
        start = 0
        try:
            for rb in pf.iter_batches(batch_size=rows, columns=names, use_threads=False):
                ids = text(file, "id", rb.column(cols.id).to_pylist(), start)
                labels = text(file, "label", rb.column(label).to_pylist(), start) if label else [None] * len(ids)
                hashes = rb.column("sha256").to_pylist() if "sha256" in names else None
                x = _list_matrix(file, rb.column(cols.features), ids, max_dim)
                yield Batch(start, ids, labels, hashes, x)
                start += len(ids)
        except pa.ArrowException as e:
            raise UsageError(f"{file}: row group after row {start} cannot be read ({e})") from e

    return Source(file, pf.metadata.num_rows, dim, meta.decode("utf-8", "replace") if meta else None, batches())


def _check_value_counts(file: Path, pf, column: str, max_dim: int) -> int:
    """Each row group declares how many feature values it holds: at most rows x max_dim (checked before
    any is decoded: a few bytes of run-length encoding can declare billions of zeros). Returns the most
    values per row declared (what sizes the batches of lists of varying length)."""
    md, widest = pf.metadata, 1
    for g in range(md.num_row_groups):
        rg = md.row_group(g)
        for c in range(rg.num_columns):
            chunk = rg.column(c)
            if chunk.path_in_schema.split(".")[0] == column and chunk.num_values > rg.num_rows * max_dim + rg.num_rows:
                need = -(-chunk.num_values // max(1, rg.num_rows))
                raise UsageError(f"{file}: row group {g} declares {chunk.num_values:,} feature values for "
                                 f"{rg.num_rows:,} rows, more than the {max_dim:,} per row allowed (a file that is "
                                 f"not features, or crafted to exhaust memory); if it is right, raise the limit: "
                                 f"max_dim={need}")
            if chunk.path_in_schema.split(".")[0] == column:
                widest = max(widest, -(-chunk.num_values // max(1, rg.num_rows)))
    return widest


def _list_matrix(file: Path, column, ids, max_dim: int) -> np.ndarray:
    """An N x D float32 matrix from a list or fixed-size-list column; refuses nulls and ragged rows."""
    import pyarrow.compute as pc

    if column.null_count:
        raise UsageError(f"{file}: the row with id {ids[column.is_null().to_pylist().index(True)]!r} has no features")
    lengths = pc.list_value_length(column).to_numpy(zero_copy_only=False)
    if len(lengths) and (lengths != lengths[0]).any():
        i = int(np.argmax(lengths != lengths[0]))
        raise UsageError(f"{file}: vectors of different lengths: {ids[0]!r} has {lengths[0]} values, "
                         f"{ids[i]!r} has {lengths[i]}")
    dim = _dim_ok(file, int(lengths[0]), max_dim, f"the row with id {ids[0]!r} has") if len(lengths) else 0
    values = pc.list_flatten(column)
    if values.null_count:
        raise UsageError(f"{file}: the features hold null values; fill or drop those rows")
    return values.to_numpy(zero_copy_only=False).astype(np.float32, copy=False).reshape(len(column), dim)


# ---- .npz --------------------------------------------------------------------------------------
@dataclass
class _Member:
    info: zipfile.ZipInfo
    shape: tuple
    dtype: np.dtype
    fortran: bool


def _npz_members(file: Path, zf: zipfile.ZipFile) -> dict[str, _Member]:
    """Every member's header, checked as head files are before any data is read: a .npy of numbers or
    text whose declared size fits its uncompressed size, compressed at most MAX_INFLATION times."""
    out = {}
    for info in zf.infolist():
        where = f"{file}: member {info.filename!r}"
        if info.compress_type not in (zipfile.ZIP_STORED, zipfile.ZIP_DEFLATED):
            raise UsageError(f"{where} is compressed with method {info.compress_type}; save with numpy.savez")
        if info.compress_type != zipfile.ZIP_STORED and info.file_size > MAX_INFLATION * max(1, info.compress_size):
            raise UsageError(f"{where} inflates {info.compress_size:,} bytes to {info.file_size:,}, more than "
                             f"{MAX_INFLATION} times (a decompression bomb?); it is not read. Save real features "
                             f"with numpy.savez (uncompressed)")
        try:
            with zf.open(info) as f:
                shape, fortran, dtype = _npy_header(f)
        except (ValueError, EOFError, OSError, zipfile.BadZipFile) as e:
            raise UsageError(f"{where} is not a readable .npy array ({e})") from e
        if dtype.hasobject or dtype.kind not in "biufUS":
            raise UsageError(f"{where} has dtype {dtype}, which needs pickle to load (object arrays) or is not "
                             f"numbers or text: refused; save plain numeric and unicode arrays")
        if int(np.prod(shape, dtype=np.int64)) * dtype.itemsize > info.file_size:
            raise UsageError(f"{where} declares a {dtype} array of shape {shape}, more data than the "
                             f"{info.file_size:,} bytes it holds; the file is damaged or crafted")
        out[info.filename.removesuffix(".npy")] = _Member(info, shape, dtype, fortran)
    return out


def _npy_header(f):
    version = np.lib.format.read_magic(f)
    read = {(1, 0): np.lib.format.read_array_header_1_0, (2, 0): np.lib.format.read_array_header_2_0}.get(version)
    if read is None:
        raise ValueError(f".npy version {version}, not 1.0 or 2.0")
    return read(f, max_header_size=10_000)


def _member_rows(file: Path, zf, m: _Member, rows: int):
    """The member's array `rows` rows at a time (a Fortran-ordered or 0-d one whole: its size is checked)."""
    with zf.open(m.info) as f:
        _npy_header(f)
        if m.fortran or not m.shape:
            data = _read_exact(file, m, f, int(np.prod(m.shape, dtype=np.int64)) * m.dtype.itemsize)
            arr = np.frombuffer(data, m.dtype).reshape(m.shape, order="F" if m.fortran else "C")
            yield from (arr[s:s + rows] for s in range(0, len(arr), rows)) if m.shape else [arr]
            return
        per_row = int(np.prod(m.shape[1:], dtype=np.int64)) * m.dtype.itemsize
        for s in range(0, m.shape[0], rows):
            k = min(rows, m.shape[0] - s)
            yield np.frombuffer(_read_exact(file, m, f, k * per_row), m.dtype).reshape((k, *m.shape[1:]))


def _read_exact(file: Path, m: _Member, f, size: int) -> bytes:
    data = f.read(size)
    if len(data) != size:
        raise UsageError(f"{file}: member {m.info.filename!r} is cut short; the file is damaged")
    return data


def _npz(file: Path, zf, cols: Columns, max_dim: int, batch: int) -> Source:
    members = _npz_members(file, zf)
    have = list(members)
    if cols.id == "id" and "id" not in have and "ids" in have:  # the name this project's exports use
        cols = Columns("ids", cols.features, cols.label)
    label = label_column(cols, have)
    _missing(file, [cols.id, cols.features] + ([label] if label else []), have)
    x = members[cols.features]
    n = x.shape[0] if x.shape else 0
    if len(x.shape) != 2 or x.dtype.kind not in "biuf" or members[cols.id].shape != (n,):
        raise UsageError(f"{file}: {cols.features!r} must be an N x D numeric array with one row per id; "
                         f"it is {x.dtype} {x.shape} for ids of shape {members[cols.id].shape}")
    dim = _dim_ok(file, x.shape[1], max_dim)
    meta = _npz_spec(file, zf, members.get("spec"))
    others = [c for c in (label, "sha256") if c and c in members]
    for c in others:
        if members[c].shape != (n,):
            raise UsageError(f"{file}: {c!r} has shape {members[c].shape}, not one value per row ({n})")
    rows = batch_rows(dim, max_dim, batch)

    def batches():
        readers = {c: _member_rows(file, zf, members[c], rows) for c in [cols.features, cols.id, *others]}
        start = 0
        for parts in zip(*readers.values()):
            got = dict(zip(readers, parts))
            ids = text(file, "id", got[cols.id].tolist(), start)
            labels = (text(file, "label", got[label].tolist(), start) if label else [None] * len(ids))
            hashes = text(file, "sha256", got["sha256"].tolist(), start) if "sha256" in got else None
            yield Batch(start, ids, labels, hashes, got[cols.features].astype(np.float32))
            start += len(ids)

    return Source(file, n, dim, meta, batches())


def _npz_spec(file: Path, zf, m: _Member | None) -> str | None:
    """The spec JSON an export of this project carries (a 0-d text array), size-capped."""
    if m is None or m.shape or m.dtype.kind != "U":
        return None
    if m.dtype.itemsize > _SPEC_BYTES:
        raise UsageError(f"{file}: its 'spec' member is {m.dtype.itemsize:,} bytes, not a feature spec")
    return str(next(_member_rows(file, zf, m, 1))[()])
