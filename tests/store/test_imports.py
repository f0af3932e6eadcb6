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
