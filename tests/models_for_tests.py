"""Tiny Keras models the tests build and save themselves, in every format a backbone can come in."""
from __future__ import annotations

import os

os.environ.setdefault("KERAS_BACKEND", "tensorflow")

import numpy as np  # noqa: E402

SIZE = 32
CLASSES = 5


def tiny_keras_model(seed: int = 0):
    """conv(8) -> relu -> GAP -> dense(5) logits -> softmax; layer names fixed for the tests."""
    import keras

    keras.utils.set_random_seed(seed)
    inp = keras.Input((SIZE, SIZE, 3), name="image")
    x = keras.layers.Conv2D(8, 3, activation="relu", name="conv")(inp)
    x = keras.layers.GlobalAveragePooling2D(name="pool")(x)
    logits = keras.layers.Dense(CLASSES, name="logits")(x)
    out = keras.layers.Softmax(name="predictions")(logits)
    return keras.Model(inp, out)


def submodel_outputs(model, x: np.ndarray) -> dict:
    """The model's own logits, pooled features and pooled conv map for float input x."""
    import keras

    sub = keras.Model(model.input, [model.get_layer("logits").output, model.get_layer("pool").output,
                                     model.get_layer("conv").output])
    logits, pooled, conv = (np.asarray(v) for v in sub(x, training=False))
    e = np.exp(logits - logits.max(axis=1, keepdims=True))
    return {"logits": logits, "penultimate": pooled, "conv": conv.mean(axis=(1, 2)),
            "predictions": e / e.sum(axis=1, keepdims=True)}


def export_saved_model(model, path) -> str:
    model.export(str(path), verbose=False)
    return str(path)


def frozen_graph_def(model, path) -> tuple[str, str, dict]:
    """Freeze the model into a .pb; returns (path, input tensor, {layer: tensor name})."""
    import tensorflow as tf
    from tensorflow.python.framework.convert_to_constants import convert_variables_to_constants_v2

    fn = tf.function(lambda x: model(x, training=False)).get_concrete_function(
        tf.TensorSpec([None, SIZE, SIZE, 3], tf.float32, name="input"))
    frozen = convert_variables_to_constants_v2(fn)
    gd = frozen.graph.as_graph_def()
    tf.io.write_graph(gd, os.path.dirname(str(path)), os.path.basename(str(path)), as_text=False)
    names = [n.name for n in gd.node]
    conv = next(n for n in names if n.endswith("conv_1/Relu") or n.endswith("conv/Relu"))
    return str(path), frozen.inputs[0].name, {"conv": conv + ":0"}


def tflite_model(model, path, quantized: bool) -> str:
    import tensorflow as tf

    saved = str(path) + ".savedmodel"
    model.export(saved, verbose=False)
    conv = tf.lite.TFLiteConverter.from_saved_model(saved)
    if quantized:
        rng = np.random.default_rng(0)

        def rep():
            for _ in range(20):
                yield [rng.uniform(-1, 1, (1, SIZE, SIZE, 3)).astype(np.float32)]

        conv.optimizations = [tf.lite.Optimize.DEFAULT]
        conv.representative_dataset = rep
        conv.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
        conv.inference_input_type = tf.uint8
        conv.inference_output_type = tf.uint8
    with open(path, "wb") as f:
        f.write(conv.convert())
    return str(path)


COLOURS = {"red": (230, 30, 30), "blue": (30, 30, 230), "green": (30, 200, 30)}


def colour_files(root, classes=("red", "blue", "green"), per_class=6, size=(90, 70)):
    """`per_class` JPEGs of noise around each colour in `root`: (paths, labels)."""
    import numpy as np
    from conftest import noise_image

    paths, labels = [], []
    for ci, c in enumerate(classes):
        for i in range(per_class):
            p = root / f"{c}_{i}.jpg"
            noise_image(100 * ci + i, size, COLOURS[c]).save(p, quality=90)
            paths.append(p)
            labels.append(c)
    return paths, np.asarray(labels)


def calibrated_classifier(bb, paths, labels, head="linear_svm", pca=None):
    """A calibrated head over `bb`'s features of `paths`, as a Classifier with `bb`'s spec."""
    import numpy as np

    from pipeline.decode.images import decode
    from pipeline.heads.arrayhead import export as to_arrays
    from pipeline.heads.classifier import Classifier
    from pipeline.training.selection import make_head

    images = np.stack([decode(p.read_bytes(), bb.preprocess) for p in paths])
    model = make_head(head, C=1.0, calibrate=True, pca=pca, calibration_folds=3).fit(bb(images), labels)
    return Classifier(to_arrays(model), model.classes_, bb.spec())
