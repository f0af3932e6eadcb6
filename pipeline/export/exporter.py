"""Export a head with its backbone as one TensorFlow artifact: image -> probabilities, no Python needed.

``export(classifier, out, fmt)`` writes

* ``saved_model``: a SavedModel folder with two signatures, ``serving_default`` (a uint8 batch
  (N, H, W, 3) of images already decoded to the backbone's size, input ``images``) and
  ``predict_bytes`` (a batch of encoded image files, input ``images``: decoded, EXIF-oriented,
  centre-cropped and resized in TensorFlow, see pipeline/decode/tfdecode.py). Both return
  ``probabilities`` (N, n_classes) float32 and ``classes`` (N, n_classes) strings naming the
  columns, in the order of the head's ``classes_``; ``assets.extra/tf_feature_pipeline.json``
  describes it for ``serve`` (pipeline/export/info.py). The backbone is the head's own (Keras
  applications and TensorFlow graphs: GraphDef, SavedModel, TF-Hub) with its pixel scaling,
  pooling and test-time flip, followed by the head as TensorFlow ops (pipeline/export/tfhead.py).
* ``tflite``: one ``.tflite`` file with signature ``serving_default`` (input ``images``, uint8
  (1, H, W, 3); outputs ``probabilities`` and ``classes``; the same description as a metadata
  entry). A TensorFlow backbone is converted
  with the head in float; a TFLite backbone keeps its own (quantized) operators and the float
  head is appended after a DEQUANTIZE of its feature tensor (pipeline/export/tflitejoin.py); a float-input
  TFLite backbone gets its pixel scaling, converted alone, spliced in before it.

TFLite backbones cannot go into a SavedModel: TensorFlow has no op that runs a TFLite flatbuffer,
and rebuilding a TF graph from its (dequantized) weights would need a translator for every TFLite
operator and would no longer compute what the quantized model computes. Export them with
``--format tflite``.
"""
from __future__ import annotations

import functools
import shutil
import tempfile
from pathlib import Path

import numpy as np

from ..errors import PipelineError, UsageError
from ..heads.arrayhead import ArrayHead
from .info import export_info, tflite_with_info, write_saved_model_info

FORMATS = ("saved_model", "tflite")


def export(classifier, out, fmt: str = "saved_model", force: bool = False) -> Path:
    """Write `classifier` (a :class:`~pipeline.heads.classifier.Classifier`) with its backbone to `out`."""
    if fmt not in FORMATS:
        raise UsageError(f"unknown export format {fmt!r}; choose one of {', '.join(FORMATS)}")
    classifier.check_cpu_decoder("an export (it decodes images with TensorFlow's ops, built to give Pillow's pixels)")
    head = _array_head(classifier)
    out = _check_out(Path(out), force)
    if fmt == "tflite" and out.is_dir():
        raise UsageError(f"out={out} is a folder; format=tflite writes one file (e.g. {out / 'model.tflite'})")
    if fmt == "saved_model" and classifier.spec.get("kind") == "tflite":
        raise UsageError(f"{classifier.spec['backbone']} is a TFLite backbone: it can be exported with "
                         f"format=tflite only (TensorFlow cannot run a TFLite model inside a SavedModel)")
    from ..backbones import backbone_from_spec
    from ..backbones.graph import import_tensorflow

    import_tensorflow()  # import TensorFlow with its CUDA/oneDNN notices kept off stderr (pipeline/logs.py; -v shows them)
    bb = backbone_from_spec(classifier.spec)
    bb.load()
    classifier.check_spec(bb.spec(), "the rebuilt backbone's features")
    info = export_info(classifier, bb, fmt)  # what `serve` needs to decode images for it (pipeline/export/info.py)
    if fmt == "tflite":
        data = _tflite_join(bb, head) if bb.kind == "tflite" else _tflite_convert(bb, head)
        return _write_bytes(out, tflite_with_info(data, info))
    return _write_saved_model(out, _module(bb, head), info)


def _array_head(classifier) -> ArrayHead:
    from ..heads.arrayhead import export as to_arrays

    try:
        return to_arrays(classifier.model)
    except ValueError as e:
        raise PipelineError(f"this head cannot be exported: {e}") from None


def _check_out(out: Path, force: bool) -> Path:
    if out.exists() and not force and (out.is_file() or any(out.iterdir())):
        raise UsageError(f"out={out} already exists; choose a new path or pass force=True to replace it")
    if out.exists() and out.is_dir() and any(out.iterdir()) and not (out / "saved_model.pb").is_file():
        raise UsageError(f"out={out} is a folder that is not a SavedModel; it is not replaced, choose a new path")
    return out


# ---- TensorFlow pieces --------------------------------------------------------------------------
def tf_features(bb):
    """A TF callable: uint8 (N, H, W, 3) -> (N, D) float32 features, with the backbone's test-time flip."""
    forward = bb._fn  # the backbone's own compiled forward: scaling, network, pooling, layer concat

    def features(images):
        if bb.tta == "flip":
            return (forward(images) + forward(images[:, :, ::-1])) / 2.0
        return forward(images)

    return features


def _module(bb, head: ArrayHead):
    import tensorflow as tf

    features = tf_features(bb)
    h, w = bb.preprocess.size
    pre = bb.preprocess
    classes = tf.constant([str(c) for c in head.classes_])

    def outputs(images):
        p = _head_probabilities(head, features(images))
        return {"probabilities": p, "classes": tf.tile(classes[None], [tf.shape(p)[0], 1])}

    module = tf.Module()
    module.variables_of_backbone = _captured_variables(bb)
    # autograph=False: the code traced (the decoder, the head) writes its control flow as tf.cond/tf.while_loop
    # itself; converting every function it calls would only make each export's trace slower (bench/decoder_trace.py)
    module.serve = tf.function(outputs, input_signature=[tf.TensorSpec([None, h, w, 3], tf.uint8, name="images")],
                               autograph=False)

    decode = _decoder(pre)

    @tf.function(input_signature=[tf.TensorSpec([None], tf.string, name="images")], autograph=False)
    def predict_bytes(images):
        decoded = tf.map_fn(decode, images, fn_output_signature=tf.TensorSpec([h, w, 3], tf.uint8))
        return outputs(decoded)

    module.predict_bytes = predict_bytes
    return module


@functools.lru_cache(maxsize=8)
def _decoder(pre):
    """The TensorFlow decoder of `pre` as a tf.function, traced at its first call: every later export of that
    preprocessing in the process (heads of one backbone, a sweep) calls the same traced graph (its trace,
    thousands of ops, is most of an export's time), saved into each SavedModel as a function of its own. The
    key is the whole Preprocess, fields the decoder does not read included (a backbone of another scaling
    traces its own); the 8 most recent are kept."""
    import tensorflow as tf

    from ..decode.tfdecode import decode_image

    def decode_one_image(data):  # its name in the saved graph
        return decode_image(data, pre)

    return tf.function(decode_one_image, input_signature=[tf.TensorSpec([], tf.string)], autograph=False)


def _captured_variables(bb) -> list:
    import tensorflow as tf

    fn = getattr(bb, "_fn", None)
    if isinstance(fn, tf.types.experimental.PolymorphicFunction):
        return list(fn.get_concrete_function().variables)
    return []


def _head_probabilities(head, x, dtype=None):
    from .tfhead import head_probabilities

    return head_probabilities(head, x, dtype)


def _write_saved_model(out: Path, module, info: dict) -> Path:
    import tensorflow as tf

    # Each function traced once: kept on the module as a tf.function, the save would trace it again in its own
    # context (for predict_bytes' decoder graph, half the export's time); as concrete functions they are saved as
    # traced, still callable as `loaded.serve` and `loaded.predict_bytes` beside the signatures.
    module.serve = module.serve.get_concrete_function()
    module.predict_bytes = module.predict_bytes.get_concrete_function()
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent if out.parent.exists() else None))
    try:
        tf.saved_model.save(module, str(tmp), signatures={
            "serving_default": module.serve, "predict_bytes": module.predict_bytes})
        write_saved_model_info(tmp, info)
        if out.exists():
            shutil.rmtree(out) if out.is_dir() else out.unlink()
        tmp.replace(out)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp)
    return out


def _write_bytes(out: Path, data: bytes) -> Path:
    from ..outputs import atomic_open

    with atomic_open(out, "wb") as f:
        f.write(data)
    return out


# ---- TFLite -------------------------------------------------------------------------------------
def _tflite_convert(bb, head: ArrayHead) -> bytes:
    """A TensorFlow backbone and the head, converted together (float32 throughout)."""
    import tensorflow as tf

    features = tf_features(bb)
    h, w = bb.preprocess.size
    classes = tf.constant([[str(c) for c in head.classes_]])
    module = tf.Module()
    module.variables_of_backbone = _captured_variables(bb)

    @tf.function(input_signature=[tf.TensorSpec([1, h, w, 3], tf.uint8, name="images")], autograph=False)
    def serve(images):
        return {"probabilities": _head_probabilities(head, features(images), tf.float32), "classes": classes}

    module.serve = serve
    conv = tf.lite.TFLiteConverter.from_concrete_functions([serve.get_concrete_function()], module)
    return _convert(conv)


def _convert(conv) -> bytes:
    from ..logs import native_output_quieted

    try:
        with native_output_quieted():
            return conv.convert()
    except Exception as e:  # the converter raises ConverterError and plain exceptions alike
        raise PipelineError(f"TFLite conversion failed: {str(e).splitlines()[0][:300]}") from e


def _tflite_scaling(bb) -> bytes | None:
    """For a float-input TFLite backbone: a TFLite model of its pixel scaling (uint8 -> float input)."""
    import tensorflow as tf

    from ..preprocess import normalize

    if bb._in_dtype == np.uint8:
        return None  # uint8 models take the pixels as they are (pipeline/backbones/tflite.py)
    shape = [int(v) for v in bb._interpreter().get_input_details()[0]["shape"]]
    module = tf.Module()
    module.scale = tf.function(lambda images: normalize(images, bb.preprocess),
                               input_signature=[tf.TensorSpec(shape, tf.uint8, name="images")], autograph=False)
    return _convert(tf.lite.TFLiteConverter.from_concrete_functions([module.scale.get_concrete_function()], module))


def _tflite_join(bb, head: ArrayHead) -> bytes:
    """The TFLite backbone's own operators (quantized stays quantized), then the float head."""
    import tensorflow as tf

    from .tflitejoin import join

    if bb.tta:
        raise UsageError("a head trained with tta=flip on a TFLite backbone cannot be exported: the model "
                         "would have to run the backbone twice; featurize and train without tta to export")
    if bb._in_dtype not in (np.uint8, np.float32):
        raise UsageError(f"{bb.path} takes {bb._in_dtype.name} input; only TFLite backbones taking uint8 pixels "
                         f"or float input can be exported")
    if len(bb.tensors) != 1:
        raise UsageError(f"a head on several layers ({bb.layer}) of a TFLite backbone cannot be exported yet; "
                         f"train it on one layer")
    t = {t["name"]: t for t in bb._interpreter().get_tensor_details()}[bb.tensors[0]]
    classes = tf.constant([[str(c) for c in head.classes_]])
    module = tf.Module()

    @tf.function(input_signature=[tf.TensorSpec([int(v) for v in t["shape"]], tf.float32, name="layer0")],
                 autograph=False)
    def serve(layer0):
        x = tf.reduce_mean(layer0, axis=[1, 2]) if len(layer0.shape) == 4 else tf.reshape(layer0, [layer0.shape[0], -1])
        return {"probabilities": _head_probabilities(head, x, tf.float32), "classes": classes}

    module.serve = serve
    conv = tf.lite.TFLiteConverter.from_concrete_functions([serve.get_concrete_function()], module)
    feeds = {"layer0": t["index"]}
    try:
        return join(Path(bb.path).read_bytes(), _convert(conv), feeds, pre=_tflite_scaling(bb))
    except ValueError as e:
        raise PipelineError(f"cannot join the head to {bb.path}: {e}") from e
