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


def test_uncommitted_rows_are_invisible_and_trimmed_on_reopen(tmp_path):
    w = open_writer(tmp_path / "s", REQ)
    w.set_spec(spec(4))
    w.append(np.ones((3, 4), np.float32), rows(0, 3))
    w._carray.append(np.full((2, 4), 7, np.float32))  # rows written but never committed (killed run)
    w._carray.flush()
    with open(tmp_path / "s" / "rows.jsonl", "ab") as f:
        f.write(b'{"path": "half')  # a half-written commit line
    w.abort()
    s = FeatureStore.open(tmp_path / "s")
    assert len(s) == 3 and s.features.shape == (3, 4) and (s.features == 1).all()
    w = open_writer(tmp_path / "s", REQ)
    w.append(np.zeros((1, 4), np.float32), rows(3, 1))
    s = w.close()
    assert len(s) == 4 and s.features[3].tolist() == [0, 0, 0, 0]


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
    (tmp_path / "s" / "features.bcolz" / "data" / "__0.blp").unlink()
    problems = verify(tmp_path / "s")
    assert len(problems) == 1 and "damaged" in problems[0] and "--overwrite" in problems[0]
