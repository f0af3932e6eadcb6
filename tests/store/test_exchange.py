"""Feature stores in and out: Parquet/NPZ export, import of foreign features, scoring a store."""
from __future__ import annotations

import csv
import json
import subprocess
import sys

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from conftest import make_class_tree

from pipeline import FeatureStore, featurize
from pipeline.cli import main
from pipeline.store.exchange import Columns, export_features, import_features


@pytest.fixture(scope="module")
def stores(tmp_path_factory):
    """A labelled training store and a test store of other images, both of the bundled TFLite model."""
    root = tmp_path_factory.mktemp("exchange")
    train_dir = make_class_tree(root / "train", per_class=8)
    test_dir = root / "test"
    for c, colour in (("red", (230, 30, 30)), ("blue", (30, 30, 230))):
        from conftest import noise_image

        (test_dir / c).mkdir(parents=True)
        for i in range(5):
            noise_image(5000 + 17 * i + len(c), (80, 60), colour).save(test_dir / c / f"t{c}{i}.jpg", quality=90)
    train = featurize(train_dir, out=root / "f-train", progress=False, workers=2)
    test = featurize(test_dir, out=root / "f-test", progress=False, workers=2)
    return {"root": root, "train": train, "test": test, "test_dir": test_dir}


def _csv(path):
    with open(path, newline="", encoding="utf-8") as f:
        return {r["path"]: r for r in csv.DictReader(f)}


def test_parquet_export_reads_without_this_package(stores, tmp_path):
    # another process that never imports `pipeline` reads ids and vectors equal to the store's
    store = stores["train"]
    out = export_features(store, tmp_path / "train.parquet")
    code = ("import sys, json, pyarrow.parquet as pq, numpy as np\n"
            "t = pq.read_table(sys.argv[1])\n"
            "x = np.stack(t.column('features').to_numpy(zero_copy_only=False))\n"
            "np.save(sys.argv[2], x)\n"
            "spec = json.loads(t.schema.metadata[b'tf_feature_pipeline'])\n"
            "print(json.dumps({'ids': t.column('id').to_pylist(), 'labels': t.column('label').to_pylist(),\n"
            "  'sha': t.column('sha256').to_pylist(), 'spec': spec, 'type': str(t.schema.field('features').type),\n"
            "  'imported': 'pipeline' in sys.modules}))\n")
    res = subprocess.run([sys.executable, "-c", code, str(out), str(tmp_path / "x.npy")], cwd=tmp_path,
                         capture_output=True, text=True, check=True)
    got = json.loads(res.stdout)
    assert not got["imported"]
    assert got["ids"] == store.paths and got["sha"] == store.sha256
    assert got["labels"] == list(store.labels)
    assert got["type"] == "fixed_size_list<element: float>[1280]"
    np.testing.assert_array_equal(np.load(tmp_path / "x.npy"), store.features)
    assert got["spec"]["layer"] == "penultimate" and got["spec"]["dim"] == 1280
    assert got["spec"]["model"] == store.spec["model"] and got["spec"]["preprocess"] == store.spec["preprocess"]
    assert "package_version" in got["spec"]


def test_npz_export_loads_without_pickle(stores, tmp_path):
    store = stores["train"]
    out = export_features(store, tmp_path / "train.npz")
    with np.load(out, allow_pickle=False) as z:
        assert z["features"].dtype == np.float32 and z["features"].shape == (len(store), 1280)
        assert z["ids"].dtype.kind == "U" and z["labels"].dtype.kind == "U"
        assert z["spec"].shape == () and z["spec"].dtype.kind == "U"
        assert list(z["ids"]) == store.paths
        np.testing.assert_array_equal(z["features"], store.features)
        assert json.loads(str(z["spec"]))["dim"] == 1280


def test_export_refuses_to_overwrite_without_force_and_never_writes_into_its_input(stores, tmp_path):
    store = stores["train"]
    out = tmp_path / "x.parquet"
    out.write_bytes(b"keep me")
    assert main(["export-features", str(store.root), "--out", str(out)]) == 2
    assert out.read_bytes() == b"keep me"
    assert main(["export-features", str(store.root), "--out", str(out), "--force"]) == 0
    assert pq.read_table(out).num_rows == len(store)
    assert main(["export-features", str(store.root), "--out", str(store.root / "rows.parquet")]) == 2
    assert not (store.root / "rows.parquet").exists()
    assert main(["export-features", str(store.root), "--out", str(tmp_path / "x.csv")]) == 2
    assert not list(tmp_path.glob(".x.parquet.tmp-*"))


def _foreign(src, dst):
    """An export renamed and stripped of this project's metadata, as another tool would write it."""
    t = pq.read_table(src)
    t = pa.table({"image": t.column("id"), "emb": t.column("features").cast(pa.list_(pa.float32())),
                  "y": t.column("label")})
    pq.write_table(t, dst)
    return dst


def test_foreign_features_train_a_head_that_agrees_with_the_original(stores, tmp_path, capsys):
    # exported, renamed, stripped of metadata, imported: a head trained on it predicts the imported
    # test store as the original head predicts the test images
    train_file = _foreign(export_features(stores["train"], tmp_path / "a.parquet"), tmp_path / "train-foreign.parquet")
    test_file = _foreign(export_features(stores["test"], tmp_path / "b.parquet"), tmp_path / "test-foreign.parquet")
    cols = ["--id-column", "image", "--features-column", "emb", "--label-column", "y"]
    assert main(["import-features", str(train_file), "--out", str(tmp_path / "imp-train"), *cols]) == 0
    assert main(["import-features", str(test_file), "--out", str(tmp_path / "imp-test"), *cols]) == 0
    imported = FeatureStore.open(tmp_path / "imp-train")
    assert imported.spec["backbone"] == "imported" and imported.spec["source"] == "train-foreign.parquet"
    assert imported.spec["dim"] == 1280 and len(imported.spec["sha256"]) == 64
    np.testing.assert_array_equal(imported.features, stores["train"].features)

    for head, store, model in ((["--C", "0.01"], tmp_path / "imp-train", "imp.joblib"),
                               (["--C", "0.01"], stores["train"].root, "orig.joblib")):
        assert main(["train", str(store), *head, "--out", str(tmp_path / model)]) == 0
    assert main(["score", str(tmp_path / "imp.joblib"), str(tmp_path / "imp-test"), "--out", str(tmp_path / "imp.csv")]) == 0
    assert main(["score", str(tmp_path / "orig.joblib"), str(stores["test_dir"]), "--out", str(tmp_path / "orig.csv"),
                 "--cache", str(tmp_path / "cache"), "--no-progress"]) == 0
    imp, orig = _csv(tmp_path / "imp.csv"), _csv(tmp_path / "orig.csv")
    assert sorted(imp) == sorted(orig) and len(imp) == 10
    agree = np.mean([imp[p]["prediction"] == orig[p]["prediction"] for p in orig])
    assert agree >= 0.99

    # the other commands use it like any store
    for argv in (["evaluate", str(tmp_path / "imp.joblib"), str(tmp_path / "imp-test"), "--json"],
                 ["compare", str(tmp_path / "imp-train"), "--heads", "logreg", "--C", "0.1", "--folds", "2"],
                 ["suspects", str(tmp_path / "imp-train"), "--C", "0.1", "--folds", "2"],
                 ["split", str(tmp_path / "imp-train"), "--out", str(tmp_path / "split.csv")]):
        assert main(argv) == 0, argv
    capsys.readouterr()

    # a head trained on imported features scores no images, and no store of another kind
    assert main(["score", str(tmp_path / "imp.joblib"), str(stores["test_dir"]), "--out", str(tmp_path / "x.csv")]) == 2
    assert ("this head was trained on features imported from train-foreign.parquet; "
            "score a feature store of the same kind") in capsys.readouterr().err
    assert main(["score", str(tmp_path / "imp.joblib"), str(stores["test"].root), "--out", str(tmp_path / "y.csv")]) == 1
    assert "imported" in capsys.readouterr().err
    assert main(["score", str(tmp_path / "orig.joblib"), str(tmp_path / "imp-test"), "--out", str(tmp_path / "z.csv")]) == 1
    assert not (tmp_path / "x.csv").exists() and not (tmp_path / "y.csv").exists() and not (tmp_path / "z.csv").exists()


def test_own_export_round_trips_with_its_spec(stores, tmp_path):
    # an export of this project imports with its spec: the original head scores it
    for ext in ("parquet", "npz"):
        f = export_features(stores["test"], tmp_path / f"test.{ext}")
        store = import_features(f, tmp_path / f"store-{ext}")
        assert store.spec == stores["test"].spec
        assert store.paths == stores["test"].paths and store.sha256 == stores["test"].sha256
        assert list(store.labels) == list(stores["test"].labels)
        np.testing.assert_array_equal(store.features, stores["test"].features)
    assert main(["train", str(stores["train"].root), "--C", "0.01", "--out", str(tmp_path / "h.joblib")]) == 0
    assert main(["score", str(tmp_path / "h.joblib"), str(tmp_path / "store-npz"), "--out", str(tmp_path / "p.csv")]) == 0
    assert sorted(_csv(tmp_path / "p.csv")) == sorted(stores["test"].paths)


def _table(ids, vectors, labels=None, **extra):
    cols = {"id": pa.array(ids, pa.string()), "features": pa.array(vectors, pa.list_(pa.float32()))}
    if labels is not None:
        cols["label"] = pa.array(labels, pa.string())
    return pa.table({**cols, **extra})


@pytest.mark.parametrize("table, columns, message", [
    (_table(["a", "b"], [[1.0, 2.0], [3.0, 4.0]]), Columns(id="image"), r"no column 'image'; its columns are 'id', 'features'"),
    (_table(["a", "b", "a"], [[1.0], [2.0], [3.0]]), Columns(), r"the id 'a' appears more than once"),
    (_table(["a", "b"], [[1.0, 2.0], [3.0]]), Columns(), r"vectors of different lengths: 'a' has 2 values, 'b' has 1"),
    (_table(["a", "b"], [[1.0, 2.0], [3.0, float("nan")]]), Columns(), r"the features of 'b' hold NaN or infinity"),
    (_table(["a", "b"], [[1.0, float("inf")], [3.0, 1.0]]), Columns(), r"the features of 'a' hold NaN or infinity"),
    (_table([], []), Columns(), r"holds no rows"),
    (_table(["a"], [[1.0]]), Columns(label="y"), r"no column 'y'"),
])
def test_bad_parquet_files_are_refused_and_leave_nothing(tmp_path, table, columns, message):
    f = tmp_path / "bad.parquet"
    pq.write_table(table, f)
    with pytest.raises(ValueError, match=message):
        import_features(f, tmp_path / "out", columns)
    assert not (tmp_path / "out").exists()


def test_read_features_refuses_an_id_repeated_in_the_same_or_a_later_batch(tmp_path, monkeypatch):
    from pipeline.store import exchange

    f = tmp_path / "f.parquet"
    pq.write_table(_table(["a", "b", "c", "b"], [[1.0], [2.0], [3.0], [4.0]]), f)
    with pytest.raises(ValueError, match="the id 'b' appears more than once"):
        exchange.read_features(f)
    monkeypatch.setattr(exchange, "READ_ROWS", 2)  # 'b' in the first batch, again in the second
    with pytest.raises(ValueError, match="the id 'b' appears more than once"):
        exchange.read_features(f)
    pq.write_table(_table(["a", "b", "c", "d"], [[1.0], [2.0], [3.0], [4.0]]), f)
    assert exchange.read_features(f).ids == ["a", "b", "c", "d"]


def test_bad_npz_files_are_refused_and_leave_nothing(tmp_path, capsys):
    f = tmp_path / "bad.npz"
    np.savez(f, ids=np.array(["a", "b"]), features=np.array([[0.0, 1.0], [np.inf, 2.0]], np.float32))
    assert main(["import-features", str(f), "--out", str(tmp_path / "out")]) == 2
    assert "'b' hold NaN or infinity" in capsys.readouterr().err
    np.savez(f, ids=np.array(["a", "b"], dtype=object), features=np.zeros((2, 3), np.float32))
    assert main(["import-features", str(f), "--out", str(tmp_path / "out")]) == 2
    assert "pickle" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


def test_npz_import_with_labels_and_no_metadata(tmp_path):
    f = tmp_path / "emb.npz"
    x = np.random.default_rng(0).normal(size=(6, 4)).astype(np.float32)
    np.savez(f, ids=np.array([f"img{i}.jpg" for i in range(6)]), features=x,
             label=np.array(["cat", "dog", "", "cat", "dog", "cat"]))
    store = import_features(f, tmp_path / "s")
    assert store.spec["backbone"] == "imported" and store.spec["dim"] == 4
    assert list(store.labels) == ["cat", "dog", None, "cat", "dog", "cat"]
    np.testing.assert_array_equal(store.features, x)
    with pytest.raises(ValueError, match="exists; import into a new folder"):
        import_features(f, tmp_path / "s")



def test_verify_says_an_imported_store_is_sound_and_where_its_features_come_from(tmp_path, capsys):
    f = tmp_path / "emb.npz"
    np.savez(f, id=np.array(["a", "b"]), features=np.ones((2, 4), np.float32))
    assert main(["import-features", str(f), "--out", str(tmp_path / "s")]) == 0
    capsys.readouterr()
    assert main(["verify", str(tmp_path / "s")]) == 0  # was a KeyError: an imported spec has no layer
    assert "holds 2 rows of features imported from emb.npz (D=4)" in capsys.readouterr().out


def test_a_column_of_strings_is_not_features(tmp_path):
    f = tmp_path / "s.parquet"
    pq.write_table(pa.table({"id": ["a"], "features": pa.array([["x", "y"]], pa.list_(pa.string()))}), f)
    with pytest.raises(ValueError, match="lists of string, not of numbers"):
        import_features(f, tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_scoring_reads_the_store_a_chunk_at_a_time_and_writes_what_one_pass_would(stores, tmp_path, monkeypatch):
    """A store larger than memory is scored chunk by chunk (here 3 rows at a time): the CSV is the one
    the whole feature matrix gives, for a store given as it is and for images featurized first; the
    probabilities `evaluate` computes too, and the exports hold the same features."""
    import pipeline.store.reader as reader_module
    from pipeline import load, score

    assert main(["train", str(stores["train"].root), "--C", "0.01", "--out", str(tmp_path / "h.joblib")]) == 0
    clf, test = load(tmp_path / "h.joblib"), stores["test"]
    feats = np.array(test.features)
    whole = dict(zip(test.paths, clf.predict_proba(feats)))
    reads = []
    monkeypatch.setattr(reader_module, "CHUNK_ROWS", 3)
    monkeypatch.setattr(reader_module.FeatureStore, "features", property(lambda s: pytest.fail("read whole")))
    original = reader_module.live_chunks
    monkeypatch.setattr(reader_module, "live_chunks", lambda *a: (reads.append(len(c)) or c for c in original(*a)))
    for source, kw in ((test.root, {}), (stores["test_dir"], {"cache": tmp_path / "cache", "progress": False})):
        out = tmp_path / f"p{len(reads)}.csv"
        score(tmp_path / "h.joblib", source, out, **kw)
        got = _csv(out)
        assert sorted(got) == sorted(whole)
        for path, p in whole.items():
            assert [float(got[path][str(c)]) for c in clf.classes_] == pytest.approx(p, abs=1e-6)
    assert reads and max(reads) <= 3
    from pipeline.training.evaluation import predictions  # evaluate reads a chunk at a time too

    _, y, proba, rows = predictions(clf, FeatureStore.open(test.root))
    np.testing.assert_allclose(proba, [whole[r["path"]] for r in rows], atol=1e-6)  # float32 BLAS: row count moves the last bits

    # and exports stream the features, a Parquet row group or an .npz slice per chunk
    table = pq.read_table(export_features(test.root, tmp_path / "e.parquet"))
    assert table.column("id").to_pylist() == test.paths and pq.ParquetFile(tmp_path / "e.parquet").num_row_groups > 1
    np.testing.assert_array_equal(np.stack(table.column("features").to_numpy(zero_copy_only=False)), feats)
    with np.load(export_features(test.root, tmp_path / "e.npz"), allow_pickle=False) as z:
        np.testing.assert_array_equal(z["features"], feats)
        assert list(z["ids"]) == test.paths


def test_exporting_a_store_no_run_has_written_to_is_refused(tmp_path, capsys):
    """An empty folder given as --out to a run that stored nothing stays an empty store (D unknown):
    exporting it says so instead of writing an .npz that cannot be loaded."""
    from pipeline.store import open_writer

    (tmp_path / "s").mkdir()
    open_writer(tmp_path / "s", {"backbone": "b", "kind": "tflite", "model": "m", "weights": None,
                                 "layer": "penultimate", "preprocess": {"size": [2, 2]}, "source": {}}).abort()
    assert (tmp_path / "s" / "meta.json").exists()
    for ext in ("npz", "parquet"):
        assert main(["export-features", str(tmp_path / "s"), "--out", str(tmp_path / f"e.{ext}")]) == 2
        assert "holds no rows yet" in capsys.readouterr().err and not (tmp_path / f"e.{ext}").exists()
