"""The bcolz feature store: chunked appends, commits, reopening, refusing other settings."""
from __future__ import annotations

import json

import numpy as np
import pytest

from pipeline.errors import StoreError
from pipeline.store import FeatureStore, chunklen_for, open_writer

REQ = {"backbone": "b", "kind": "tflite", "model": "sha-a", "weights": None, "layer": "penultimate",
       "preprocess": {"size": [224, 224]}, "source": {}}


def spec(dim=1280, **kw):
    return dict(REQ, tensor="t", dim=dim, **kw)


def rows(start, n):
    return [{"path": f"c/{i}.jpg", "label": "c", "sha256": f"h{i}"} for i in range(start, start + n)]


def test_appends_across_chunk_boundaries_roundtrip(tmp_path):
    dim = 1280
    clen = chunklen_for(dim)
    assert clen >= 128  # not bcolz's default of 3 rows per chunk for wide rows
    w = open_writer(tmp_path / "s", REQ)
    w.set_spec(spec(dim))
    rng = np.random.default_rng(0)
    parts = [rng.random((n, dim), dtype=np.float32) for n in (1, clen - 1, 1, 1, clen + 7, 3)]
    for k, x in enumerate(parts):
        start = sum(len(p) for p in parts[:k])
        if len(x) == 1:
            w.append(x[0][None], rows(start, 1))  # a (1, D) view, the case that used to break at a chunk end
        else:
            w.append(x, rows(start, len(x)))
    store = w.close()
    np.testing.assert_array_equal(store.features, np.concatenate(parts))
    assert store.paths[:2] == ["c/0.jpg", "c/1.jpg"] and len(FeatureStore.open(tmp_path / "s")) == len(store)


def test_uncommitted_part_and_staging_leftovers_are_invisible_and_cleaned(tmp_path):
    from pipeline.store.pieces import _write_piece

    root = tmp_path / "s"
    w = open_writer(root, REQ)
    w.set_spec(spec(4))
    w.append(np.ones((3, 4), np.float32), rows(0, 3))
    # a killed run: a part renamed into place whose lines never reached the log, a half line,
    # and a staging folder that was never renamed
    _write_piece(root / "parts" / f"{3:012d}.bcolz", [np.full((2, 4), 7, np.float32)], 4, 2)
    (root / "parts" / ".staging-000000000005.bcolz-999").mkdir()
    with open(root / "rows.jsonl", "ab") as f:
        f.write(b'{"path": "half')
    w.abort()
    s = FeatureStore.open(root)
    assert len(s) == 3 and s.features.shape == (3, 4) and (s.features == 1).all()
    w = open_writer(root, REQ)
    w.append(np.zeros((1, 4), np.float32), rows(3, 1))
    s = w.close()
    assert len(s) == 4 and s.features[3].tolist() == [0, 0, 0, 0]
    assert not list(root.rglob(".staging-*")) and not list((root / "parts").iterdir())


def test_part_with_only_some_lines_committed_is_trimmed(tmp_path):
    root = tmp_path / "s"
    w = open_writer(root, REQ)
    w.set_spec(spec(2))
    w.append(np.array([[1, 1], [2, 2], [3, 3]], np.float32), rows(0, 3))
    w.abort()
    log = (root / "rows.jsonl").read_bytes().splitlines(keepends=True)
    (root / "rows.jsonl").write_bytes(b"".join(log[:2]))  # the kill came mid-append of the lines
    assert FeatureStore.open(root).features.tolist() == [[1, 1], [2, 2]]
    w = open_writer(root, REQ)
    w.append(np.array([[9, 9]], np.float32), rows(2, 1))
    assert w.close().features.tolist() == [[1, 1], [2, 2], [9, 9]]


class Crash(BaseException):
    """Stands in for kill -9: raised at a chosen point, leaving the files as they are."""


@pytest.mark.parametrize("point", ["after_segment_rename", "after_meta_write"])
def test_kill_while_merging_parts_loses_nothing(tmp_path, monkeypatch, point):
    import pipeline.store.writer as st

    root = tmp_path / "s"
    w = open_writer(root, REQ)
    w.set_spec(spec(2))
    x = np.arange(20, dtype=np.float32).reshape(10, 2)
    for i in range(0, 10, 3):
        w.append(x[i:i + 3], rows(i, len(x[i:i + 3])))
    real_write, real_meta = st._write_piece, st.StoreWriter._write_meta

    def write_then_die(final, *a, **k):
        n = real_write(final, *a, **k)
        if final.parent.name == "segments":
            raise Crash
        return n

    def meta_then_die(self):
        real_meta(self)
        raise Crash
    if point == "after_segment_rename":
        monkeypatch.setattr(st, "_write_piece", write_then_die)
    else:
        monkeypatch.setattr(st.StoreWriter, "_write_meta", meta_then_die)
    with pytest.raises(Crash):
        w.close()
    monkeypatch.undo()
    w.abort()
    np.testing.assert_array_equal(FeatureStore.open(root).features, x)
    w = open_writer(root, REQ)
    w.append(np.full((1, 2), 5, np.float32), rows(10, 1))
    s = w.close()
    np.testing.assert_array_equal(s.features, np.concatenate([x, np.full((1, 2), 5, np.float32)]))
    segments = 1 if point == "after_segment_rename" else 2  # the orphan segment was rebuilt with the new row
    assert len(list((root / "segments").iterdir())) == segments and not list((root / "parts").iterdir())


def test_corrupt_segment_is_refused_before_decompressing(tmp_path):
    from pipeline.store import verify

    root = tmp_path / "s"
    w = open_writer(root, REQ)
    w.set_spec(spec(64))
    w.append(np.random.default_rng(0).random((50, 64), dtype=np.float32), rows(0, 50))
    w.close()
    chunk = next((root / "segments").rglob("__0.blp"))
    data = bytearray(chunk.read_bytes())
    data[len(data) // 2] ^= 0x5A
    chunk.write_bytes(bytes(data))
    with pytest.raises(StoreError, match="checksum"):
        FeatureStore.open(root).features
    assert "checksum" in verify(root)[0] and "__0.blp" in verify(root)[0]


def test_prune_drops_rows_of_removed_files(tmp_path):
    root = tmp_path / "s"
    w = open_writer(root, REQ)
    w.set_spec(spec(2))
    w.append(np.array([[0, 0], [1, 1], [2, 2]], np.float32), rows(0, 3))
    w.append(np.array([[7, 7]], np.float32), [{"path": "c/1.jpg", "label": "c", "sha256": "changed"}])
    assert w.prune({"c/1.jpg", "c/2.jpg"}) == 2  # c/0.jpg removed, the superseded c/1.jpg row
    s = w.close()
    assert s.paths == ["c/2.jpg", "c/1.jpg"] and s.features.tolist() == [[2, 2], [7, 7]]
    assert [f.name for f in root.glob("rows*.jsonl")] == ["rows-1.jsonl"]
    w = open_writer(root, REQ)
    w.append(np.array([[3, 3]], np.float32), rows(3, 1))
    assert w.close().features.tolist() == [[2, 2], [7, 7], [3, 3]]


def test_reads_a_store_of_the_previous_format(tmp_path):
    import bcolz

    root = tmp_path / "s"
    root.mkdir()
    bcolz.carray(np.ones((3, 2), np.float32), rootdir=str(root / "features.bcolz"), mode="w").flush()
    (root / "rows.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows(0, 2)))
    (root / "meta.json").write_text(json.dumps({"format": "tf-feature-pipeline/store-1", "spec": spec(2)}))
    assert FeatureStore.open(root).features.shape == (2, 2)
    w = open_writer(root, REQ)
    w.append(np.zeros((1, 2), np.float32), rows(2, 1))
    assert w.close().features.tolist() == [[1, 1], [1, 1], [0, 0]]


def test_store_refuses_other_backbone_or_layer(tmp_path):
    w = open_writer(tmp_path / "s", REQ)
    w.set_spec(spec(4))
    w.append(np.ones((1, 4), np.float32), rows(0, 1))
    w.close()
    with pytest.raises(StoreError, match="--overwrite"):
        open_writer(tmp_path / "s", dict(REQ, layer="logits"))
    w = open_writer(tmp_path / "s", dict(REQ, layer="logits"), overwrite=True)
    w.abort()
    assert len(FeatureStore.open(tmp_path / "s")) == 0


def test_second_writer_is_refused_while_first_runs(tmp_path):
    w = open_writer(tmp_path / "s", REQ)
    with pytest.raises(StoreError, match="another run"):
        open_writer(tmp_path / "s", REQ)
    w.abort()


def test_non_finite_features_are_refused(tmp_path):
    w = open_writer(tmp_path / "s", REQ)
    w.set_spec(spec(2))
    with pytest.raises(StoreError, match="non-finite"):
        w.append(np.array([[1.0, np.nan]], np.float32), rows(0, 1))
    w.abort()


def test_missing_store_says_how_to_make_one(tmp_path):
    with pytest.raises(StoreError, match="featurize"):
        FeatureStore.open(tmp_path / "nothing")


def test_changed_file_row_supersedes_old_one(tmp_path):
    w = open_writer(tmp_path / "s", REQ)
    w.set_spec(spec(2))
    w.append(np.array([[1, 1], [2, 2]], np.float32), rows(0, 2))
    w.append(np.array([[9, 9]], np.float32), [{"path": "c/0.jpg", "label": "c", "sha256": "new"}])
    s = w.close()
    assert s.paths == ["c/1.jpg", "c/0.jpg"] and s.features.tolist() == [[2, 2], [9, 9]]
    assert json.loads((tmp_path / "s" / "meta.json").read_text())["rows"] == 2


def test_empty_store_from_a_failed_run_does_not_block_other_settings(tmp_path):
    open_writer(tmp_path / "s", REQ).abort()  # e.g. the weights download failed before any batch
    w = open_writer(tmp_path / "s", dict(REQ, weights="sha-of-local-file"))
    w.abort()
    assert FeatureStore.open(tmp_path / "s").spec["weights"] == "sha-of-local-file"


def test_verify_finds_a_missing_chunk_file(tmp_path):
    from pipeline.store import verify

    w = open_writer(tmp_path / "s", REQ)
    w.set_spec(spec(1280))
    w.append(np.ones((chunklen_for(1280) * 2, 1280), np.float32), rows(0, chunklen_for(1280) * 2))
    w.close()
    assert verify(tmp_path / "s") == []
    next((tmp_path / "s" / "segments").rglob("__0.blp")).unlink()
    problems = verify(tmp_path / "s")
    assert len(problems) == 1 and "damaged" in problems[0] and "--overwrite" in problems[0]


def test_reader_opened_before_a_merge_still_reads_the_rows(tmp_path):
    root = tmp_path / "s"
    w = open_writer(root, REQ)
    w.set_spec(spec(2))
    w.append(np.array([[1, 1], [2, 2]], np.float32), rows(0, 2))
    reader = FeatureStore.open(root)  # sees the rows as parts of a run in progress
    w.close()  # the parts become a segment and are deleted
    assert reader.features.tolist() == [[1, 1], [2, 2]]


class _Planted:
    """Pickled into an object array: unpickling it sets a flag, as a store made to run code would."""
    ran = []

    def __reduce__(self):
        return (_Planted.ran.append, ("code from the store ran",))


def test_a_segment_of_objects_is_refused_before_anything_is_unpickled(tmp_path):
    """RELIABILITY D04: bcolz unpickles the chunks of an object-dtype carray when they are read. A store handed
    over with such a segment (its checksums recomputed, or the legacy layout that has none) ran its code when
    any command read the features; it must be refused from the array's declared dtype, before reading."""
    import shutil

    import bcolz

    from pipeline.store import verify

    root = tmp_path / "s"
    w = open_writer(root, REQ)
    w.set_spec(spec(4))
    w.append(np.ones((3, 4), np.float32), rows(0, 3))
    w.close()
    meta = json.loads((root / "meta.json").read_text())
    seg = root / "segments" / meta["segments"][0]["name"]
    shutil.rmtree(seg)
    planted = np.zeros((3, 4), dtype=object)
    planted[0, 0] = _Planted()
    bcolz.carray(planted, rootdir=str(seg), mode="w").flush()
    del meta["segments"][0]["files"]  # or checksums recomputed: whoever made the folder can do either
    (root / "meta.json").write_text(json.dumps(meta))
    _Planted.ran.clear()
    with pytest.raises(StoreError, match="not float32 rows.*featurize again with --overwrite"):
        FeatureStore.open(root).features
    assert "not float32 rows" in verify(root)[0]
    assert _Planted.ran == []
