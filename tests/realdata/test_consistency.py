"""Train/serve consistency (../shared/docs/RELIABILITY.md, section C): one preprocessing path, batch and
order invariance, determinism, a golden feature vector that catches drift across upgrades; and run-level
faults."""
from __future__ import annotations

import errno
import os
from pathlib import Path

import numpy as np
import pytest
from conftest import make_class_tree
from PIL import Image

import pipeline
from pipeline.backbones import create_backbone

GOLDEN = Path(__file__).parents[1] / "data" / "golden_mobilenet_v2_quant_penultimate.npy"


def golden_image(tmp_path) -> Path:
    arr = np.random.default_rng(0).integers(0, 256, (300, 200, 3), np.uint8)
    path = tmp_path / "golden" / "x" / "golden.png"
    path.parent.mkdir(parents=True)
    Image.fromarray(arr).save(path)
    return path


def test_training_and_scoring_paths_give_the_golden_vector(tmp_path):
    """Regenerate the golden file only on an intentional backbone or preprocessing change."""
    path = golden_image(tmp_path)
    other = path.parent.parent / "y"
    other.mkdir()
    for i in range(2):
        Image.new("RGB", (50, 40), (40 * i, 90, 200)).save(other / f"{i}.png")
    Image.new("RGB", (50, 40), (200, 90, 40)).save(path.parent / "second.png")
    store = pipeline.featurize(path.parent.parent, out=tmp_path / "s", layer="penultimate", progress=False)
    train_path = store.features[store.paths.index("x/golden.png")]
    serve_path = pipeline.train(store, head="logreg", C=1.0).features([path])[0]  # how a saved head scores files
    np.testing.assert_array_equal(train_path, serve_path)
    np.testing.assert_allclose(train_path, np.load(GOLDEN), rtol=0, atol=1e-5)


@pytest.mark.slow
def test_batch_composition_and_padding_do_not_change_features():
    rng = np.random.default_rng(1)
    images = rng.integers(0, 256, (5, 224, 224, 3), np.uint8)
    bb = create_backbone("mobilenet", "penultimate", weights="random")
    full = bb(images)
    np.testing.assert_allclose(bb(images[1:2])[0], full[1], rtol=1e-4, atol=1e-5)  # padded to 1
    np.testing.assert_allclose(bb(images[2:5]), full[2:5], rtol=1e-4, atol=1e-5)  # padded to 4


def test_featurize_is_deterministic_and_independent_of_listing_order(tmp_path, monkeypatch):
    data = make_class_tree(tmp_path / "data", per_class=3)
    a = pipeline.featurize(data, out=tmp_path / "a", progress=False)
    real_listdir = os.listdir
    monkeypatch.setattr(os, "listdir", lambda p=".": list(reversed(real_listdir(p))))
    real_scandir = os.scandir

    class Reversed:
        def __init__(self, p):
            self.entries = list(reversed(list(real_scandir(p))))

        def __enter__(self):
            return iter(self.entries)

        def __exit__(self, *exc):
            return False

        def __iter__(self):
            return self

        def __next__(self):
            if not self.entries:
                raise StopIteration
            return self.entries.pop(0)

        def close(self):
            pass
    monkeypatch.setattr(os, "scandir", Reversed)
    b = pipeline.featurize(data, out=tmp_path / "b", progress=False)
    assert a.paths == b.paths and a.classes == b.classes
    np.testing.assert_array_equal(a.features, b.features)  # identical bytes, any listing order


@pytest.mark.slow
def test_disk_full_while_committing_keeps_committed_rows_and_writes_the_report(tmp_path, monkeypatch):
    import pipeline.store.writer as st
    from pipeline.featurizer.committer import Committer

    monkeypatch.setattr(Committer, "COMMIT_EVERY_S", 0.0)  # a commit per batch: the second one fails
    data = make_class_tree(tmp_path / "data", per_class=40)
    real = st._write_piece
    calls = {"n": 0}

    def full_disk(final, *a, **k):
        calls["n"] += 1
        if calls["n"] == 2:
            raise OSError(errno.ENOSPC, "No space left on device")
        return real(final, *a, **k)
    monkeypatch.setattr(st, "_write_piece", full_disk)
    with pytest.raises(OSError, match="No space left"):
        pipeline.featurize(data, out=tmp_path / "s", layer="penultimate", progress=False, batch_size=32)
    monkeypatch.undo()
    assert (tmp_path / "s" / "report.json").exists() and not list((tmp_path / "s").rglob(".staging-*"))
    assert len(pipeline.FeatureStore.open(tmp_path / "s")) == 32  # the first batch survived
    run = pipeline.featurize(data, out=tmp_path / "s", layer="penultimate", progress=False, report=True)
    assert run.computed == 48 and run.reused == 32 and len(run.store) == 80


@pytest.mark.slow
def test_disk_full_while_closing_the_store_keeps_every_row_and_writes_the_report(tmp_path, monkeypatch):
    import pipeline.store.writer as st

    data = make_class_tree(tmp_path / "data", per_class=40)
    real = st._write_piece

    def full_disk_in_segments(final, *a, **k):
        if final.parent.name == "segments":  # the merge of the run's parts, at close
            raise OSError(errno.ENOSPC, "No space left on device")
        return real(final, *a, **k)
    monkeypatch.setattr(st, "_write_piece", full_disk_in_segments)
    with pytest.raises(OSError, match="No space left"):
        pipeline.featurize(data, out=tmp_path / "s", layer="penultimate", progress=False, batch_size=32)
    monkeypatch.undo()
    assert (tmp_path / "s" / "report.json").exists() and not list((tmp_path / "s").rglob(".staging-*"))
    assert len(pipeline.FeatureStore.open(tmp_path / "s")) == 80  # committed as parts, readable
    run = pipeline.featurize(data, out=tmp_path / "s", layer="penultimate", progress=False, report=True)
    assert run.computed == 0 and run.reused == 80 and len(run.store) == 80


def test_bgr_or_float_arrays_are_refused_not_silently_rescaled():
    bb = create_backbone("mobilenet_v2_quant")
    with pytest.raises(ValueError, match="uint8 RGB"):
        bb(np.zeros((1, 224, 224, 3), np.float32))
    with pytest.raises(ValueError, match="uint8 RGB"):
        bb(np.zeros((1, 224, 224), np.uint8))


def test_read_only_store_folder_fails_before_any_work(tmp_path, monkeypatch):
    data = make_class_tree(tmp_path / "data", per_class=1)
    (tmp_path / "ro").mkdir()
    os.chmod(tmp_path / "ro", 0o500)
    real = os.mkdir

    def read_only(path, *a, **k):  # what the kernel answers a non-root user; root (CI) ignores the mode
        if os.path.dirname(os.fspath(path)) == str(tmp_path / "ro"):
            raise PermissionError(errno.EACCES, "Permission denied", os.fspath(path))
        return real(path, *a, **k)
    monkeypatch.setattr(os, "mkdir", read_only)
    with pytest.raises(pipeline.StoreError, match="cannot write"):
        pipeline.featurize(data, out=tmp_path / "ro" / "s", progress=False)


def test_a_lone_image_on_all_threads_gives_the_features_of_a_batch():
    # a single request runs one multi-threaded TFLite interpreter; batches run one per thread
    bb = create_backbone("mobilenet_v2_quant", "penultimate").load()
    bb.threads = max(2, bb.threads)
    x = np.random.default_rng(3).integers(0, 256, (3, 224, 224, 3), dtype=np.uint8)
    batch = bb(x)
    for i in range(3):
        np.testing.assert_array_equal(bb(x[i:i + 1]), batch[i:i + 1])
    assert getattr(bb._local, "it_wide", None) is not None  # the lone-image interpreter was used
