"""``--decode gpu`` end to end (pipeline/featurizer/gpumapper.py): which mode a run takes, and a Keras backbone on
JAX featurizing a folder from JPEG bytes decoded by the GPU path (the ``pillow-full`` stand-in on this CPU machine)
into a store whose rows equal the CPU path's, whose spec names the decoder, and that never mixes decoders."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest
from awkward_images import CASES
from conftest import jax_child_env

from pipeline.decode import gpujpeg
from pipeline.errors import UsageError
from pipeline.featurizer import gpumapper
from pipeline.featurizer.stages import StageClock, line

REPO = Path(__file__).resolve().parents[2]


def _bb(kind="keras", backend="jax", decoder=None, per_image=False):
    return SimpleNamespace(kind=kind, keras_backend=backend, decoder=decoder, per_image=per_image, name="net")


def test_gpu_is_refused_where_it_cannot_run(monkeypatch):
    with pytest.raises(UsageError, match="needs a Keras backbone on the JAX backend.*tflite"):
        gpumapper.decide("gpu", _bb(kind="tflite", backend=None, per_image=True))
    with pytest.raises(UsageError, match="on tensorflow"):
        gpumapper.decide("gpu", _bb(backend="tensorflow"))
    monkeypatch.setattr(gpujpeg, "find_library", lambda name=None: None)
    with pytest.raises(UsageError, match="found no GPU JPEG decoder: pip install nvidia-nvimgcodec"):
        gpumapper.decide("gpu", _bb())


def test_auto_takes_the_gpu_only_where_it_is_there(monkeypatch):
    monkeypatch.setattr(gpujpeg, "find_library", lambda name=None: None)
    bb = _bb()
    assert gpumapper.decide("auto", bb)[1] is None and bb.decoder == "pillow"
    monkeypatch.setattr(gpujpeg, "find_library", lambda name=None: SimpleNamespace(name="nvimgcodec"))
    bb = _bb()
    assert gpumapper.decide("auto", bb)[0] == "gpu" and bb.decoder == "nvimgcodec"
    tf = _bb(backend="tensorflow")
    assert gpumapper.decide("auto", tf)[1] is None and tf.decoder == "pillow"


def test_a_backbone_rebuilt_from_a_spec_decodes_as_its_features_were(monkeypatch):
    monkeypatch.setattr(gpujpeg, "find_library", lambda name=None: SimpleNamespace(name=name))
    assert gpumapper.decide("auto", _bb(decoder="nvimgcodec"))[1].name == "nvimgcodec"  # a GPU-trained head
    with pytest.raises(UsageError, match="decoded by Pillow on the CPU"):
        gpumapper.decide("gpu", _bb(decoder="pillow"))  # a CPU-trained head: not through the GPU decoder


def test_the_stage_line_counts_gpu_decode_as_its_own_stage():
    clock = StageClock()
    with clock.timed("gpu_decode"):
        pass
    stages = clock.report(10, 1.0, {"read": 4, "decode": 4, "forward": 1, "write": 1},
                          {"cores": 16, "gpu": True, "per_image": False})
    assert "gpu_decode_s" in stages and "gpu_decode 0.00 s" in line(stages)
    assert "gpu_decode" not in StageClock().report(1, 1.0, {"read": 1, "decode": 1, "forward": 1, "write": 1},
                                                   {"cores": 2, "gpu": False, "per_image": False})


def test_a_decode_bound_gpu_run_is_told_to_use_decode_gpu():
    from pipeline.featurizer.stages import hint

    workers = {"read": 15, "decode": 15, "forward": 1, "write": 1}
    assert "--decode gpu" in hint("decode", workers, cores=16, gpu=True, per_image=False, gpu_decoder="nvimgcodec")
    assert "--decode gpu" not in hint("decode", workers, cores=16, gpu=True, per_image=False)


_CHILD = """
import json, sys
import keras
import numpy as np
import pipeline
from models_for_tests import SIZE, tiny_keras_model
from pipeline.backbones.keras_apps import KERAS_APPS, KerasApp
from pipeline.decode import gpujpeg
from pipeline.store import FeatureStore
# the tiny test CNN as the Keras application 'tiny_cnn' (tests/conftest.py's tiny_app): the test is about the
# decode paths, and the tiny network's features, unlike an untrained MobileNetV2's (~1e-11), show wrong pixels
KERAS_APPS["tiny_cnn"] = KerasApp("TinyCNN", SIZE, "tf", "mobilenet")
def tiny_cnn(weights=None, include_top=True, classifier_activation=None):
    model = tiny_keras_model()
    return keras.Model(model.input, model.get_layer("logits").output)
keras.applications.TinyCNN = tiny_cnn
# no GPU here: the GPU library is replaced by its CPU stand-in (same interface), so the GPU path itself runs
gpujpeg.find_library = lambda name=None: gpujpeg.PillowJpeg()
data, out = sys.argv[1:]
kw = dict(weights="random", keras_backend="jax", progress=False, report=True)
gpu = pipeline.featurize(data, "tiny_cnn", out=out + "/gpu", decode="gpu", **kw)
cpu = pipeline.featurize(data, "tiny_cnn", out=out + "/cpu", decode="thread", **kw)
try:
    pipeline.featurize(data, "tiny_cnn", out=out + "/gpu", decode="thread", **kw)
    mixed = "appended"
except Exception as e:
    mixed = str(e)
a, b = FeatureStore.open(out + "/gpu"), FeatureStore.open(out + "/cpu")
print(json.dumps({"decoder": [a.spec.get("decoder"), b.spec.get("decoder")], "paths": [a.paths, b.paths],
                  "max_diff": float(abs(a.features - b.features).max()), "skipped": [s["reason"] for s in gpu.skipped],
                  "spread": float(np.abs(b.features[1:] - b.features[0]).max(1).min()),
                  "stages": gpu.stages, "mixed": mixed}))
"""


@pytest.mark.slow
def test_a_jax_backbone_featurizes_from_bytes_as_the_cpu_path_does(tmp_path):
    data = tmp_path / "data"
    for c, names in (("a", ["RGB JPEG", "A16 EXIF orientation 6 JPEG", "A08 RGBA PNG, partial alpha"]),
                     ("b", ["A09 L JPEG", "A16 EXIF orientation 8 JPEG", "RGB JPEG"])):
        (data / c).mkdir(parents=True)
        for i, n in enumerate(names):
            (data / c / f"{i}.{'png' if 'PNG' in n else 'jpg'}").write_bytes(CASES[n](90, 60, i + 7 * ord(c)))
    cut = CASES["RGB JPEG"](90, 60, 99)
    (data / "b" / "cut.jpg").write_bytes(cut[:len(cut) // 2])
    env = jax_child_env(KERAS_BACKEND="jax", JAX_PLATFORMS="cpu")
    env["PYTHONPATH"] += os.pathsep + str(REPO / "tests")  # models_for_tests
    proc = subprocess.run([sys.executable, "-c", _CHILD, str(data), str(tmp_path)],
                          cwd=REPO, env=env, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    assert out["decoder"] == ["pillow-full", None]  # recorded where it is not the CPU's; old stores read as pillow
    assert out["paths"][0] == out["paths"][1] and len(out["paths"][0]) == 6
    assert out["max_diff"] < 1e-4, out["max_diff"]  # the same pixels in, the same features out
    assert out["spread"] > 1e-3, out["spread"]  # while each other image's features differ from the first's by more
    assert out["skipped"] == ["truncated"]  # the CPU decoder's reason for a file no decoder reads
    assert "gpu_decode_s" in out["stages"] and out["stages"]["decoder"] == "pillow-full"
    assert "decoder" in out["mixed"]  # a store never holds rows of two decoders


def test_a_gpu_decoded_head_refuses_images_given_one_by_one_and_export(tmp_path):
    # serve, the Python API and export decode with Pillow (or TensorFlow ops built to match it): a head trained on
    # GPU-decoded features would get other pixels than it was trained on, so it says so instead
    import numpy as np
    from sklearn.linear_model import LogisticRegression

    from pipeline.heads.classifier import Classifier

    spec = {"backbone": "mobilenet_v2_quant", "kind": "tflite", "model": "0" * 64, "weights": None, "layer": "penultimate",
            "preprocess": {"size": [224, 224], "crop_fraction": 1.0, "resample": "bilinear", "scaling": "raw"}, "dim": 4}
    model = LogisticRegression().fit(np.eye(4), ["a", "b", "a", "b"])
    clf = Classifier(model, ["a", "b"], spec)
    gpu = Classifier(model, ["a", "b"], {**spec, "decoder": "nvimgcodec"})
    with pytest.raises(UsageError, match=r"decoded on the GPU \(nvimgcodec\).*retrain it on a store featurized with"):
        gpu.features([b"not even decoded"])
    with pytest.raises(UsageError, match="an export"):
        gpu.export(tmp_path / "model")
    clf.check_cpu_decoder("anything")  # a CPU-decoded head: nothing to say
