"""pipeline/backbones/__init__.py: the registry of kinds, its declared widths, one preprocessing rule, one
layer-resolution rule."""
from __future__ import annotations

import numpy as np
import pytest

from pipeline.backbones import (
    KINDS,
    GraphBackbone,
    KerasBackbone,
    TFLiteBackbone,
    backbone_from_spec,
    create_backbone,
    kind_of,
    known_widths,
)
from pipeline.backbones.base import resolve_layer
from pipeline.backbones.keras_apps import KERAS_APPS
from pipeline.errors import BackboneError, UnknownNameError, UsageError
from pipeline.preprocess import Preprocess, resolve_preprocess
from pipeline.spec import FeatureSpec


@pytest.mark.parametrize("name, kind", [("mobilenet_v2", KerasBackbone), ("mobilenet_v2_quant", TFLiteBackbone),
                                        ("models/x.TFLITE", TFLiteBackbone), ("frozen.pb", GraphBackbone),
                                        ("hub:https://tfhub.dev/x/1", GraphBackbone), ("resnet9000", None)])
def test_each_name_has_one_kind(name, kind):
    assert kind_of(name) is kind
    assert sum(k.matches(name) for k in KINDS.values()) == (kind is not None)


def test_a_folder_is_a_graph_and_specs_find_their_kind(tmp_path):
    assert kind_of(str(tmp_path)) is GraphBackbone
    for stored, kind in (("keras", KerasBackbone), ("tflite", TFLiteBackbone), ("graphdef", GraphBackbone),
                         ("savedmodel", GraphBackbone), ("toy", None)):
        assert kind_of(FeatureSpec("b", kind=stored)) is kind


def test_every_named_model_declares_its_widths():
    assert set(known_widths()) == {*KERAS_APPS, "mobilenet_v2_quant"}
    assert all(w["penultimate"] > 0 and w["logits"] > 0 for w in known_widths().values())


def _check_widths(name, **kw):
    bb = create_backbone(name, "penultimate,logits", **kw)
    h, w = bb.preprocess.size
    out = bb(np.zeros((1, h, w, 3), np.uint8))
    want = known_widths()[name]
    assert bb.dims == [want["penultimate"], want["logits"]]
    assert out.shape == (1, want["penultimate"] + want["logits"]) and np.isfinite(out).all()
    return bb


def test_bundled_model_has_its_declared_widths():
    _check_widths("mobilenet_v2_quant")


@pytest.mark.slow
@pytest.mark.parametrize("name", sorted(KERAS_APPS))
def test_keras_application_has_its_declared_widths(name, monkeypatch):
    # every registered Keras application, untrained (no download): built by the library at its declared input
    # size, its layers have the declared widths. The network is built without materialising its weights
    # (keras.StatelessScope) and the library's own forward function is traced on a symbolic batch; the real
    # forward pass of a Keras application is timed out of this test (mobilenet below, and tests/backbones/
    # test_backbones.py compares it with Keras' own outputs)
    import keras

    from pipeline.backbones import keras_apps

    built = {}

    def capture(feature_model, pre, jit_compile):  # the network _load compiles, kept for the symbolic pass
        built["model"] = feature_model
        return compile_tf(feature_model, pre, jit_compile)

    compile_tf = keras_apps._tf_function
    monkeypatch.setattr(keras_apps, "_tf_function", capture)
    bb = create_backbone(name, "penultimate,logits", weights="random")
    try:
        with keras.StatelessScope(initialize_variables=False):  # variables stay uninitialised: no weights drawn
            bb.load()
        want = known_widths()[name]
        assert bb.dims == [want["penultimate"], want["logits"]]
        h, w = bb.preprocess.size
        assert tuple(built["model"].input_shape[1:3]) == (h, w)  # the declared size is the network's own
        out = keras_apps._features(keras.ops, built["model"], keras.KerasTensor((1, h, w, 3), "uint8"), bb.preprocess)
        assert tuple(out.shape) == (1, want["penultimate"] + want["logits"])
        assert bb.spec()["source"]["weights"] == "random"
    finally:
        keras.backend.clear_session()


@pytest.mark.slow
def test_a_keras_application_runs_a_real_forward_pass_with_its_declared_widths():
    import keras

    # MobileNet (v1): the registered application with the fewest layers, so the quickest to build and trace
    bb = _check_widths("mobilenet", weights="random")
    assert bb.spec()["source"]["weights"] == "random"
    keras.backend.clear_session()


def test_preprocessing_precedence_explicit_then_own_config_then_default():
    own = {"size": 299, "scaling": "caffe"}
    assert resolve_preprocess(None, own) == Preprocess(size=(299, 299), scaling="caffe")
    assert resolve_preprocess({"input_size": 64, "scaling": None, "crop_fraction": 0.875}, own) == \
        Preprocess(size=(64, 64), scaling="caffe", crop_fraction=0.875)  # None never overrides
    assert resolve_preprocess({"resample": "bicubic"}) == Preprocess(resample="bicubic")  # library defaults
    whole = Preprocess(size=(32, 32), scaling="unit")
    assert resolve_preprocess(whole, own) is whole
    with pytest.raises(UsageError, match="unknown preprocessing setting.*mean"):
        resolve_preprocess({"mean": 0.5})


def test_every_kind_applies_the_same_rule():
    vgg = create_backbone("vgg16", crop_fraction=0.875)  # not loaded: nothing is downloaded
    assert (vgg.preprocess.size, vgg.preprocess.scaling, vgg.preprocess.crop_fraction) == ((224, 224), "caffe", 0.875)
    quant = create_backbone("mobilenet_v2_quant", scaling="tf")
    assert (quant.preprocess.size, quant.preprocess.scaling) == ((224, 224), "tf")  # size: the model's own
    assert create_backbone("mobilenet_v2_quant").preprocess.scaling == "raw"
    with pytest.raises(BackboneError, match="takes 224x224 images, but 96x96 was requested"):
        create_backbone("mobilenet_v2_quant", input_size=96)


def test_layers_resolve_by_one_rule():
    table = ({"penultimate": "pool", "logits": None, "predictions": None}, ["conv", "pool", "embedding"])
    assert resolve_layer("penultimate", table, "m.tflite") == "pool"
    assert resolve_layer("conv", table, "m.tflite") == "conv"
    with pytest.raises(BackboneError, match="m.tflite has no classifier, so no 'logits' layer"):
        resolve_layer("logits", table, "m.tflite")
    with pytest.raises(UnknownNameError, match="m.tflite has no tensor 'embeding'.*embedding"):
        resolve_layer("embeding", table, "m.tflite", "tensor")


def test_a_kind_lists_its_layers_and_rebuilds_from_a_spec():
    bb = create_backbone("mobilenet_v2_quant", "logits", tta="flip")
    layers = bb.list_layers()
    assert layers[:3] == ["logits", "penultimate", "predictions"] and "MobilenetV2/Logits/AvgPool" in layers
    again = backbone_from_spec(bb.spec())
    assert isinstance(again, TFLiteBackbone) and again.feature_spec() == bb.feature_spec()


def test_an_explicit_batch_size_survives_building_a_keras_application(tiny_app):
    """--batch-size 8 is the batch the network runs, not the device default picked when it is built."""
    from pipeline.backbones import create_backbone

    # any application does: the tiny CNN registered as one (conftest.py) builds in no time
    bb = create_backbone(tiny_app, weights="random", batch_size=8)
    bb.load()
    assert bb.batch_size == 8
    auto = create_backbone(tiny_app, weights="random")
    auto.load()
    assert auto.batch_size == (256 if auto.device == "GPU" else 32)  # the device's default
