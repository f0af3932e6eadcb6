"""Test-time augmentation (--tta flip): the mean of the features of an image and of its mirror,
for every backbone kind, and part of the feature spec (stores and heads never mix with and without it)."""
from __future__ import annotations

import numpy as np
import pytest
from conftest import make_class_tree

import pipeline
from pipeline.backbones import backbone_from_spec, create_backbone
from pipeline.cli import main
from pipeline.engines.base import default_store_path
from pipeline.errors import SpecMismatchError, StoreError, UsageError

# lopsided images (bright left half) so that the mirror gives different features
IMAGES = np.random.default_rng(0).integers(0, 128, (3, 224, 224, 3), dtype=np.uint8)
IMAGES[:, :, :112] += 120


@pytest.mark.slow
def test_flip_features_are_the_mean_of_image_and_mirror_tflite():
    plain, flip = create_backbone("mobilenet_v2_quant"), create_backbone("mobilenet_v2_quant", tta="flip")
    expected = (plain(IMAGES) + plain(IMAGES[:, :, ::-1].copy())) / 2
    assert not np.allclose(expected, plain(IMAGES), atol=1e-3)  # the mirror matters for these images
    np.testing.assert_allclose(flip(IMAGES), expected, rtol=1e-6, atol=1e-6)  # batch path
    np.testing.assert_allclose(flip.featurize_one(IMAGES[1]), expected[1], rtol=1e-6, atol=1e-6)  # per-image path


@pytest.mark.slow
def test_flip_features_are_the_mean_of_image_and_mirror_savedmodel(tiny_saved_model):
    from models_for_tests import SIZE

    path = tiny_saved_model
    images = IMAGES[:, ::7, ::7][:, :SIZE, :SIZE].copy()
    plain = create_backbone(path, "penultimate", input_size=SIZE, scaling="tf")
    flip = create_backbone(path, "penultimate", input_size=SIZE, scaling="tf", tta="flip")
    expected = (plain(images) + plain(images[:, :, ::-1].copy())) / 2
    np.testing.assert_allclose(flip(images), expected, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(flip.featurize_one(images[0]), expected[0], rtol=1e-5, atol=1e-6)


def test_unknown_tta_is_refused():
    with pytest.raises(UsageError, match="unknown test-time augmentation 'rotate'; choose one of flip"):
        create_backbone("mobilenet_v2_quant", tta="rotate")


@pytest.mark.slow
def test_tta_is_part_of_the_spec_of_stores_and_heads(tmp_path):
    data = make_class_tree(tmp_path / "data", per_class=3)
    store = pipeline.featurize(data, out=tmp_path / "flip", progress=False, tta="flip")
    assert store.spec["tta"] == "flip"
    # a store made with TTA refuses a run without it (and the reverse)
    with pytest.raises(StoreError, match="tta flip"):
        pipeline.featurize(data, out=tmp_path / "flip", progress=False)
    plain = pipeline.featurize(data, out=tmp_path / "plain", progress=False)
    with pytest.raises(StoreError):
        pipeline.featurize(data, out=tmp_path / "plain", progress=False, tta="flip")
    assert not np.allclose(store.features, plain.features, atol=1e-4)
    # the head records it, refuses features made without it, and scoring rebuilds it
    clf = pipeline.train(store, head="logreg", C=1.0)
    assert clf.spec["tta"] == "flip"
    with pytest.raises(SpecMismatchError, match="different tta"):
        clf.check_spec(plain.spec)
    bb = backbone_from_spec(clf.spec)
    assert bb.tta == "flip" and default_store_path(data, bb).name.endswith("-flip")
    run = pipeline.score(clf, data, tmp_path / "p.csv", cache=tmp_path / "cache", progress=False)
    assert run.store.spec["tta"] == "flip"


def test_cli_featurize_tta(tmp_path):
    data = make_class_tree(tmp_path / "data", per_class=1)
    assert main(["featurize", str(data), "--out", str(tmp_path / "s"), "--tta", "flip", "--no-progress"]) == 0
    assert pipeline.FeatureStore.open(tmp_path / "s").spec["tta"] == "flip"
