"""Keras applications (ImageNet-pretrained CNNs) as backbones.

One row per model in :data:`KERAS_APPS`: the constructor, input size and the Keras
``preprocess_input`` mode it was trained with. Weights are "imagenet" (Keras downloads
and caches them when online) or a local weights file of the full model with its top.

The same application and weights run on any Keras 3 backend: ``tensorflow`` (default),
``jax`` or ``torch`` (``keras_backend=``, else the ``KERAS_BACKEND`` environment variable).
Keras fixes its backend when it is first imported, so the choice is made before that import
and is an error once Keras runs another backend in the process. Under jax and torch nothing
imports TensorFlow. uint8 batches go to the device and are normalised there, inside the
compiled function (``tf.function``, ``jax.jit``). Float32 features of the backends agree to
cosine 0.9999 (tests/backbones/test_keras_backend.py), so the backend is recorded in the feature spec as
information and is not part of its identity: a store made on one backend is reused by another.
"""
from __future__ import annotations

import logging
import os
import sys
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Mapping

import numpy as np

from ..errors import BackboneError, UsageError
from ..preprocess import Preprocess, resolve_preprocess
from ..spec import FeatureSpec
from .base import Backbone, BuildOptions, file_sha256, padded_call, resolve_layer


@dataclass(frozen=True)
class KerasApp:
    constructor: str  # attribute of keras.applications
    size: int
    scaling: str  # Keras preprocess_input mode
    module: str  # keras.applications sub-module holding preprocess_input (used by tests)
    dim: int | None = None  # width of the penultimate layer (checked by tests/backbones/test_registry.py)
    classes: int = 1000  # width of the logits

    @property
    def preprocess(self) -> dict:
        """The application's own preprocessing config (resolve_preprocess's middle layer)."""
        return {"size": self.size, "scaling": self.scaling}


KERAS_APPS: dict[str, KerasApp] = {
    "inception_v3": KerasApp("InceptionV3", 299, "tf", "inception_v3", 2048),
    "inception_resnet_v2": KerasApp("InceptionResNetV2", 299, "tf", "inception_resnet_v2", 1536),
    "xception": KerasApp("Xception", 299, "tf", "xception", 2048),
    "vgg16": KerasApp("VGG16", 224, "caffe", "vgg16", 4096),
    "vgg19": KerasApp("VGG19", 224, "caffe", "vgg19", 4096),
    "resnet50": KerasApp("ResNet50", 224, "caffe", "resnet50", 2048),
    "resnet101": KerasApp("ResNet101", 224, "caffe", "resnet", 2048),
    "resnet152": KerasApp("ResNet152", 224, "caffe", "resnet", 2048),
    "resnet50_v2": KerasApp("ResNet50V2", 224, "tf", "resnet_v2", 2048),
    "mobilenet": KerasApp("MobileNet", 224, "tf", "mobilenet", 1024),
    "mobilenet_v2": KerasApp("MobileNetV2", 224, "tf", "mobilenet_v2", 1280),
    "densenet121": KerasApp("DenseNet121", 224, "torch", "densenet", 1024),
    "efficientnet_b0": KerasApp("EfficientNetB0", 224, "raw", "efficientnet", 1280),
    "efficientnet_b3": KerasApp("EfficientNetB3", 300, "raw", "efficientnet", 1536),
}


KERAS_BACKENDS = ("tensorflow", "jax", "torch")
GPU_BATCH = 256  # default batch on a GPU (CPUs: the Backbone default, 32)
log = logging.getLogger(__name__)


def resolve_keras_backend(name: str | None = None) -> str:
    """The Keras backend to use: `name`, else $KERAS_BACKEND, else tensorflow."""
    name = name or os.environ.get("KERAS_BACKEND") or "tensorflow"
    if name not in KERAS_BACKENDS:
        raise UsageError(f"unknown Keras backend {name!r} (from --keras-backend or KERAS_BACKEND); "
                         f"choose one of {', '.join(KERAS_BACKENDS)}")
    return name


def use_keras_backend(name: str) -> None:
    """Make `name` the backend Keras is imported with; an error if Keras already runs another one."""
    keras = sys.modules.get("keras")
    if keras is None:
        os.environ["KERAS_BACKEND"] = name
        return
    current = keras.backend.backend()
    if current != name:
        raise UsageError(f"Keras was already imported with the {current} backend in this process and cannot "
                         f"switch to {name}: choose the backend before Keras is first imported (a new process "
                         f"with --keras-backend {name} or KERAS_BACKEND={name})")


def _keras(backend: str = "tensorflow"):
    use_keras_backend(backend)
    if backend == "tensorflow":
        from .graph import import_tensorflow

        import_tensorflow()  # configures GPUs (memory growth) before Keras touches them
    elif backend == "jax":
        os.environ.setdefault("XLA_PYTHON_CLIENT_PREALLOCATE", "false")  # grow GPU memory on demand
    import keras

    return keras


def gpu_visible_cheaply() -> bool:
    """A guess, without importing any framework, that an NVIDIA GPU is attached (checked again at load)."""
    return os.path.exists("/dev/nvidiactl") or os.path.isdir("/proc/driver/nvidia/gpus")


def backend_has_gpu(backend: str) -> bool:
    """True when the Keras backend `backend` (already imported) places work on a GPU."""
    if backend == "tensorflow":
        import tensorflow as tf

        return bool(tf.config.list_physical_devices("GPU"))
    if backend == "jax":
        import jax

        return jax.default_backend() in ("gpu", "cuda", "rocm")
    import torch

    return bool(torch.cuda.is_available())


PRECISIONS = {"float32": "float32", "bfloat16": "mixed_bfloat16", "float16": "mixed_float16"}


CPUINFO = Path("/proc/cpuinfo")  # where the CPU's flags are read (tests point it at a file of their own)


def cpu_has_bf16() -> bool:
    """True when the CPU computes bfloat16 natively (AVX-512 BF16 or AMX); elsewhere it is emulated."""
    try:
        flags = CPUINFO.read_text()
    except OSError:
        return False
    return "avx512_bf16" in flags or "amx_bf16" in flags


def warn_precision(precision: str, gpu: bool) -> None:
    if precision == "bfloat16" and not gpu and not cpu_has_bf16():
        log.warning(
            "--precision bfloat16: this CPU has no native bfloat16 (no avx512_bf16/amx_bf16 flag), so it is "
            "emulated and slower than float32 (about 3x on the benchmark machine); use float32")
    if precision == "float16" and not gpu:
        log.warning("--precision float16 is meant for GPUs; on a CPU it is slow")


@dataclass(frozen=True)
class KerasRuntime:
    """Where and how a Keras application runs (none of it changes the features beyond float tolerance).

    keras_backend: tensorflow, jax or torch (None: $KERAS_BACKEND, else tensorflow).
    jit_compile: XLA-compile the TensorFlow function (jax always compiles; torch runs eagerly).
    """

    keras_backend: str | None = None
    jit_compile: bool = False


class KerasBackbone(Backbone):
    """A Keras application of :data:`KERAS_APPS`; `preprocess`: explicit settings (resolve_preprocess)."""

    kind = "keras"
    spec_kinds = ("keras",)

    def __init__(self, name: str, layer: str = "penultimate", weights: str | None = None,
                 preprocess: Preprocess | Mapping | None = None, batch_size: int | None = None,
                 precision: str = "float32", runtime: KerasRuntime | None = None):
        app = KERAS_APPS[name]
        pre = resolve_preprocess(preprocess, app.preprocess)
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
        runtime = runtime or KerasRuntime()
        self.keras_backend = resolve_keras_backend(runtime.keras_backend)
        use_keras_backend(self.keras_backend)  # fails fast, before any image is read
        self.jit_compile = runtime.jit_compile
        guess = GPU_BATCH if gpu_visible_cheaply() else 32
        super().__init__(name, layer, pre, source, int(batch_size or guess))
        self._auto_batch = not batch_size
        self.app = app
        self.precision = precision

    @classmethod
    def _matches_name(cls, name: str) -> bool:
        return name in KERAS_APPS

    @classmethod
    def create(cls, name: str, layer: str, options: BuildOptions) -> "KerasBackbone":
        return cls(name, layer, options.weights, options.preprocess, precision=options.precision or "float32",
                   runtime=options.runtime)

    @classmethod
    def from_spec(cls, spec: FeatureSpec) -> "KerasBackbone":
        return cls.create(spec.backbone, spec.layer, BuildOptions.from_spec(spec))

    def _spec_extra(self) -> dict:
        # information only: identity() leaves it out, so stores are shared across backends
        return {"keras_backend": self.keras_backend}

    def _build(self):
        keras = _keras(self.keras_backend)
        ctor = getattr(keras.applications, self.app.constructor)
        weights = self.source["weights"]
        if weights == "random":
            _seed(keras, self.keras_backend)  # the same "random" network every time, so its features cache
        policy = keras.mixed_precision.dtype_policy()
        try:
            keras.mixed_precision.set_dtype_policy(PRECISIONS[self.precision])
            build = partial(ctor, weights=None if weights == "random" else weights, include_top=True,
                            classifier_activation=None)
            return build() if weights == "random" or self.keras_backend != "jax" else _loaded_undrawn(keras, build)
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

    def has_class_scores(self) -> bool:
        return True  # built with include_top=True, always: no need to build the model to know

    def _layer_table(self, model=None) -> tuple[dict, list[str]]:
        """Aliases: logits is the last layer; penultimate the input of the classifier (Dense, or MobileNet's
        1x1 Conv2D); predictions the softmax of the logits. Names: every layer of the model."""
        keras = _keras(self.keras_backend)
        model = model if model is not None else self._build()
        tops = [l for l in model.layers if isinstance(l, (keras.layers.Dense, keras.layers.Conv2D))]
        last = model.layers[-1].name
        aliases = {"logits": last, "predictions": last, "penultimate": tops[-1].name if tops else None}
        return aliases, [l.name for l in model.layers]

    def _feature_output(self, model, layer: str, table):
        name = resolve_layer(layer, table, self.name)
        if layer == "logits":
            return model.output, name
        if layer == "predictions":
            return _keras(self.keras_backend).layers.Softmax()(model.output), f"softmax({name})"
        if layer == "penultimate":
            return model.get_layer(name).input, f"{name}:input"
        return model.get_layer(name).output, name

    def _load(self):
        keras = _keras(self.keras_backend)
        gpu = backend_has_gpu(self.keras_backend)
        if self._auto_batch:
            self.batch_size = GPU_BATCH if gpu else 32
        warn_precision(self.precision, gpu)
        model = self._build()
        table = self._layer_table(model)
        outputs, tensors = zip(*(self._feature_output(model, layer, table) for layer in self.layers))
        feature_model = keras.Model(model.inputs, list(outputs))  # every layer from one forward pass
        self._set_layers(list(tensors), [int(np.prod(o.shape[1:] if len(o.shape) != 4 else o.shape[-1:]))
                                         for o in outputs])
        compile_fn = {"tensorflow": _tf_function, "jax": _jax_function, "torch": _torch_function}
        self._fn = compile_fn[self.keras_backend](feature_model, self.preprocess, self.jit_compile)
        self.device = "GPU" if gpu else "CPU"

    def _forward(self, images):
        return padded_call(self._fn, images, self.batch_size)


def _loaded_undrawn(keras, build):
    """`build()` (an application that loads its weights, from a file or ImageNet's) without drawing the random
    weights the file then replaces. On JAX every initializer is a program compiled for its shape: drawing them
    took most of the time to build a network, for values never used.
    Built in a stateless scope, the loaded values land in the scope; each variable then starts from its loaded
    value, and one the file does not hold is drawn as Keras would have drawn it (JAX only: under TensorFlow and
    torch a variable cannot start from a value after the build)."""
    try:  # Keras internals (3.x): another Keras version without them builds the plain way, drawing the weights
        from keras.src.backend.common import global_state
        from keras.src.backend.common.stateless_scope import in_stateless_scope
        from keras.src.backend.common.variables import Variable
    except ImportError:
        return build()
    if in_stateless_scope() or not all(hasattr(Variable, a) for a in ("_initialize", "_deferred_initialize")):
        return build()  # in the caller's scope the values are the caller's: build as asked
    before = list(global_state.get_global_attribute("uninitialized_variables", []))  # this thread's, not ours
    try:
        with keras.StatelessScope(initialize_variables=False) as scope:
            model = build()
            pending = global_state.get_global_attribute("uninitialized_variables", [])[len(before):]
            loaded = [scope.get_current_value(v) for v in pending]
    finally:  # a failed build (no ImageNet download, a bad weights file) leaves none of its variables behind
        global_state.set_global_attribute("uninitialized_variables", before)
    for variable, value in zip(pending, loaded):
        if value is None:
            variable._deferred_initialize()  # not in the weights: drawn, as it would have been
        else:
            variable._initialize(value)
            variable._initializer = None
    return model


def _seed(keras, backend: str, seed: int = 0) -> None:
    """keras.utils.set_random_seed without its tf.random.set_seed, which imports TensorFlow under any backend."""
    if backend == "tensorflow":
        keras.utils.set_random_seed(seed)
        return
    import random

    from keras.src.backend.common import global_state
    from keras.src.random import seed_generator
    from keras.src.utils import rng_utils

    global_state.set_global_attribute(rng_utils.GLOBAL_RANDOM_SEED, seed)
    global_state.set_global_attribute(seed_generator.GLOBAL_SEED_GENERATOR, None)
    random.seed(seed)
    np.random.seed(seed)
    if backend == "torch":
        import torch

        torch.manual_seed(seed)


def _features(ops, feature_model, images, pre: Preprocess):
    """uint8 batch -> float32 (N, D) features, in backend ops: normalise, run, global-average-pool."""
    x = ops.cast(images, "float32")
    if pre.channel_order == "BGR":
        x = ops.flip(x, axis=-1)
    x = x * np.float32(pre.scale) - np.asarray(pre.mean, np.float32)
    if any(s != 1.0 for s in pre.std):
        x = x / np.asarray(pre.std, np.float32)
    ys = feature_model(x, training=False)
    ys = [_pooled(ops, y) for y in (ys if isinstance(ys, (list, tuple)) else [ys])]
    return ys[0] if len(ys) == 1 else ops.concatenate(ys, axis=1)  # several layers side by side


def _pooled(ops, y):
    """One layer's output as float32 (N, D): spatial maps global-average-pooled, anything else flattened."""
    y = ops.cast(y, "float32")
    if len(y.shape) == 4:
        return ops.mean(y, axis=(1, 2))
    return y if len(y.shape) == 2 else ops.reshape(y, (ops.shape(y)[0], -1))


def _tf_function(feature_model, pre: Preprocess, jit_compile: bool):
    import keras
    import tensorflow as tf

    h, w = pre.size

    @tf.function(input_signature=[tf.TensorSpec([None, h, w, 3], tf.uint8)], jit_compile=jit_compile or None)
    def forward(images):
        return _features(keras.ops, feature_model, images, pre)

    return forward


def _jax_function(feature_model, pre: Preprocess, jit_compile: bool):
    """jax.jit of the model's stateless call: weights are arguments, not constants folded into the program."""
    import jax
    import keras

    trainable = [v.value for v in feature_model.trainable_variables]
    frozen = [v.value for v in feature_model.non_trainable_variables]

    class _Stateless:  # feature_model(x) inside _features, with the weights passed in
        def __init__(self, tv, ntv):
            self.tv, self.ntv = tv, ntv

        def __call__(self, x, training=False):
            return feature_model.stateless_call(self.tv, self.ntv, x, training=training)[0]

    @jax.jit
    def forward(tv, ntv, images):
        return _features(keras.ops, _Stateless(tv, ntv), images, pre)

    return lambda images: forward(trainable, frozen, images)


def _torch_function(feature_model, pre: Preprocess, jit_compile: bool):
    import keras
    import torch

    def forward(images):
        with torch.inference_mode():
            x = keras.ops.convert_to_tensor(images)  # on Keras' device (the GPU when there is one)
            return keras.ops.convert_to_numpy(_features(keras.ops, feature_model, x, pre))

    return forward
