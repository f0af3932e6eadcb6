"""Imports are bounded: what a file declares is checked before it is read, and rows stream a batch at a time
(D06: a compressed member's size and inflation capped, as for zip archives; D13: resource limits on files
handed over; E-ERR: each refusal names the file, the row or member, and what to do)."""
from __future__ import annotations

import io
import zipfile

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from pipeline.cli import main
from pipeline.store import FeatureStore
from pipeline.store import imports as imports_module
from pipeline.store.exchange import import_features


def _bomb_npz(path, rows=20_000, dim=1000):
    """An .npz as np.savez_compressed writes it, whose features.npy of zeros inflates about 1000 times."""
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED, compresslevel=9) as z:
        with z.open("features.npy", "w", force_zip64=True) as m:
            np.lib.format.write_array_header_1_0(m, {"descr": "<f4", "fortran_order": False, "shape": (rows, dim)})
            zeros = bytes(4 * dim * 1000)
            for _ in range(rows // 1000):
                m.write(zeros)
        with z.open("ids.npy", "w") as m:
            np.lib.format.write_array(m, np.array([str(i) for i in range(rows)]))


def _never_read(monkeypatch):
    reads = []
    real = imports_module._member_rows
    monkeypatch.setattr(imports_module, "_member_rows", lambda *a: reads.append(a) or real(*a))
    return reads


def test_an_npz_member_that_inflates_a_thousand_times_is_refused_before_it_is_read(tmp_path, capsys, monkeypatch):
    """The attack of issue 27 (a 7.8 MB .npz whose features.npy inflates to 8 GB took 7.85 GB of memory),
    here 80 MB from about 80 KB: refused from the zip header, exit 2, nothing read and nothing written."""
    f = tmp_path / "bomb.npz"
    _bomb_npz(f)
    reads = _never_read(monkeypatch)
    assert main(["import-features", str(f), "--out", str(tmp_path / "s")]) == 2
    err = capsys.readouterr().err
    assert "member 'features.npy' inflates" in err and "more than 200 times" in err and str(f) in err
    assert not reads and not (tmp_path / "s").exists()


def test_an_npz_member_declaring_more_than_it_holds_is_refused_before_it_is_read(tmp_path, monkeypatch):
    buf = io.BytesIO()
    np.lib.format.write_array_header_1_0(buf, {"descr": "<f4", "fortran_order": False, "shape": (10 ** 6, 2048)})
    f = tmp_path / "liar.npz"
    with zipfile.ZipFile(f, "w") as z:
        z.writestr("features.npy", buf.getvalue() + bytes(16))
        z.writestr("ids.npy", b"")
    reads = _never_read(monkeypatch)
    with pytest.raises(ValueError, match=r"member 'features.npy' declares a float32 array of shape \(1000000, 2048\)"):
        import_features(f, tmp_path / "s")
    assert not reads and not (tmp_path / "s").exists()


@pytest.mark.parametrize("kind", ["npz", "fixed", "list"])
def test_the_feature_dimension_is_capped_and_the_cap_can_be_raised(tmp_path, capsys, kind):
    """D at most 65,536 by default (checked from the .npz header or the Parquet schema before reading;
    for lists of varying length, from the first row), raised with --max-dim."""
    x = np.ones((2, 70_000), np.float32)
    f = tmp_path / ("w.npz" if kind == "npz" else "w.parquet")
    if kind == "npz":
        np.savez(f, ids=np.array(["a", "b"]), features=x)
    else:
        values = pa.array(x.reshape(-1))
        col = (pa.FixedSizeListArray.from_arrays(values, 70_000) if kind == "fixed"
               else pa.ListArray.from_arrays(pa.array([0, 70_000, 140_000], pa.int32()), values))
        pq.write_table(pa.table({"id": ["a", "b"], "features": col}), f)
    assert main(["import-features", str(f), "--out", str(tmp_path / "s")]) == 2
    err = capsys.readouterr().err
    assert "more than the 65,536" in err and "raise the limit: --max-dim 70000" in err
    assert not (tmp_path / "s").exists()
    assert main(["import-features", str(f), "--out", str(tmp_path / "s"), "--max-dim", "70000"]) == 0
    assert FeatureStore.open(tmp_path / "s").features.shape == (2, 70_000)


def test_a_row_group_declaring_more_values_than_rows_times_d_is_refused_before_decoding(tmp_path):
    """A few bytes of run-length encoding can declare millions of zeros in one row: the row group's value
    count, from the file's footer, is checked against rows x max_dim first."""
    f = tmp_path / "rle.parquet"
    col = pa.ListArray.from_arrays(pa.array([0, 200_000, 200_001], pa.int32()), pa.array(np.zeros(200_001, np.float32)))
    pq.write_table(pa.table({"id": ["a", "b"], "features": col}), f)
    with pytest.raises(ValueError, match="row group 0 declares 200,001 feature values for 2 rows, more than the "
                                         "1,000 per row"):
        import_features(f, tmp_path / "s", max_dim=1000)
    assert not (tmp_path / "s").exists()


def test_parquet_streams_in_batches_and_gives_what_one_read_would(tmp_path, monkeypatch):
    """A long file is never read whole (pq.read_table is not called): batches of at most `batch` rows,
    across row groups, each committed as it comes; the store equals the file."""
    n, d = 1000, 8
    x = np.random.default_rng(0).normal(size=(n, d)).astype(np.float32)
    f = tmp_path / "long.parquet"
    pq.write_table(pa.table({"id": [f"r{i}" for i in range(n)], "label": [f"c{i % 3}" for i in range(n)],
                             "features": pa.FixedSizeListArray.from_arrays(pa.array(x.reshape(-1)), d)}),
                   f, row_group_size=300)
    monkeypatch.setattr(pq, "read_table", lambda *a, **k: pytest.fail("the whole file was read at once"))
    sizes = []
    real = imports_module._list_matrix
    monkeypatch.setattr(imports_module, "_list_matrix", lambda *a: sizes.append(len(a[1])) or real(*a))
    store = import_features(f, tmp_path / "s", batch=128)
    assert max(sizes) <= 128 and sum(sizes) == n
    assert store.paths == [f"r{i}" for i in range(n)] and list(store.labels[:4]) == ["c0", "c1", "c2", "c0"]
    np.testing.assert_array_equal(FeatureStore.open(tmp_path / "s").features, x)


def test_binary_ids_are_decoded_as_utf8_or_refused_naming_the_row(tmp_path, capsys):
    """Binary id columns were imported as Python reprs ("b'\\xff\\xfe'")."""
    f = tmp_path / "b.parquet"
    feats = pa.array([[1.0, 2.0], [3.0, 4.0]], pa.list_(pa.float32()))
    pq.write_table(pa.table({"id": pa.array([b"caf\xc3\xa9.jpg", b"b.jpg"], pa.binary()), "features": feats}), f)
    assert FeatureStore.open(import_features(f, tmp_path / "ok").root).paths == ["café.jpg", "b.jpg"]
    pq.write_table(pa.table({"id": pa.array([b"a.jpg", b"\xff\xfe"], pa.binary()), "features": feats}), f)
    assert main(["import-features", str(f), "--out", str(tmp_path / "s")]) == 2
    err = capsys.readouterr().err
    assert "row 1 has an id that is not UTF-8 text (b'\\xff\\xfe')" in err and not (tmp_path / "s").exists()
    np.savez(tmp_path / "b.npz", ids=np.array([b"a", b"\xff\xfe"]), features=np.ones((2, 2), np.float32))
    with pytest.raises(ValueError, match="row 1 has an id that is not UTF-8 text"):
        import_features(tmp_path / "b.npz", tmp_path / "s")


def test_metadata_nested_100000_deep_is_refused_naming_the_file(tmp_path, capsys):
    f = tmp_path / "deep.parquet"
    table = pa.table({"id": ["a"], "features": pa.array([[1.0]], pa.list_(pa.float32()))})
    pq.write_table(table.replace_schema_metadata({"tf_feature_pipeline": "[" * 100_000 + "]" * 100_000}), f)
    assert main(["import-features", str(f), "--out", str(tmp_path / "s")]) == 2
    err = capsys.readouterr().err
    assert str(f) in err and "nested too deep" in err and "RecursionError" not in err


def _long_file(path, n, d=4, sha_every=0):
    """n rows with awkward ids (quotes, non-ASCII, a newline), labels of three classes and some unlabelled,
    distinct vectors; with `sha_every`, a sha256 column giving every k-th row's hash (the others empty)."""
    x = (np.arange(n * d, dtype=np.float32).reshape(n, d) / 7).astype(np.float32)
    ids = [f'dir "{i % 5}"/é\n{i}.jpg' for i in range(n)]
    labels = [None if i % 11 == 0 else f"c{i % 3}" for i in range(n)]
    cols = {"id": ids, "label": labels, "features": pa.FixedSizeListArray.from_arrays(pa.array(x.reshape(-1)), d)}
    if sha_every:
        cols["sha256"] = [f"{i:064x}" if i % sha_every == 0 else "" for i in range(n)]
    pq.write_table(pa.table(cols), path, row_group_size=50_000)
    return ids, labels, x


@pytest.mark.slow
def test_an_import_of_200k_rows_reads_back_every_id_label_hash_and_feature_exactly(tmp_path):
    """Issue 27: a 2 MB file of 3 M rows took 4 minutes and 1.8 GB, from one JSON line and dict per row; each
    batch is now one line of columns. What comes back must be exactly what the file held."""
    import hashlib

    n = 200_000
    ids, labels, x = _long_file(tmp_path / "long.parquet", n, sha_every=3)
    assert main(["import-features", str(tmp_path / "long.parquet"), "--out", str(tmp_path / "s")]) == 0
    store = FeatureStore.open(tmp_path / "s")
    assert store.paths == ids and list(store.labels) == labels and store.classes == ["c0", "c1", "c2"]
    np.testing.assert_array_equal(store.features, x)
    assert store.sha256[:3] == [f"{0:064x}", hashlib.sha256(x[1].tobytes()).hexdigest(),
                                hashlib.sha256(x[2].tobytes()).hexdigest()] and store.sha256[3] == f"{3:064x}"
    assert len((tmp_path / "s" / "rows.jsonl").read_bytes().splitlines()) == -(-n // 65536)  # a line per batch
    assert main(["verify", str(tmp_path / "s")]) == 0


@pytest.mark.slow
def test_an_import_holds_one_batch_of_rows_however_long_the_file(tmp_path, monkeypatch):
    """Memory is bounded by the batch, not the file: the writer keeps no row (8 bytes a row for the id check),
    and the Python memory an import of 4x the rows peaks at is nearly the same."""
    import tracemalloc

    from pipeline.store.writer import StoreWriter

    held = []
    real = StoreWriter.append_block

    def spy(self, features, block, **kw):
        real(self, features, block, **kw)
        held.append((len(block), self._rows, self._paths.nbytes, self._count))

    monkeypatch.setattr(StoreWriter, "append_block", spy)
    peaks = {}
    for n in (20_000, 80_000):
        _long_file(tmp_path / f"{n}.parquet", n)
        tracemalloc.start()
        store = import_features(tmp_path / f"{n}.parquet", tmp_path / f"s{n}", batch=2048)
        peaks[n] = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()
        assert len(store) == n and store.classes == ["c0", "c1", "c2"]
    assert all(size <= 2048 and rows is None and nbytes == 8 * count for size, rows, nbytes, count in held)
    assert peaks[80_000] < 1.5 * peaks[20_000], peaks  # one dict per row made it 4x


def test_a_repeated_id_in_a_later_batch_is_refused_even_when_ids_hash_alike(tmp_path, monkeypatch, capsys):
    """Ids are checked as 64-bit hashes; a hash seen before is confirmed against the log, so a collision
    (forced here: ids of one length hash alike) imports and a real repeat is refused, naming the id."""
    from pipeline.errors import UsageError
    from pipeline.store import pathset, writer

    monkeypatch.setattr(writer, "PathSet", lambda: pathset.PathSet(key=len))
    f = tmp_path / "f.parquet"
    feats = pa.FixedSizeListArray.from_arrays(pa.array(np.arange(12, dtype=np.float32)), 2)
    pq.write_table(pa.table({"id": ["a1", "a2", "a3", "b1", "b2", "b3"], "features": feats}), f)
    store = import_features(f, tmp_path / "ok", batch=2)
    assert FeatureStore.open(store.root).paths == ["a1", "a2", "a3", "b1", "b2", "b3"] and len(store) == 6
    pq.write_table(pa.table({"id": ["a1", "a2", "a3", "b1", "a2", "b3"], "features": feats}), f)
    with pytest.raises(UsageError, match="the id 'a2' appears more than once; ids must be unique"):
        import_features(f, tmp_path / "s", batch=2)  # a2 in the first batch, again in the third
    assert not (tmp_path / "s").exists()
    assert main(["import-features", str(f), "--out", str(tmp_path / "s")]) == 2  # within one batch
    assert "the id 'a2' appears more than once" in capsys.readouterr().err and not (tmp_path / "s").exists()
