"""`serve` with an exported model (issue 16): a SavedModel folder or a .tflite file instead of a head file,
over real HTTP on 127.0.0.1, answering what the head's predict_proba says, within the same limits."""
from __future__ import annotations

import io
import json
import socket
import subprocess
import sys
import threading
import time

import httpx
import numpy as np
import pytest
from PIL import Image

pytest.importorskip("uvicorn", reason="serve needs the [serve] extra: FastAPI, uvicorn, python-multipart")
pytest.importorskip("fastapi", reason="serve needs the [serve] extra: FastAPI, uvicorn, python-multipart")
pytestmark = pytest.mark.slow  # every test serves or refuses a TensorFlow export

from conftest import REPO  # noqa: E402
from test_serve import files_of, png_header_only, running, wait_until  # noqa: E402

from pipeline.errors import ModelFileError  # noqa: E402
from pipeline.serving.predictors import SavedModelPredictor, TFLitePredictor, check_saved_model_ops, load_predictor  # noqa: E402
from pipeline.serving.serve import ServeLimits  # noqa: E402


@pytest.fixture(scope="module")
def images(tiny_images):
    return tiny_images


@pytest.fixture(scope="module")
def saved_model(tiny_app, tiny_head_export):
    """A calibrated linear SVM over the tiny Keras CNN, exported as a SavedModel: (classifier, folder), with the
    metrics train records (conftest exports it once per test process; tests/export checks the same export)."""
    return tiny_head_export("keras")


@pytest.fixture(scope="module")
def tflite_export(tiny_head_export):
    """The bundled MobileNetV2 (uint8) + a logistic head exported as one .tflite: (classifier, file)."""
    return tiny_head_export("mobilenet_v2_quant", "logreg", fmt="tflite")


@pytest.fixture(scope="module")
def served_saved_model(saved_model):
    return load_predictor(saved_model[1])


def _served(url, paths) -> list[dict]:
    r = httpx.post(f"{url}/predict", files=files_of(paths), timeout=60)
    assert r.status_code == 200, r.text
    return r.json()["predictions"]


def test_served_saved_model_equals_predict_proba(saved_model, served_saved_model, images):
    # the same HTTP answers as for the head file: probabilities in the head's class order, within 1e-4
    clf, folder = saved_model
    paths, _ = images
    assert isinstance(served_saved_model, SavedModelPredictor)
    with running(served_saved_model) as (url, _):
        served = _served(url, paths)
        raw = httpx.post(f"{url}/predict", params={"filename": "x.jpg"}, content=paths[0].read_bytes(), timeout=60)
        info = httpx.get(f"{url}/model").json()
    want = clf.predict_proba(list(map(str, paths)))
    assert [p["filename"] for p in served] == [p.name for p in paths]
    for p, w in zip(served, want):
        assert list(p["probabilities"]) == list(clf.classes_)
        assert np.abs(np.asarray(list(p["probabilities"].values())) - w).max() <= 1e-4
        assert p["prediction"] == clf.classes_[int(np.argmax(w))]
    assert np.abs(np.asarray(list(raw.json()["predictions"][0]["probabilities"].values())) - want[0]).max() <= 1e-4
    assert info["classes"] == list(clf.classes_) and info["head"] == "linear_svm"
    assert info["export"]["format"] == "saved_model" and info["feature_spec"]["backbone"] == "tiny_cnn"
    assert info["metrics"]["n_train"] == len(paths) and "features" not in info["metrics"]
    assert list(info["versions"]["serving_with"]) == ["tf-feature-pipeline"]  # exact library versions: --verbose-model
    assert set(info["export"]["exported_with"] or {}) <= {"tf-feature-pipeline"}
    text = json.dumps(info)
    assert str(paths[0].parent) not in text and str(folder.parent) not in text and str(REPO) not in text


def test_served_tflite_export_of_the_bundled_quantized_backbone(tflite_export, images):
    # the bundled MobileNetV2 (uint8) + a logistic head as one .tflite: served within the TFLite tolerance
    paths, _ = images
    clf, model = tflite_export
    predictor = load_predictor(model)
    assert isinstance(predictor, TFLitePredictor)
    with running(predictor) as (url, _):
        served = _served(url, paths)
        info = httpx.get(f"{url}/model").json()
    want = clf.predict_proba(list(map(str, paths)))
    for p, w in zip(served, want):
        assert list(p["probabilities"]) == list(clf.classes_)
        assert np.abs(np.asarray(list(p["probabilities"].values())) - w).max() <= 1e-2
    assert info["classes"] == list(clf.classes_) and info["export"]["format"] == "tflite"
    assert info["feature_spec"]["backbone"] == "mobilenet_v2_quant" and info["feature_spec"]["dim"] == 1280


def test_a_served_tflite_export_keeps_the_xnnpack_notice_off_stderr(tflite_export):
    # serve is quiet by default, as featurize is: TFLite's "Created ... XNNPACK delegate" only with -v
    clf, model = tflite_export  # the export test_served_tflite_export_of_the_bundled_quantized_backbone serves
    code = ("import numpy as np; from pipeline.serving.predictors import load_predictor; "
            f"p = load_predictor({str(model)!r}); print(p.predict_pixels(np.zeros((1, 224, 224, 3), np.uint8)).shape)")
    r = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0 and r.stdout.strip() == f"(1, {len(clf.classes_)})", r.stderr
    assert "XNNPACK" not in r.stderr


def test_limits_and_bad_images_are_answered_as_for_a_head(served_saved_model, images):
    # 413 (body, images per request), 422 with featurize's reason codes, then the server goes on serving
    paths, _ = images
    small = io.BytesIO()
    Image.new("RGB", (200, 100)).save(small, "PNG")
    limits = ServeLimits(max_body_bytes=200_000, max_images=2, max_pixels=10_000)
    with running(served_saved_model, limits) as (url, _):
        body = httpx.post(f"{url}/predict", content=b"x" * 200_001)
        many = httpx.post(f"{url}/predict", files=files_of(paths[:3]))
        pixels = httpx.post(f"{url}/predict", content=small.getvalue())
        bomb = httpx.post(f"{url}/predict", content=png_header_only(40000, 40000))
        bad = httpx.post(f"{url}/predict", files=[("files", ("page.jpg", b"<html></html>", "image/jpeg"))])
        after = httpx.post(f"{url}/predict", content=jpeg_bytes((60, 50)))
    assert body.status_code == 413 and body.json()["code"] == "body_too_large"
    assert many.status_code == 413 and many.json()["code"] == "too_many_images"
    for r in (pixels, bomb):
        assert r.status_code == 422 and r.json()["errors"][0]["reason"] == "too_many_pixels"
    assert bad.status_code == 422 and bad.json()["errors"][0]["filename"] == "page.jpg"
    assert after.status_code == 200


def jpeg_bytes(size) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", size, (30, 30, 230)).save(buf, "JPEG")
    return buf.getvalue()


class Gated:
    """A predictor whose predict_pixels waits for `gate` once armed."""

    def __init__(self, inner):
        self.inner, self.gate, self.armed = inner, threading.Event(), False
        self.classes, self.preprocess, self.batch_size = inner.classes, inner.preprocess, inner.batch_size

    def predict_pixels(self, pixels):
        if self.armed:
            self.gate.wait(30)
        return self.inner.predict_pixels(pixels)

    def describe(self):
        return self.inner.describe()


def test_requests_beyond_the_in_flight_limit_get_503(served_saved_model, images):
    paths, _ = images
    slow = Gated(served_saved_model)
    image = paths[0].read_bytes()
    with running(slow, ServeLimits(max_in_flight=1)) as (url, state):
        slow.armed = True
        with httpx.Client(timeout=30) as client:
            results = []
            first = threading.Thread(target=lambda: results.append(client.post(f"{url}/predict", content=image)))
            first.start()
            wait_until(lambda: state.in_flight == 1)
            refused = client.post(f"{url}/predict", content=image)
            slow.gate.set()
            first.join()
    assert refused.status_code == 503 and refused.json()["code"] == "overloaded"
    assert refused.headers["retry-after"] == "1" and results[0].status_code == 200


def test_cli_serves_an_exported_saved_model(saved_model, images):
    clf, folder = saved_model
    paths, _ = images
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    sock.close()
    proc = subprocess.Popen([sys.executable, "-m", "pipeline", "serve", str(folder), "--port", str(port)],
                            cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    try:
        for _ in range(1200):
            try:
                if httpx.get(f"http://127.0.0.1:{port}/health").status_code == 200:
                    break
            except httpx.TransportError:
                time.sleep(0.1)
        r = httpx.post(f"http://127.0.0.1:{port}/predict", content=paths[5].read_bytes(), timeout=60)
    finally:
        proc.terminate()
        out = proc.communicate(timeout=30)[0].decode()
    assert r.status_code == 200, out
    got = np.asarray(list(r.json()["predictions"][0]["probabilities"].values()))
    assert np.abs(got - clf.predict_proba([str(paths[5])])[0]).max() <= 1e-4


# ---- what is refused, before anything runs --------------------------------------------------------
def _plain_saved_model(path, fn):
    import tensorflow as tf

    module = tf.Module()
    module.f = tf.function(fn, input_signature=[tf.TensorSpec([None, 32, 32, 3], tf.uint8, name="images")])
    tf.saved_model.save(module, str(path), signatures={"serving_default": module.f.get_concrete_function()})
    return path


def _refused_before_loading(fn, folder, saved_model, monkeypatch, match: str) -> None:
    """A SavedModel of `fn` carrying this project's export description is refused (naming `match`)
    before TensorFlow loads it."""
    import shutil

    import tensorflow as tf

    folder = _plain_saved_model(folder, fn)
    shutil.copytree(saved_model[1] / "assets.extra", folder / "assets.extra")
    loaded = []
    monkeypatch.setattr(tf.saved_model, "load", lambda *a, **k: loaded.append(a))
    with pytest.raises(ModelFileError, match=match):
        load_predictor(folder)
    assert loaded == []


def test_a_saved_model_not_exported_by_this_project_is_refused(tmp_path):
    # without the export's description serve cannot decode images as featurize does: refused, not guessed
    import tensorflow as tf

    folder = _plain_saved_model(tmp_path / "plain", lambda images: {"p": tf.reduce_mean(tf.cast(images, tf.float32))})
    with pytest.raises(ModelFileError, match="export the head again"):
        load_predictor(folder)
    with pytest.raises(ModelFileError, match="not a SavedModel"):
        load_predictor(tmp_path)


def test_a_saved_model_whose_graph_reads_files_is_refused_before_loading(saved_model, tmp_path, monkeypatch):
    # a graph is code of a kind: one that reads files when run is not served, even with our description
    import tensorflow as tf

    secret = tmp_path / "secret.txt"
    secret.write_text("do not serve me")
    _refused_before_loading(lambda images: {"classes": tf.io.read_file(str(secret))}, tmp_path / "evil",
                            saved_model, monkeypatch, "ReadFile")


def test_a_tflite_file_without_the_export_description_is_refused():
    # the bundled backbone itself is a .tflite, but not an export: it has no head and no description
    from pipeline.backbones import DATA_DIR

    with pytest.raises(ModelFileError, match="export the head again"):
        load_predictor(DATA_DIR / "mobilenet_v2_1.0_224_quant.tflite")


def test_a_file_reading_function_named_like_the_saver_is_refused_too(saved_model, tmp_path, monkeypatch):
    """RELIABILITY D01/D10 (a model file is code): the deny-list skipped every function whose name began with
    TF's saver prefix, and a Python function called `_traced_save_x` gets exactly such a name, so a serving
    signature reading any file on the server passed the check and was served."""
    import tensorflow as tf

    secret = tmp_path / "secret.txt"
    secret.write_text("do not serve me")

    def _traced_save_disguised(images):
        return {"classes": tf.io.read_file(str(secret))}
    _refused_before_loading(_traced_save_disguised, tmp_path / "disguised", saved_model, monkeypatch, "ReadFile")


def test_a_signature_that_writes_checkpoint_files_is_refused(saved_model, tmp_path, monkeypatch):
    """RELIABILITY D01: SaveV2 in a serving signature writes files wherever the graph says on every request.
    Exports hold it only in the saver's functions, which no signature calls: the export is still served."""
    import tensorflow as tf

    planted = tmp_path / "planted"

    def writes(images):
        tf.raw_ops.SaveV2(prefix=str(planted), tensor_names=["x"], shape_and_slices=[""], tensors=[tf.constant(1.)])
        return {"classes": tf.constant("cat")}
    from tensorflow.core.protobuf import saved_model_pb2

    export = saved_model_pb2.SavedModel.FromString((saved_model[1] / "saved_model.pb").read_bytes())
    assert any(n.op == "SaveV2" for f in export.meta_graphs[0].graph_def.library.function for n in f.node_def)
    check_saved_model_ops(saved_model[1])  # the real export: SaveV2 in its saver only, passes
    _refused_before_loading(writes, tmp_path / "writes", saved_model, monkeypatch, "SaveV2")
    assert not list(tmp_path.glob("planted*"))


def test_a_signature_that_writes_event_files_is_refused(saved_model, tmp_path, monkeypatch):
    """RELIABILITY D01: a summary writer in a serving signature writes event files under any folder the graph
    names, on every request; such ops (and file/network datasets, old readers) were missing from the list."""
    import tensorflow as tf

    def logs(images):
        tf.raw_ops.CreateSummaryFileWriter(writer=tf.raw_ops.SummaryWriter(), logdir=str(tmp_path / "planted"),
                                          max_queue=1, flush_millis=1, filename_suffix="")
        return {"classes": tf.constant("cat")}
    _refused_before_loading(logs, tmp_path / "logs", saved_model, monkeypatch, "CreateSummaryFileWriter")
