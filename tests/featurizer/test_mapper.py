"""The mapper and committer stages: forward and commit in background threads, batches committed in order,
a second of work per commit, nothing featurized lost when the run fails."""
from __future__ import annotations

import numpy as np
import pytest

from pipeline.featurizer.committer import Committer
from pipeline.featurizer.mapper import Mapper
from pipeline.featurizer.stages import StageClock
from pipeline.store import FeatureStore, open_writer

REQ = {"backbone": "fake", "kind": "keras", "model": "fake", "weights": None, "layer": "penultimate",
       "preprocess": {"size": [2, 2]}, "source": {}}


class FakeBackbone:
    """Features: the mean pixel of each image, three times; fails on a chosen batch."""

    batch_size = 4

    def __init__(self, fail_at: int | None = None):
        self.calls, self.fail_at = 0, fail_at

    def spec(self):
        return dict(REQ, tensor="t", dim=3)

    def __call__(self, images):
        self.calls += 1
        if self.calls == self.fail_at:
            raise RuntimeError("the GPU fell over")
        return np.repeat(images.reshape(len(images), -1).mean(1, keepdims=True), 3, 1).astype(np.float32)


def _images(n):
    return [np.full((2, 2, 3), i, np.uint8) for i in range(n)]


def _rows(n):
    return [{"path": f"c/{i}.jpg", "label": "c", "sha256": f"h{i}"} for i in range(n)]


def _stages(writer, backbone, ahead=True):
    clock = StageClock()
    return Mapper(backbone, Committer(writer, [], clock, background=ahead), clock, ahead=ahead)


@pytest.mark.parametrize("every", [0.0, 60.0])  # a commit per batch / everything in one commit at the end
def test_batches_reach_the_store_in_order_through_reused_buffers(tmp_path, every, monkeypatch):
    monkeypatch.setattr(Committer, "COMMIT_EVERY_S", every)
    w = open_writer(tmp_path / "s", REQ)
    b = _stages(w, FakeBackbone())
    view = np.zeros((2, 2, 3), np.uint8)
    for i, row in enumerate(_rows(10)):
        view[:] = i  # the same array every time, changed after add: the batcher must have copied it
        b.add(view, row)
    b.flush()
    b.finish()
    store = w.close()
    assert store.paths == [f"c/{i}.jpg" for i in range(10)] and b.computed == 10
    np.testing.assert_array_equal(store.features[:, 0], np.arange(10, dtype=np.float32))
    parts = len(list((tmp_path / "s" / "segments").iterdir()))
    assert parts == 1  # small commits are merged at close either way


def test_a_failing_forward_pass_surfaces_and_earlier_batches_stay_committed(tmp_path):
    w = open_writer(tmp_path / "s", REQ)
    b = _stages(w, FakeBackbone(fail_at=3))
    with pytest.raises(RuntimeError, match="fell over"):
        try:
            for image, row in zip(_images(16), _rows(16)):
                b.add(image, row)
            b.flush()
        except BaseException:
            b.finish(failed=True)
            raise
        b.finish()
    w.close()
    store = FeatureStore.open(tmp_path / "s")
    assert store.paths == [f"c/{i}.jpg" for i in range(8)]  # the two batches before the failure
    np.testing.assert_array_equal(store.features[:, 0], np.arange(8, dtype=np.float32))


def test_without_ahead_every_flush_is_its_own_commit(tmp_path):
    w = open_writer(tmp_path / "s", REQ)
    b = _stages(w, FakeBackbone(), ahead=False)
    for image, row in zip(_images(3), _rows(3)):
        b.add(image, row)
    b.flush()  # a partition's end (Ray): committed now, not later
    assert len(FeatureStore.open(tmp_path / "s")) == 3


def test_nonfinite_features_are_skipped_with_their_reason(tmp_path):
    class NaNs(FakeBackbone):
        def __call__(self, images):
            out = super().__call__(images)
            out[1] = np.nan
            return out

    w = open_writer(tmp_path / "s", REQ)
    skipped = []
    clock = StageClock()
    b = Mapper(NaNs(), Committer(w, skipped, clock, background=True), clock, ahead=True)
    for image, row in zip(_images(4), _rows(4)):
        b.add(image, row)
    b.finish()
    assert w.close().paths == ["c/0.jpg", "c/2.jpg", "c/3.jpg"]
    assert skipped == [{"path": "c/1.jpg", "reason": "nonfinite_features",
                        "detail": "the network gave NaN or infinity for this image"}]


def test_an_item_unlike_the_batch_is_refused_not_broadcast(tmp_path):
    from pipeline.errors import PipelineError

    w = open_writer(tmp_path / "s", REQ)
    b = _stages(w, FakeBackbone(), ahead=False)
    b.add(np.zeros((2, 2, 3), np.uint8), _rows(1)[0])
    with pytest.raises(PipelineError, match="c/1.jpg was prepared as uint8 \\(2, 2\\)"):
        b.add(np.zeros((2, 2), np.uint8), _rows(2)[1])  # grey: would broadcast into (2, 2, 3) silently
