"""Keras applications on the jax (and torch) backends: same weights, same features, same stores, no TensorFlow.

Keras fixes its backend at its first import, so every run on another backend is a subprocess.
"""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from conftest import jax_child_env, make_class_tree

from pipeline.backbones import create_backbone
from pipeline.backbones.keras_apps import resolve_keras_backend
from pipeline.errors import UsageError

REPO = Path(__file__).resolve().parents[2]

# Featurize DATA into each store on BACKEND with the weights file; report what ran, what was imported, how
# many weights were drawn by initializers (a network whose weights come from a file needs none drawn), and
# what asking for TensorFlow-backend Keras then says (Keras was imported on BACKEND in this process). Then,
# in the same process (a Keras on JAX starting is seconds of CPU), failed_build(): what a failed weights
# load leaves in Keras's state.
_CHILD = """
import json, sys
import pipeline
from pipeline.backbones import keras_apps
drawn, _keras = [], keras_apps._keras
def counting_keras(backend="tensorflow"):
    keras = _keras(backend)
    from keras.src import backend as kb
    if not getattr(kb.Variable, "counted", False):
        draw = kb.Variable._initialize_with_initializer
        def counted(self, initializer):
            drawn.append(self.path)
            return draw(self, initializer)
        kb.Variable._initialize_with_initializer, kb.Variable.counted = counted, True
    return keras
keras_apps._keras = counting_keras

def failed_build(folder):
    # a network whose weights fail to load, then one whose weights load: what is left waiting in Keras's state
    import os
    import numpy as np
    from keras.src.backend.common import global_state
    def make():
        i = keras.Input((8,))
        return keras.Model(i, keras.layers.Dense(3)(keras.layers.Dense(4)(i)))
    def build(path):
        m = make()
        m.load_weights(path)
        return m
    os.makedirs(folder)
    good = make()
    good.save_weights(folder + "/good.weights.h5")
    try:
        keras_apps._loaded_undrawn(keras, lambda: build(folder + "/missing.weights.h5"))
    except FileNotFoundError:
        pass
    left = len(global_state.get_global_attribute("uninitialized_variables", []))
    model = keras_apps._loaded_undrawn(keras, lambda: build(folder + "/good.weights.h5"))
    x = np.ones((2, 8), "float32")
    return [left, len(global_state.get_global_attribute("uninitialized_variables", [])),
            bool(np.allclose(model(x), good(x)))]

data, model, weights, backend, *stores = sys.argv[1:]
runs = [pipeline.featurize(data, model, weights=weights, out=s, keras_backend=backend,
                           progress=False, report=True) for s in stores]
import keras
tensorflow_imported = any(m == "tensorflow" or m.startswith("tensorflow.") for m in sys.modules)
try:
    pipeline.create_backbone("mobilenet_v2", weights="random", keras_backend="tensorflow")
    switched = "switched"
except Exception as e:
    switched = f"{type(e).__name__}: {e}"
report = {"computed": [r.computed for r in runs], "reused": [r.reused for r in runs], "drawn": len(drawn),
          "keras_backend": keras.backend.backend(), "tensorflow_imported": tensorflow_imported, "switched": switched}
if backend == "jax":
    report["failed_build"] = failed_build(stores[0] + "-weights")
print(json.dumps(report))
"""


def _child(code: str, *args) -> subprocess.CompletedProcess:
    env = jax_child_env()
    env.pop("KERAS_BACKEND", None)  # the backend comes from keras_backend=, as it does for a user
    return subprocess.run([sys.executable, "-c", code, *map(str, args)], cwd=REPO, env=env, capture_output=True,
                          text=True, timeout=900)


def _cosines(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    a, b = a.astype(np.float64), b.astype(np.float64)
    return np.sum(a * b, 1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1))


def test_backend_comes_from_the_option_then_the_environment(monkeypatch):
    monkeypatch.setenv("KERAS_BACKEND", "jax")
    assert resolve_keras_backend(None) == "jax"
    assert resolve_keras_backend("torch") == "torch"
    monkeypatch.delenv("KERAS_BACKEND")
    assert resolve_keras_backend(None) == "tensorflow"


def test_unknown_backend_is_a_usage_error(monkeypatch):
    monkeypatch.setenv("KERAS_BACKEND", "mxnet")
    with pytest.raises(UsageError, match="unknown Keras backend 'mxnet'.*tensorflow, jax, torch"):
        create_backbone("mobilenet_v2", weights="random")


def test_keras_backend_is_refused_for_tflite_backbones():
    with pytest.raises(UsageError, match="--keras-backend and --jit-compile apply to Keras applications"):
        create_backbone("mobilenet_v2_quant", keras_backend="jax")


@pytest.fixture(scope="module")
def jax_run(tmp_path_factory):
    """Two images featurized by ResNet50 on TensorFlow (in this process) and on JAX (a child) with one weights
    file, then TensorFlow asked for in the child: (TensorFlow store, JAX store, the child's report)."""
    pytest.importorskip("jax", reason="Keras on JAX needs jax: pip install -e '.[jax]'")
    import keras

    from pipeline.store import FeatureStore

    tmp_path = tmp_path_factory.mktemp("jax-run")
    data = make_class_tree(tmp_path / "data", per_class=1)  # two distinct images: one short batch each way
    keras.utils.set_random_seed(0)
    # ResNet50: random weights keep its features far from zero (MobileNets' vanish), and its
    # "caffe" scaling (RGB -> BGR, mean) exercises the on-device normalisation
    weights = tmp_path / "resnet50.weights.h5"  # one set of weights for both backends
    keras.applications.ResNet50(weights=None, classifier_activation=None).save_weights(weights)
    tf_store = pipeline_featurize(data, weights, tmp_path / "tf-store")

    proc = _child(_CHILD, data, "resnet50", weights, "jax", tmp_path / "jax-store", tmp_path / "tf-store")
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    return tf_store, FeatureStore.open(tmp_path / "jax-store"), out


@pytest.mark.slow
def test_switching_backend_after_keras_was_imported_says_how_to_fix(jax_run):
    # the JAX child of jax_run, once Keras runs on jax there, asks for a network on tensorflow
    switched = jax_run[2]["switched"]
    assert switched.startswith("UsageError: ")
    assert "Keras was already imported with the jax backend" in switched
    assert "KERAS_BACKEND=tensorflow" in switched


@pytest.mark.slow
def test_jax_features_equal_tensorflow_features_and_stores_are_shared(jax_run):
    tf_store, jax_store, out = jax_run
    assert out["keras_backend"] == "jax" and not out["tensorflow_imported"]
    assert out["computed"] == [2, 0] and out["reused"] == [0, 2]  # the TensorFlow store is reused as it is
    assert out["drawn"] == 0  # built from the weights file: no initializer ran (on JAX each one compiles)

    assert jax_store.spec["keras_backend"] == "jax" and tf_store.spec["keras_backend"] == "tensorflow"
    assert jax_store.paths == tf_store.paths
    a, b = tf_store.features, jax_store.features
    assert _cosines(a, b).min() >= 0.9999
    assert np.abs(a - b).max() <= 1e-3 * np.abs(a).max()
    assert _cosines(a[:1].repeat(len(a) - 1, 0), a[1:]).min() < 0.9999  # images do differ by that measure


def pipeline_featurize(data, weights, out):
    import pipeline

    return pipeline.featurize(data, "resnet50", weights=str(weights), out=out, keras_backend="tensorflow",
                              progress=False)


def test_torch_backend_runs_without_tensorflow(tmp_path):
    probe = _child("import torch")
    if probe.returncode != 0:
        pytest.skip("torch is not installed here (pip install torch to test the torch backend)")
    data = make_class_tree(tmp_path / "data", per_class=1)
    proc = _child(_CHILD, data, "mobilenet_v2", "random", "torch", tmp_path / "store")
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    assert out["keras_backend"] == "torch" and not out["tensorflow_imported"] and out["computed"] == [2]


@pytest.mark.slow
def test_tensorflow_gpu_placement_and_agreement_with_cpu(tmp_path):
    tf = pytest.importorskip("tensorflow")
    if not tf.config.list_physical_devices("GPU"):
        pytest.skip("TensorFlow sees no GPU here (tf.config.list_physical_devices('GPU') is empty)")
    import keras

    keras.utils.set_random_seed(0)
    weights = tmp_path / "resnet50.weights.h5"
    keras.applications.ResNet50(weights=None, classifier_activation=None).save_weights(weights)
    images = np.random.default_rng(0).integers(0, 256, (8, 224, 224, 3), dtype=np.uint8)
    gpu = create_backbone("resnet50", weights=str(weights), keras_backend="tensorflow").load()
    assert gpu.device == "GPU" and gpu.batch_size == 256  # the GPU default batch
    assert "GPU" in gpu._fn(tf.constant(images)).device  # features computed on the GPU
    with tf.device("/CPU:0"):
        cpu = create_backbone("resnet50", weights=str(weights), keras_backend="tensorflow").load()
        on_cpu = cpu._fn(tf.constant(images))
    assert "CPU" in on_cpu.device
    assert _cosines(gpu(images), on_cpu.numpy()).min() >= 0.999  # TF32 convolutions on the GPU


def test_cli_flags_reach_the_library(tmp_path, capsys):
    from pipeline.cli import main

    data = make_class_tree(tmp_path / "data", per_class=2)
    assert main(["featurize", str(data), "--backbone", "mobilenet_v2_quant", "--keras-backend", "jax",
                 "--out", str(tmp_path / "a"), "--no-progress"]) == 2
    assert "--keras-backend and --jit-compile apply to Keras applications" in capsys.readouterr().err
    # TFLite featurizes in its decoding threads whatever --decode says
    assert main(["featurize", str(data), "--decode", "process", "--workers", "2", "--out", str(tmp_path / "b"),
                 "--no-progress"]) == 0
    assert "4 featurized" in capsys.readouterr().out


@pytest.mark.slow
def test_a_failed_weights_load_on_jax_leaves_nothing_for_the_next_build(jax_run):
    """An application whose weights fail to load (no ImageNet download, a wrong file) leaves none of its
    variables waiting in Keras's state: the next build in the process would otherwise draw them all (on JAX a
    compiled program each), and hold the failed network's memory. (Run in jax_run's child, after its runs.)"""
    left_after_failure, left_after_success, same_outputs = jax_run[2]["failed_build"]
    assert left_after_failure == 0 and left_after_success == 0
    assert same_outputs  # the next build got the weights of its file
