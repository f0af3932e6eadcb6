"""Near-duplicates, leaks and outliers found in stores built with planted copies and far-away rows."""
import numpy as np
import pytest

from pipeline.audit import Search, leaks, near_duplicates, outliers
from pipeline.audit.checks import fence, groups
from pipeline.errors import SpecMismatchError, UsageError

from audit_stores import DIM, features, near_copy, store_of


@pytest.fixture
def planted(tmp_path):
    """60 rows, where 7 and 21 are near-copies of 3, and 40 of 30."""
    x, y = features(60, seed=1)
    for copy, original, seed in ((7, 3, 1), (21, 3, 2), (40, 30, 3)):
        x[copy], y[copy] = near_copy(x[original], seed), y[original]
    return store_of(tmp_path / "s", x, y)


def test_near_duplicates_are_the_planted_copies_in_groups(planted):
    found = near_duplicates(planted)
    pairs = {(f.path, f.other_path) for f in found}
    assert pairs == {("c0/img003.jpg", "c0/img007.jpg"), ("c0/img003.jpg", "c0/img021.jpg"),
                     ("c0/img007.jpg", "c0/img021.jpg"), ("c0/img030.jpg", "c0/img040.jpg")}
    assert {f.group for f in found if "030" in f.path} != {f.group for f in found if "003" in f.path}
    assert all(f.kind == "near_duplicate" and f.score >= 0.9 for f in found)


def test_a_threshold_above_every_pair_finds_nothing_and_a_bad_one_is_refused(planted):
    assert near_duplicates(planted, Search(threshold=1.0)) == []
    with pytest.raises(UsageError, match="threshold=2"):
        Search(threshold=2)


def test_leaks_list_each_test_image_with_its_training_copy(tmp_path):
    x, y = features(45, seed=1)
    t, ty = features(15, seed=2)
    t[4], ty[4] = near_copy(x[10], 5), y[10]
    found = leaks(store_of(tmp_path / "train", x, y), store_of(tmp_path / "test", t, ty))
    assert [(f.kind, f.path, f.other_path) for f in found] == [("leak", "c1/img004.jpg", "c1/img010.jpg")]
    assert found[0].store == str(tmp_path / "test")


def test_stores_of_other_features_are_not_compared(tmp_path):
    x, y = features(20, seed=1)
    other = store_of(tmp_path / "b", np.hstack([x, x]), y)  # another width: another spec
    with pytest.raises(SpecMismatchError, match="featurize both with the same backbone"):
        leaks(store_of(tmp_path / "a", x, y), other)


def test_an_image_far_from_every_other_is_an_outlier_and_the_rest_are_not(tmp_path):
    x, y = features(90, seed=3)
    x[17] = np.random.default_rng(0).normal(0, 1, DIM) * 5  # unlike any class
    found = outliers(store_of(tmp_path / "s", x, y))
    assert [f.path for f in found] == ["c2/img017.jpg"]
    t, ty = features(12, seed=4)
    t[2] = np.random.default_rng(7).normal(0, 1, DIM) * 5
    against = outliers(store_of(tmp_path / "t", t, ty), reference=tmp_path / "s")
    assert [f.path for f in against] == ["c2/img002.jpg"]


def test_groups_link_chains_and_fence_is_tukeys_far_out():
    assert groups([(0, 2), (2, 5), (3, 4)], 6).tolist() == [0, -1, 0, 1, 1, 0]
    assert fence(np.array([1.0, 2.0, 3.0, 4.0, 5.0])) == pytest.approx(4 + 3 * 2)
