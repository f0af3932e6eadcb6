"""Export (issue 16): backbone + head as one SavedModel or TFLite file whose probabilities equal predict_proba."""
from __future__ import annotations

import io
import json
import subprocess
import sys

import numpy as np
import pytest
from conftest import noise_image
from models_for_tests import COLOURS, SIZE, calibrated_classifier, colour_files, tiny_keras_model  # noqa: F401
from PIL import Image

from pipeline.backbones import create_backbone
from pipeline.cli import main
from pipeline.decode.images import decode
from pipeline.errors import UsageError
from pipeline.preprocess import Preprocess


@pytest.fixture(scope="module")
def data(tiny_images):
    return tiny_images  # 4 images per class (conftest), the ones the shared exports were trained on


def _decoded(paths, pre):
    return np.stack([decode(p.read_bytes(), pre) for p in paths])


@pytest.mark.slow
@pytest.mark.parametrize("head,pca", [("linear_svm", None), ("svm", 4), ("logreg", None)])
def test_saved_model_equals_predict_proba(tiny_app, tiny_head_export, tiny_images, head, pca):
    # serving_default on images decoded by the project's decoder gives predict_proba's numbers
    # (the calibrated head over the tiny CNN and its SavedModel: conftest exports each once per test process)
    import tensorflow as tf

    paths, _ = tiny_images
    clf, out = tiny_head_export("keras", head, pca)
    loaded = tf.saved_model.load(str(out))
    assert set(loaded.signatures) == {"serving_default", "predict_bytes"}
    got = loaded.signatures["serving_default"](images=tf.constant(_decoded(paths, clf_pre(clf))))
    want = clf.predict_proba(list(map(str, paths)))
    assert np.abs(got["probabilities"].numpy() - want).max() <= 1e-4
    assert [c.decode() for c in got["classes"].numpy()[0]] == list(clf.classes_)
    # predict_bytes decodes the files in TensorFlow with Pillow's arithmetic: the same pixels, so the same numbers
    raw = loaded.signatures["predict_bytes"](images=tf.constant([p.read_bytes() for p in paths]))
    p_bytes = raw["probabilities"].numpy()
    assert p_bytes.shape == want.shape and np.abs(p_bytes - want).max() <= 1e-4


@pytest.mark.slow
@pytest.mark.parametrize("kind,head", [("savedmodel", "logreg"), ("graphdef", "svm")])
def test_saved_model_from_a_tensorflow_graph_backbone(tiny_head_export, tiny_images, kind, head):
    # a SavedModel folder or a frozen GraphDef as the backbone: exported as constants, same numbers
    # (the tiny CNN as either, with a head of another kind each; conftest exports each once per test process,
    # tests/export/test_allowed_ops.py checks the same exports' ops)
    import tensorflow as tf

    paths, _ = tiny_images
    clf, out = tiny_head_export(kind, head)
    loaded = tf.saved_model.load(str(out))
    got = loaded.signatures["serving_default"](images=tf.constant(_decoded(paths, clf_pre(clf))))
    assert np.abs(got["probabilities"].numpy() - clf.predict_proba(list(map(str, paths)))).max() <= 1e-4


def clf_pre(clf) -> Preprocess:
    return Preprocess.from_dict(clf.spec["preprocess"])


@pytest.mark.slow
def test_saved_model_keeps_the_test_time_flip(tiny_app, tiny_head_export, tiny_images):
    # a head trained on --tta flip features: the export averages the image and its mirror too
    import tensorflow as tf

    paths, _ = tiny_images
    clf, out = tiny_head_export("keras_flip")
    assert clf.spec["tta"] == "flip"
    loaded = tf.saved_model.load(str(out))
    got = loaded.signatures["serving_default"](images=tf.constant(_decoded(paths, clf_pre(clf))))
    assert np.abs(got["probabilities"].numpy() - clf.predict_proba(list(map(str, paths)))).max() <= 1e-4


@pytest.mark.slow
def test_exports_of_one_preprocessing_trace_the_decoder_once_and_the_second_decodes_as_its_head(
        tiny_app, tiny_head_export, tiny_images, tmp_path, monkeypatch):
    # a second head over the same backbone exported in the same process reuses the traced decoder (its trace
    # is most of an export's time) and its predict_bytes gives its head's predict_proba (a first export's:
    # test_saved_model_equals_predict_proba); another preprocessing has a decoder of its own
    import dataclasses

    import tensorflow as tf

    from pipeline.decode import tfdecode
    from pipeline.export import exporter

    paths, _ = tiny_images
    # two heads over the tiny CNN, as conftest trained them for the other export tests, exported again here
    (first, _), (second, _) = (tiny_head_export("keras", head) for head in ("logreg", "linear_svm"))
    pre = clf_pre(first)
    traced, real = [], tfdecode.decode_image
    monkeypatch.setattr(tfdecode, "decode_image", lambda data, pre: traced.append(pre) or real(data, pre))
    try:
        first.export(tmp_path / "first", format="saved_model")
        out = second.export(tmp_path / "second", format="saved_model")
        # traced for the first export, or by an earlier export of this process (another test's): never twice
        assert traced in ([], [pre]) and clf_pre(second) == pre
        raw = tf.saved_model.load(str(out)).signatures["predict_bytes"](
            images=tf.constant([p.read_bytes() for p in paths]))
        assert np.abs(raw["probabilities"].numpy() - second.predict_proba(list(map(str, paths)))).max() <= 1e-4
        for change in ({"resample": "nearest"}, {"crop_fraction": 0.5}, {"size": (16, 16)}):
            assert exporter._decoder(dataclasses.replace(pre, **change)) is not exporter._decoder(pre), change
    finally:
        if traced:  # no decoder traced through the patched function outlives the test
            exporter._decoder.cache_clear()


def test_tflite_backbone_with_flip_is_refused_with_the_reason(data, tmp_path):
    paths, labels = data
    clf = calibrated_classifier(create_backbone("mobilenet_v2_quant", "penultimate", tta="flip"), paths, labels)
    with pytest.raises(UsageError, match="tta=flip"):
        clf.export(tmp_path / "m.tflite", format="tflite")
    assert not (tmp_path / "m.tflite").exists()


@pytest.mark.slow
def test_saved_model_loads_without_this_package(tiny_app, tiny_head_export, tiny_images, tmp_path):
    # a fresh process with only TensorFlow loads and runs the export
    paths, _ = tiny_images
    clf, out = tiny_head_export()  # the linear SVM's SavedModel, as exported for test_saved_model_equals_predict_proba
    np.save(tmp_path / "x.npy", _decoded(paths[:4], clf_pre(clf)))
    code = ("import json, sys, numpy as np, tensorflow as tf\n"
            f"m = tf.saved_model.load({str(out)!r})\n"
            f"r = m.signatures['serving_default'](images=tf.constant(np.load({str(tmp_path / 'x.npy')!r})))\n"
            "assert not any(k == 'pipeline' or k.startswith('pipeline.') for k in sys.modules)\n"
            "print(json.dumps(r['probabilities'].numpy().tolist()))\n")
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=tmp_path, timeout=300)
    assert run.returncode == 0, run.stderr[-2000:]
    got = np.asarray(json.loads(run.stdout.strip().splitlines()[-1]))
    assert np.abs(got - clf.predict_proba(list(map(str, paths[:4])))).max() <= 1e-4


def _run_tflite(path, images):
    from ai_edge_litert.interpreter import Interpreter

    it = Interpreter(model_path=str(path))
    runner = it.get_signature_runner("serving_default")
    out = [runner(images=im[None]) for im in images]
    return np.concatenate([o["probabilities"] for o in out]), [c.decode() for c in out[0]["classes"][0]]


@pytest.mark.slow
def test_tflite_from_keras_backbone_equals_predict_proba(tiny_app, data, tmp_path):
    paths, labels = data
    clf = calibrated_classifier(create_backbone(tiny_app, "penultimate", weights="random"), paths, labels, "svm")
    out = clf.export(tmp_path / "model.tflite", format="tflite")
    probs, classes = _run_tflite(out, _decoded(paths, clf_pre(clf)))
    assert np.abs(probs - clf.predict_proba(list(map(str, paths)))).max() <= 1e-2
    assert classes == list(clf.classes_)


@pytest.mark.slow
def test_tflite_bundled_quantized_backbone_stays_quantized(tiny_head_export, tiny_images):
    # the bundled full-integer MobileNetV2 keeps its uint8 operators; the head runs after it in float
    # (a logistic head on it as one .tflite: conftest exports it once per test process, tests/serving serves it)
    from ai_edge_litert.interpreter import Interpreter

    paths, _ = tiny_images
    clf, out = tiny_head_export("mobilenet_v2_quant", "logreg", fmt="tflite")
    images = _decoded(paths, clf_pre(clf))
    probs, classes = _run_tflite(out, images)
    assert np.abs(probs - clf.predict_proba(list(map(str, paths)))).max() <= 1e-2
    assert classes == list(clf.classes_)
    it = Interpreter(model_path=str(out))
    ops = [op["op_name"] for op in it._get_ops_details()]
    conv_inputs = {it.get_tensor_details()[op["inputs"][1]]["dtype"] for op in it._get_ops_details()
                   if op["op_name"] == "CONV_2D"}
    assert conv_inputs == {np.uint8} and "DEQUANTIZE" in ops
    assert it.get_input_details()[0]["dtype"] == np.uint8


@pytest.mark.slow
@pytest.mark.parametrize("quantized", [False, True])
def test_tflite_from_other_tflite_backbones(data, tmp_path, quantized, tiny_tflite):
    # a float TFLite model gets its pixel scaling prepended; a quantized one its head after a DEQUANTIZE
    path = tiny_tflite(quantized)  # the tiny CNN converted once per test process (conftest)
    paths, labels = data
    clf = calibrated_classifier(create_backbone(path, "penultimate", scaling="tf"), paths, labels, "svm")
    out = clf.export(tmp_path / "model.tflite", format="tflite")
    probs, _ = _run_tflite(out, _decoded(paths, clf_pre(clf)))
    assert np.abs(probs - clf.predict_proba(list(map(str, paths)))).max() <= 1e-2


def test_tflite_backbone_cannot_go_into_a_saved_model(data, tmp_path):
    paths, labels = data
    clf = calibrated_classifier(create_backbone("mobilenet_v2_quant", "penultimate"), paths[::2], labels[::2])
    with pytest.raises(UsageError, match="format=tflite"):
        clf.export(tmp_path / "model", format="saved_model")
    assert not (tmp_path / "model").exists()


def test_cli_export_writes_the_file_and_refuses_to_overwrite(data, tmp_path):
    paths, labels = data
    clf = calibrated_classifier(create_backbone("mobilenet_v2_quant", "penultimate"), paths, labels)
    head = clf.save(tmp_path / "m.head.npz")
    out = tmp_path / "m.tflite"
    assert main(["export", str(head), "--format", "tflite", "--out", str(out)]) == 0
    assert out.stat().st_size > 1_000_000
    assert main(["export", str(head), "--format", "tflite", "--out", str(out)]) == 2  # exists: needs --force
    with pytest.raises(SystemExit):
        main(["export", str(head), "--format", "onnx", "--out", str(out)])


# ---- decoding in TensorFlow = the project's decoder ----------------------------------------------
def _jpeg(image: Image.Image, orientation: int = 1, **kw) -> bytes:
    exif = Image.Exif()
    exif[0x0112] = orientation
    buf = io.BytesIO()
    image.save(buf, "JPEG", exif=exif, quality=95, **kw)
    return buf.getvalue()


def _tf_decode(data: bytes, pre: Preprocess) -> np.ndarray:
    import tensorflow as tf

    from pipeline.decode.tfdecode import decode_image

    return decode_image(tf.constant(data), pre).numpy()


@pytest.mark.parametrize("orientation", range(1, 9))
def test_tf_decode_applies_exif_orientation_like_pillow(orientation):
    image = noise_image(1, (120, 80)).resize((300, 200))
    pre = Preprocess(size=(40, 50), crop_fraction=0.875)
    data = _jpeg(image, orientation)
    assert (_tf_decode(data, pre) == decode(data, pre)).all()


@pytest.mark.parametrize("what", ["big_jpeg", "grey_jpeg", "png_alpha", "bmp", "bicubic"])
def test_tf_decode_equals_pillow_decode(what):
    # draft (DCT downscaling), grey JPEGs, transparency on white, other formats, another filter
    pre = Preprocess(size=(32, 32), resample="bicubic" if what == "bicubic" else "bilinear")
    image = noise_image(2, (300, 220)).resize((900, 660))
    buf = io.BytesIO()
    if what == "png_alpha":
        rgba = np.dstack([np.asarray(image), np.linspace(0, 255, 900 * 660).reshape(660, 900).astype(np.uint8)])
        Image.fromarray(rgba, "RGBA").save(buf, "PNG")
    elif what == "bmp":
        image.save(buf, "BMP")
    else:
        (image.convert("L") if what == "grey_jpeg" else image).save(buf, "JPEG", quality=90)
    data = buf.getvalue()
    assert (_tf_decode(data, pre) == decode(data, pre)).all()


def test_tf_decode_refuses_a_png_claiming_too_many_pixels():
    # the pixel limit of the Pillow decoder holds in predict_bytes too: refused before decoding
    import struct

    import tensorflow as tf

    buf = io.BytesIO()
    Image.new("RGB", (8, 8)).save(buf, "PNG")
    data = bytearray(buf.getvalue())
    data[16:24] = struct.pack(">II", 40000, 40000)  # IHDR width and height
    with pytest.raises(tf.errors.InvalidArgumentError, match="too many pixels"):
        _tf_decode(bytes(data), Preprocess(size=(32, 32)))


@pytest.mark.parametrize("resample", ["bilinear", "bicubic", "lanczos"])
@pytest.mark.parametrize("size", [(56, 56), (240, 320)])
@pytest.mark.parametrize("shape", [(300, 200), (200, 420)])
def test_tf_resize_reproduces_pillows_arithmetic(resample, size, shape):
    # Pillow's fixed-point two-pass resize, done in TensorFlow: the same pixels, down- and upscaling,
    # and for the tall image to 56x56 with the vertical pass first, as Pillow 13 does
    import tensorflow as tf

    from pipeline.decode.images import _RESAMPLE, crop_box
    from pipeline.decode.tfdecode import resize_box

    image = noise_image(3, (150, 100)).resize(shape)
    pre = Preprocess(size=size, crop_fraction=0.875, resample=resample)
    left, top, right, bottom = crop_box(*shape, pre)
    want = np.asarray(image.resize(size[::-1], _RESAMPLE[resample], box=(left, top, right, bottom)))
    got = resize_box(tf.constant(np.asarray(image)), (left, top, right - left, bottom - top), pre).numpy()
    assert (got == want).all()


def test_an_export_description_nested_100000_deep_is_refused_naming_the_file(tmp_path):
    """E-ERR: a SavedModel's description of 100,000 nested arrays raised RecursionError with no file named."""
    from pipeline.errors import ModelFileError
    from pipeline.export.info import SAVED_MODEL_FILE, read_saved_model_info

    path = tmp_path / "sm" / SAVED_MODEL_FILE
    path.parent.mkdir(parents=True)
    path.write_text("[" * 100_000 + "]" * 100_000)
    with pytest.raises(ModelFileError, match=r"tf_feature_pipeline.json: the export description is not JSON "
                                             r"\(it is nested too deep"):
        read_saved_model_info(tmp_path / "sm")
