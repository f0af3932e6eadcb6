"""Keras applications (ImageNet-pretrained CNNs) as backbones.

One row per model in :data:`KERAS_APPS`: the constructor, input size and the Keras
``preprocess_input`` mode it was trained with. Weights are "imagenet" (Keras downloads
and caches them when online) or a local weights file of the full model with its top.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..errors import BackboneError, UnknownNameError
from ..preprocess import Preprocess
from ..hints import did_you_mean
from .base import LAYER_ALIASES, Backbone, file_sha256, padded_call


@dataclass(frozen=True)
class KerasApp:
    constructor: str  # attribute of keras.applications
    size: int
    scaling: str  # Keras preprocess_input mode
    module: str  # keras.applications sub-module holding preprocess_input (used by tests)


KERAS_APPS: dict[str, KerasApp] = {
    "inception_v3": KerasApp("InceptionV3", 299, "tf", "inception_v3"),
    "inception_resnet_v2": KerasApp("InceptionResNetV2", 299, "tf", "inception_resnet_v2"),
    "xception": KerasApp("Xception", 299, "tf", "xception"),
    "vgg16": KerasApp("VGG16", 224, "caffe", "vgg16"),
    "vgg19": KerasApp("VGG19", 224, "caffe", "vgg19"),
    "resnet50": KerasApp("ResNet50", 224, "caffe", "resnet50"),
    "resnet101": KerasApp("ResNet101", 224, "caffe", "resnet"),
    "resnet152": KerasApp("ResNet152", 224, "caffe", "resnet"),
    "resnet50_v2": KerasApp("ResNet50V2", 224, "tf", "resnet_v2"),
    "mobilenet": KerasApp("MobileNet", 224, "tf", "mobilenet"),
    "mobilenet_v2": KerasApp("MobileNetV2", 224, "tf", "mobilenet_v2"),
    "densenet121": KerasApp("DenseNet121", 224, "torch", "densenet"),
    "efficientnet_b0": KerasApp("EfficientNetB0", 224, "raw", "efficientnet"),
    "efficientnet_b3": KerasApp("EfficientNetB3", 300, "raw", "efficientnet"),
}


def _keras():
    os.environ.setdefault("KERAS_BACKEND", "tensorflow")
    from .graph import _tf

    _tf()  # configures GPUs before Keras touches them
    import keras

    return keras


PRECISIONS = {"float32": "float32", "bfloat16": "mixed_bfloat16", "float16": "mixed_float16"}


def cpu_has_bf16() -> bool:
    """True when the CPU computes bfloat16 natively (AVX-512 BF16 or AMX); elsewhere it is emulated."""
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:
        return False
    return "avx512_bf16" in flags or "amx_bf16" in flags


def warn_precision(precision: str) -> None:
    import logging

    import tensorflow as tf

    gpu = bool(tf.config.list_physical_devices("GPU"))
    if precision == "bfloat16" and not gpu and not cpu_has_bf16():
        logging.getLogger(__name__).warning(
            "--precision bfloat16: this CPU has no native bfloat16 (no avx512_bf16/amx_bf16 flag), so it is "
            "emulated and slower than float32 (about 3x on the benchmark machine); use float32")
    if precision == "float16" and not gpu:
        logging.getLogger(__name__).warning("--precision float16 is meant for GPUs; on a CPU it is slow")


class KerasBackbone(Backbone):
    kind = "keras"
    def __init__(self, name: str, layer: str = "penultimate", weights: str | None = None,
                 preprocess: Preprocess | None = None, batch_size: int = 32, precision: str = "float32"):
        app = KERAS_APPS[name]
        pre = preprocess or Preprocess(size=(app.size, app.size), scaling=app.scaling)
        if precision not in PRECISIONS:
            raise BackboneError(f"unknown precision {precision!r}; choose one of {', '.join(PRECISIONS)}")
        source = {"constructor": f"keras.applications.{app.constructor}", "weights": "imagenet"}
        if weights == "random":  # untrained: for benchmarks and tests (same cost as ImageNet weights)
            source["weights"] = "random"
        elif weights and weights != "imagenet":
            path = Path(weights)
            if not path.is_file():
                raise BackboneError(f"weights file {weights!r} for {name} does not exist")
            source.update(weights=str(path.resolve()), weights_sha256=file_sha256(path))
        super().__init__(name, layer, pre, source, batch_size)
        self.app = app
        self.precision = precision

    def _build(self):
        keras = _keras()
        ctor = getattr(keras.applications, self.app.constructor)
        weights = self.source["weights"]
        if weights == "random":
            keras.utils.set_random_seed(0)  # the same "random" network every time, so its features cache
        policy = keras.mixed_precision.dtype_policy()
        try:
            keras.mixed_precision.set_dtype_policy(PRECISIONS[self.precision])
            return ctor(weights=None if weights == "random" else weights, include_top=True,
                        classifier_activation=None)
        except Exception as e:  # Keras raises a bare Exception for download failures
            if weights == "imagenet":
                raise BackboneError(
                    f"could not get the ImageNet weights of {self.name} ({type(e).__name__}: "
                    f"{str(e).splitlines()[0][:200]}). Keras downloads them on first use, which needs "
                    f"network access; offline, pass --weights FILE with the model's weights file "
                    f"(.weights.h5, or the legacy .h5 Keras downloads, with the top), or use the "
                    f"bundled backbone 'mobilenet_v2_quant'") from e
            raise BackboneError(f"could not load weights file {weights} into {self.name}: {e}. "
                                f"It must hold the weights of the full {self.app.constructor} "
                                f"with its classifier (include_top=True)") from e
        finally:
            keras.mixed_precision.set_dtype_policy(policy)

    def _feature_output(self, model, layer: str):
        keras = _keras()
        if layer == "logits":
            return model.output, model.layers[-1].name
        if layer == "predictions":
            return keras.layers.Softmax()(model.output), f"softmax({model.layers[-1].name})"
        if layer == "penultimate":  # the input of the classifier (Dense, or MobileNet's 1x1 Conv2D)
            top = [l for l in model.layers if isinstance(l, (keras.layers.Dense, keras.layers.Conv2D))][-1]
            return top.input, f"{top.name}:input"
        try:
            return model.get_layer(layer).output, layer
        except ValueError as e:
            names = ", ".join(l.name for l in model.layers[-8:])
            hint = did_you_mean(layer, [*LAYER_ALIASES, *(l.name for l in model.layers)])
            raise UnknownNameError(f"{self.name} has no layer {layer!r}{hint}; use one of "
                                   f"{', '.join(LAYER_ALIASES)} or a layer name such as {names}") from e

    def _load(self):
        keras = _keras()  # imports TensorFlow quietly first
        import tensorflow as tf

        from ..preprocess import normalize

        warn_precision(self.precision)
        model = self._build()
        outputs, tensors = zip(*(self._feature_output(model, layer) for layer in self.layers))
        feature_model = keras.Model(model.inputs, list(outputs))  # every layer from one forward pass
        h, w = self.preprocess.size
        pre = self.preprocess

        def flat(y):
            y = tf.cast(y, tf.float32)
            if len(y.shape) == 4:
                y = tf.reduce_mean(y, axis=[1, 2])
            return y if len(y.shape) == 2 else tf.reshape(y, [tf.shape(y)[0], -1])

        @tf.function(input_signature=[tf.TensorSpec([None, h, w, 3], tf.uint8)])
        def forward(images):
            ys = [flat(y) for y in tf.nest.flatten(feature_model(normalize(images, pre), training=False))]
            return ys[0] if len(ys) == 1 else tf.concat(ys, axis=1)

        self._fn = forward
        self._set_layers(list(tensors), [int(np.prod(o.shape[1:] if len(o.shape) != 4 else o.shape[-1:]))
                                         for o in outputs])

    def _forward(self, images):
        return padded_call(self._fn, images, self.batch_size)
