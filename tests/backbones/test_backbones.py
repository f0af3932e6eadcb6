"""Every backbone kind gives the network's own outputs for logits, penultimate and a named layer."""
from __future__ import annotations

import importlib

import numpy as np
import pytest
from models_for_tests import SIZE, submodel_outputs, tiny_keras_model

from pipeline.backbones import create_backbone
from pipeline.backbones.base import identity
from pipeline.backbones.keras_apps import KERAS_APPS
from pipeline.errors import BackboneError, UsageError
from pipeline.preprocess import Preprocess, normalize

RNG = np.random.default_rng(0)
IMAGES = RNG.integers(0, 256, (3, SIZE, SIZE, 3), dtype=np.uint8)


@pytest.fixture(scope="module")
def tiny():
    """The tiny test CNN: seeded, so the same weights as conftest's tiny_saved_model, tiny_frozen_graph and
    tiny_tflite (exported once per test process and shared by the files that read them)."""
    return tiny_keras_model()


@pytest.fixture(scope="module")
def expected(tiny):
    return submodel_outputs(tiny, normalize(IMAGES, Preprocess(size=(SIZE, SIZE), scaling="tf")))


@pytest.mark.parametrize("name", sorted(KERAS_APPS))
def test_keras_scaling_equals_keras_preprocess_input(name):
    # our in-graph scaling must equal Keras' own preprocess_input for that family
    app = KERAS_APPS[name]
    keras_pre = importlib.import_module(f"keras.applications.{app.module}").preprocess_input
    img = np.random.default_rng(1).integers(0, 256, (2, 40, 30, 3)).astype(np.uint8)
    ours = normalize(img, Preprocess(size=(app.size, app.size), scaling=app.scaling))
    np.testing.assert_allclose(ours, keras_pre(img.astype(np.float32).copy()), rtol=1e-5, atol=1e-4)


@pytest.mark.slow
def test_savedmodel_layers_equal_model_outputs(tiny_saved_model, expected):
    path = tiny_saved_model
    for layer in ("predictions", "logits", "penultimate"):
        bb = create_backbone(path, layer, input_size=SIZE, scaling="tf")
        np.testing.assert_allclose(bb(IMAGES), expected[layer], rtol=1e-4, atol=1e-5)
    assert bb.spec()["kind"] == "savedmodel" and bb.dim == 8
    gd, _, _ = bb._graph()
    relu = next(n.name for n in gd.node if n.op == "Relu")  # the conv map, named as in the graph
    bb = create_backbone(path, relu, input_size=SIZE, scaling="tf")
    np.testing.assert_allclose(bb(IMAGES), expected["conv"], rtol=1e-4, atol=1e-5)


@pytest.mark.slow
def test_frozen_graphdef_layers_equal_model_outputs(tiny_frozen_graph, expected):
    path, inp, names = tiny_frozen_graph
    for layer, key in (("logits", "logits"), ("penultimate", "penultimate"), ("predictions", "predictions"),
                       (names["conv"], "conv")):
        bb = create_backbone(path, layer, input_size=SIZE, scaling="tf", input_tensor=inp)
        np.testing.assert_allclose(bb(IMAGES), expected[key], rtol=1e-4, atol=1e-5)


def test_graphdef_unknown_tensor_is_a_clear_error(tiny_frozen_graph):
    path, inp, _ = tiny_frozen_graph
    bb = create_backbone(path, "no_such_tensor", input_size=SIZE, scaling="tf", input_tensor=inp)
    with pytest.raises(BackboneError, match="no_such_tensor"):
        bb.load()


@pytest.mark.slow
def test_float_tflite_layers_equal_model_outputs(tiny_tflite, expected):
    path = tiny_tflite(quantized=False)
    for layer in ("logits", "penultimate", "predictions"):
        bb = create_backbone(path, layer, scaling="tf")
        np.testing.assert_allclose(bb(IMAGES), expected[layer], rtol=1e-4, atol=1e-4)
    conv = _tensor_with_shape(path, [1, SIZE - 2, SIZE - 2, 8])  # the ReLU'd conv map
    bb = create_backbone(path, conv, scaling="tf")
    np.testing.assert_allclose(bb(IMAGES), expected["conv"], rtol=1e-4, atol=1e-4)


@pytest.mark.slow
def test_quantized_tflite_dequantizes_and_finds_presoftmax_logits(tiny_tflite, expected):
    path = tiny_tflite(quantized=True)
    bb = create_backbone(path, "logits", scaling="tf")
    assert bb.preprocess.scaling == "tf"  # a uint8 model whose input is not pixel-quantized keeps the declared scaling
    logits = bb(IMAGES)
    # the tensor feeding the softmax, dequantized: close to the float model's logits
    assert np.corrcoef(logits.ravel(), expected["logits"].ravel())[0, 1] > 0.98
    pen = create_backbone(path, "penultimate", scaling="tf")(IMAGES)
    assert pen.shape == expected["penultimate"].shape
    assert np.corrcoef(pen.ravel(), expected["penultimate"].ravel())[0, 1] > 0.98


def _tensor_with_shape(path, shape):
    from ai_edge_litert.interpreter import Interpreter

    details = Interpreter(model_path=str(path)).get_tensor_details()
    return [t["name"] for t in details if list(t["shape"]) == shape][-1]


@pytest.fixture(scope="module")
def mobilenet_v2():
    """An untrained Keras MobileNetV2 with its classifier, built once for the module (the tests only read it)."""
    import keras

    return keras.applications.MobileNetV2(weights=None, classifier_activation=None)


@pytest.mark.slow
def test_keras_application_with_local_weights_file(mobilenet_v2, tmp_path):
    # a Keras application with a local weights file gives the network's own outputs
    import keras

    model = mobilenet_v2
    weights = tmp_path / "mnv2.weights.h5"
    model.save_weights(weights)
    img = RNG.integers(0, 256, (2, 224, 224, 3), dtype=np.uint8)
    x = keras.applications.mobilenet_v2.preprocess_input(img.astype(np.float32))
    # the pooling layer by type: its name gets a suffix when an earlier test in this process built one
    pool = next(l for l in model.layers if isinstance(l, keras.layers.GlobalAveragePooling2D))
    own = {"logits": model.output, "penultimate": pool.output,
           "Conv_1": model.get_layer("Conv_1").output}
    wants = [np.asarray(y) for y in keras.Model(model.input, list(own.values()))(x, training=False)]
    wants = [w.mean(axis=(1, 2)) if w.ndim == 4 else w for w in wants]
    # one network, every layer side by side (one build and one trace instead of one per layer)
    bb = create_backbone("mobilenet_v2", ",".join(own), weights=str(weights))
    got = bb(img)
    assert bb.dims == [w.shape[1] for w in wants] == [1000, 1280, 1280]
    for layer, have, want in zip(own, np.split(got, np.cumsum(bb.dims)[:-1], axis=1), wants):
        np.testing.assert_allclose(have, want, rtol=1e-3, atol=1e-4, err_msg=layer)
    assert bb.spec()["source"]["weights_sha256"]


@pytest.mark.slow
def test_keras_offline_without_weights_says_what_to_pass(monkeypatch):
    import keras

    def offline(*a, **k):
        raise Exception("URL fetch failure on https://storage.googleapis.com/...: None -- [Errno -3] name resolution")

    monkeypatch.setattr(keras.utils, "get_file", offline)
    monkeypatch.setattr("keras.src.utils.file_utils.get_file", offline)
    bb = create_backbone("mobilenet", "penultimate")  # any application: MobileNet (v1, fewest layers) builds fastest
    with pytest.raises(BackboneError, match="--weights FILE"):
        bb.load()


def test_unknown_backbone_lists_choices():
    with pytest.raises(BackboneError, match="mobilenet_v2_quant"):
        create_backbone("resnet9000")


def test_weights_only_for_keras_apps():
    with pytest.raises(ValueError, match="--weights"):
        create_backbone("mobilenet_v2_quant", weights="x.h5")


@pytest.mark.slow
def test_hub_handle_to_a_local_savedmodel(tiny_saved_model, expected):
    # hub:HANDLE goes through tensorflow_hub.resolve (a URL downloads; a local folder is used as is)
    path = tiny_saved_model
    bb = create_backbone(f"hub:{path}", "penultimate", input_size=SIZE, scaling="tf")
    np.testing.assert_allclose(bb(IMAGES), expected["penultimate"], rtol=1e-4, atol=1e-5)
    assert bb.spec()["source"]["handle"] == path


@pytest.mark.slow
def test_keras_application_with_legacy_h5_weights(mobilenet_v2, tmp_path):
    # the legacy .h5 files Keras downloads (e.g. ..._weights_tf_dim_ordering_tf_kernels.h5) load too
    import h5py
    import keras
    from keras.src.legacy.saving import legacy_h5_format

    model = mobilenet_v2
    path = tmp_path / "mobilenet_v2_weights_tf_dim_ordering_tf_kernels_1.0_224.h5"
    with h5py.File(path, "w") as f:
        legacy_h5_format.save_weights_to_hdf5_group(f, model)
    img = RNG.integers(0, 256, (1, 224, 224, 3), dtype=np.uint8)
    want = np.asarray(model(keras.applications.mobilenet_v2.preprocess_input(img.astype(np.float32))))
    np.testing.assert_allclose(create_backbone("mobilenet_v2", "logits", weights=str(path))(img), want,
                               rtol=1e-3, atol=1e-4)


@pytest.mark.slow
def test_bfloat16_precision_is_close_to_float32_and_part_of_the_spec():
    images = np.random.default_rng(3).integers(0, 256, (2, 224, 224, 3)).astype(np.uint8)
    fp32 = create_backbone("mobilenet", "penultimate", weights="random")
    again = create_backbone("mobilenet", "penultimate", weights="random")
    bf16 = create_backbone("mobilenet", "penultimate", weights="random", precision="bfloat16")
    a, b = fp32(images), bf16(images)
    np.testing.assert_array_equal(a, again(images))  # "random" weights are seeded: the same network each time
    cos = (a * b).sum(1) / np.linalg.norm(a, axis=1) / np.linalg.norm(b, axis=1)
    assert b.dtype == np.float32 and cos.min() > 0.99
    assert bf16.spec()["precision"] == "bfloat16" and identity(bf16.spec()) != identity(fp32.spec())
    with pytest.raises(UsageError, match="precision bfloat16 applies to Keras"):
        create_backbone("mobilenet_v2_quant", precision="bfloat16")


@pytest.mark.slow
def test_tensorflow_backbone_featurize_equals_direct_calls_skips_bad_files_and_resumes(tiny_saved_model, tmp_path):
    from conftest import make_class_tree

    import pipeline
    from pipeline.decode.images import load_image

    model = tiny_saved_model
    data = make_class_tree(tmp_path / "data", per_class=5)
    (data / "red" / "broken.jpg").write_bytes(b"<html>404</html>")
    opts = dict(input_size=SIZE, scaling="tf", batch_size=4, progress=False, report=True)
    run = pipeline.featurize(data, model, "penultimate", out=tmp_path / "s", **opts)
    assert [(s["path"], s["reason"]) for s in run.skipped] == [("red/broken.jpg", "not_an_image")]
    assert run.computed == 10 and len(run.store) == 10
    bb = create_backbone(model, "penultimate", input_size=SIZE, scaling="tf")
    direct = bb(np.stack([load_image(data / p, bb.preprocess) for p in run.store.paths]))
    np.testing.assert_allclose(run.store.features, direct, rtol=1e-5, atol=1e-6)
    again = pipeline.featurize(data, model, "penultimate", out=tmp_path / "s", **opts)
    assert again.computed == 0 and again.reused == 10


def test_tflite_layer_added_as_output_in_place_reads_the_same_values_as_every_tensor_preserved():
    """The model rewritten by appending an output list (a few bytes; the old way repacked the whole model)
    lists the layer as an output, and reading it there gives exactly what the fully preserved model holds."""
    from pathlib import Path

    from pipeline.backbones.tflite import (
        BUNDLED_MODELS,
        _open_interpreter,
        _repacked_with_outputs,
        add_outputs,
    )

    path = str(BUNDLED_MODELS["mobilenet_v2_quant"].path)
    preserved = _open_interpreter(path, num_threads=1)
    layer = next(t for t in preserved.get_tensor_details() if t["name"] == "MobilenetV2/Logits/AvgPool")
    content = Path(path).read_bytes()
    image = np.random.default_rng(3).integers(0, 256, (1, 224, 224, 3), dtype=np.uint8)
    values = {}
    for name, model in (("appended", add_outputs(content, [layer["index"]])),
                        ("repacked", _repacked_with_outputs(content, [layer["name"]]))):
        it = _open_interpreter(path, model, num_threads=1)
        assert [d["name"] for d in it.get_output_details()][-1] == layer["name"], name
        it.set_tensor(it.get_input_details()[0]["index"], image)
        it.invoke()
        values[name] = it.get_tensor(layer["index"])
    preserved.set_tensor(preserved.get_input_details()[0]["index"], image)
    preserved.invoke()
    np.testing.assert_array_equal(values["appended"], preserved.get_tensor(layer["index"]))
    np.testing.assert_array_equal(values["appended"], values["repacked"])
    assert add_outputs(b"", [1]) is None  # not a flatbuffer: the caller repacks (or preserves every tensor)


def test_tflite_operator_codes_read_from_the_bytes_equal_the_schemas_and_name_custom_ops(tmp_path):
    """The operator check reads the flatbuffer's bytes itself (no schema module at start-up): the same
    codes as LiteRT's generated schema, custom and Flex names included; a file whose offsets point outside
    it is refused, not misread; a built-in code this LiteRT does not know passes the check and is refused
    by the interpreter, naming the file."""
    import struct
    from pathlib import Path

    from ai_edge_litert import schema_py_generated as schema
    from ai_edge_litert.tools import flatbuffer_utils as fb

    from pipeline.backbones.tflite import (
        BUNDLED_MODELS,
        CUSTOM_CODE,
        TFLiteBackbone,
        _field,
        check_builtin_ops,
        operator_codes,
    )

    content = Path(BUNDLED_MODELS["mobilenet_v2_quant"].path).read_bytes()
    model = fb.read_model_from_bytearray(bytearray(content))
    model.operatorCodes[1].builtinCode = model.operatorCodes[1].deprecatedBuiltinCode = CUSTOM_CODE
    model.operatorCodes[1].customCode = b"FlexWriteFile"
    custom = bytes(fb.convert_object_to_bytearray(model))
    for data in (content, custom):
        root = schema.Model.GetRootAs(data, 0)
        expected = [(max(c.BuiltinCode(), c.DeprecatedBuiltinCode()), c.CustomCode())
                    for c in (root.OperatorCodes(i) for i in range(root.OperatorCodesLength()))]
        assert operator_codes(data) == expected and len(expected) > 3
    assert operator_codes(custom)[1] == (CUSTOM_CODE, b"FlexWriteFile")
    with pytest.raises(BackboneError, match="FlexWriteFile"):
        check_builtin_ops("custom.tflite", custom)
    with pytest.raises(ValueError, match="TFL3"):
        operator_codes(b"\0" * 64)
    # a table whose vtable offset points before the buffer's start (struct would count it from the end, where
    # a hostile file appends an empty vtable: the Flex op would read as ADD) is refused, not misread
    buf = bytearray(custom)

    def u32(at):
        return struct.unpack_from("<I", buf, at)[0]

    codes = _field(buf, u32(0), 1)  # the Model's operator_codes vector, found before the file is altered
    vector = codes + u32(codes)
    table = vector + 8 + u32(vector + 8)  # OperatorCode 1, the Flex one
    buf += struct.pack("<HH", 4, 4)  # an empty vtable as the last 4 bytes
    struct.pack_into("<i", buf, table, table + 4)  # its vtable "at" -4
    with pytest.raises(BackboneError, match="evil.tflite is not a usable TFLite model.*before the buffer's start"):
        check_builtin_ops("evil.tflite", bytes(buf))
    model.operatorCodes[1].builtinCode, model.operatorCodes[1].customCode = 250, None
    unknown = tmp_path / "unknown.tflite"
    unknown.write_bytes(bytes(fb.convert_object_to_bytearray(model)))
    with pytest.raises(BackboneError, match="unknown.tflite is not a usable TFLite model.*250"):
        TFLiteBackbone(unknown)


def test_pool_averages_a_map_and_passes_a_pooled_1x1_map_through_unchanged():
    """A TFLite layer read after its own average pool is (N, 1, 1, C): taken as it is (its own mean), an empty
    batch keeping its width; a wider map is averaged; anything else is flattened."""
    from pipeline.backbones.base import pool

    rng = np.random.default_rng(0)
    pooled, wide = rng.normal(size=(3, 1, 1, 5)).astype(np.float32), rng.normal(size=(2, 3, 4, 5)).astype(np.float32)
    np.testing.assert_array_equal(pool(pooled), pooled.mean(axis=(1, 2)))
    np.testing.assert_allclose(pool(wide), wide.mean(axis=(1, 2)), rtol=1e-6)
    assert pool(np.zeros((0, 1, 1, 4), np.float32)).shape == (0, 4)
    assert pool(np.zeros((2, 3, 2), np.float32)).shape == (2, 6)
