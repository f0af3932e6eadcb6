"""pipeline/spec.py: the typed feature spec reads and writes exactly the dicts stores and heads hold."""
from __future__ import annotations

import json

import pytest

from pipeline.backbones import create_backbone, describe, identity
from pipeline.errors import SpecMismatchError, StoreError
from pipeline.spec import FeatureSpec
from pipeline.store import FeatureStore, open_writer

PRE = {"size": [224, 224], "crop_fraction": 1.0, "resample": "bilinear", "scaling": "raw", "channel_order": "RGB",
       "scale": 1.0, "mean": [0.0, 0.0, 0.0], "std": [1.0, 1.0, 1.0]}
# a store made before precision and tta existed, and one made by a Keras backbone (keras_backend: information)
OLD = {"backbone": "b", "kind": "tflite", "model": "sha-a", "weights": None, "layer": "penultimate",
       "preprocess": PRE, "source": {"path": "/m/b.tflite", "sha256": "sha-a"}, "tensor": "pool", "dim": 4}
KERAS = {"backbone": "vgg16", "kind": "keras", "model": "vgg16", "weights": "imagenet", "layer": "penultimate",
         "preprocess": PRE, "precision": "bfloat16", "tta": "flip", "source": {"weights": "imagenet"},
         "keras_backend": "jax", "tensor": "fc2:input", "dim": 4096}
IMPORTED = {"backbone": "imported", "source": "x.parquet", "sha256": "ab" * 32, "dim": 12}


@pytest.mark.parametrize("stored", [OLD, KERAS, IMPORTED, dict(OLD, tensor=None, dim=None)])
def test_a_stored_spec_is_written_back_exactly(stored):
    # old stores and heads load, and nothing they hold is reordered, added or dropped
    text = json.dumps(stored)
    assert json.dumps(FeatureSpec.from_dict(json.loads(text)).to_dict()) == text


def test_older_specs_read_with_todays_defaults():
    spec = FeatureSpec.from_dict(OLD)
    assert spec.precision == "float32" and spec.tta is None and spec.dim == 4
    assert spec.identity() == identity(dict(OLD, precision="float32", tta=None))


def test_the_backbone_builds_todays_dicts():
    bb = create_backbone("mobilenet_v2_quant", "logits")
    request = bb.request()
    assert list(request) == ["backbone", "kind", "model", "weights", "layer", "preprocess", "precision", "tta",
                             "source"]
    assert request == bb.feature_request().to_dict() and bb.feature_request().dim is None
    spec = bb.spec()
    assert spec == {**request, "tensor": bb.tensor, "dim": 1001} and list(spec)[-2:] == ["tensor", "dim"]
    assert FeatureSpec.from_dict(spec) == bb.feature_spec()
    assert FeatureSpec.from_dict(spec).request().to_dict() == request


def test_identity_ignores_locations_and_information_only_keys():
    moved = dict(KERAS, source={"weights": "imagenet", "path": "/elsewhere"}, keras_backend="torch")
    assert FeatureSpec.from_dict(moved).identity() == FeatureSpec.from_dict(KERAS).identity()
    assert FeatureSpec.from_dict(KERAS).differences(dict(KERAS, tta=None, dim=2048)) == ["dim", "tta"]
    assert FeatureSpec.from_dict(IMPORTED).identity() == {"backbone": "imported", "dim": 12}
    assert FeatureSpec.from_dict(IMPORTED).differences(OLD) == ["backbone", "dim"]


def test_describe_names_what_is_known():
    assert describe(KERAS) == ("vgg16 [keras] layer=penultimate (fc2:input, D=4096, 224x224 raw, crop 1.0, "
                               "bfloat16, tta flip)")
    assert describe(FeatureSpec.from_dict(OLD).request()) == "b [tflite] layer=penultimate (224x224 raw, crop 1.0)"
    assert describe(IMPORTED) == "features imported from x.parquet (D=12)"


def test_a_store_refuses_another_spec_naming_both(tmp_path):
    w = open_writer(tmp_path / "s", FeatureSpec.from_dict(OLD).request().to_dict())
    w.set_spec(FeatureSpec.from_dict(OLD))  # a FeatureSpec or its dict
    with pytest.raises(StoreError, match=r"holds features of b \[tflite\].*not of b \[tflite\].*tta flip"):
        w.set_spec(dict(OLD, tta="flip"))
    w.close()
    store = FeatureStore.open(tmp_path / "s")
    assert store.spec == OLD and store.feature_spec == FeatureSpec.from_dict(OLD)


def test_a_head_refuses_features_of_another_layer():
    from sklearn.linear_model import LogisticRegression

    from pipeline.heads.classifier import Classifier

    model = LogisticRegression().fit([[0, 0, 0, 0], [1, 1, 1, 1]], ["a", "b"])
    clf = Classifier(model, ["a", "b"], OLD)
    clf.check_spec(FeatureSpec.from_dict(dict(OLD, source={"path": "/copied/b.tflite"})))  # moved model: fine
    with pytest.raises(SpecMismatchError, match=r"different layer\)"):
        clf.check_spec(dict(OLD, layer="logits", tensor="logits"), "these features")


def test_a_key_set_on_an_old_spec_is_written_too():
    # an old store's spec has no tta key; a spec derived from it with tta set must not lose it
    from dataclasses import replace

    derived = replace(FeatureSpec.from_dict(OLD), tta="flip").to_dict()
    assert derived == {**OLD, "tta": "flip"} and list(derived)[:len(OLD)] == list(OLD)
