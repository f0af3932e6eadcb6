"""What `serve` refuses to run (issue 27, item 1): models handed over are checked before anything loads.

A SavedModel is served only when every op of its graph and of every function of its library is on the
allow-list of pure tensor ops that `export` emits (pipeline/export/allowed_ops.py), checked on
saved_model.pb before TensorFlow loads it; a .tflite only with built-in operators, checked on the
flatbuffer before any interpreter is built. Each attack below is built by the test itself, and is shown
to be live: loaded by TensorFlow directly (or with --trust-model) it does read and write files.
RELIABILITY D01 (a model file is code) and D10 (model hot-swap: a model file is code), E-ERR.
"""
from __future__ import annotations

import shutil
import subprocess
import sys

import numpy as np
import pytest
from conftest import REPO
from models_for_tests import SIZE

from pipeline.backbones import create_backbone
from pipeline.errors import BackboneError, ModelFileError
from pipeline.export.info import SAVED_MODEL_FILE
from pipeline.serving.predictors import SavedModelPredictor, load_predictor

pytestmark = pytest.mark.slow  # every test builds and saves TensorFlow models


@pytest.fixture(scope="module")
def export(tiny_app, tiny_head_export):
    """A real export of a linear head over the tiny CNN: (classifier, SavedModel folder), exported once per test
    process (conftest)."""
    return tiny_head_export("keras")


def _save(folder, fn, export, variables=()):
    """A SavedModel whose serving_default is `fn` (uint8 images (N, 32, 32, 3) -> outputs), carrying the real
    export's description (so only the op check stands between it and serving)."""
    import tensorflow as tf

    module = tf.Module()
    module.held = list(variables)
    module.f = tf.function(fn, input_signature=[tf.TensorSpec([None, SIZE, SIZE, 3], tf.uint8, name="images")])
    tf.saved_model.save(module, str(folder), signatures={"serving_default": module.f.get_concrete_function()})
    (folder / SAVED_MODEL_FILE).parent.mkdir(exist_ok=True)
    shutil.copy(export[1] / SAVED_MODEL_FILE, folder / SAVED_MODEL_FILE)
    return folder


def _outputs(export, p):
    """{probabilities, classes} as the export's description says, every class given probability p."""
    import tensorflow as tf

    classes = [str(c) for c in export[0].classes_]
    return lambda n: {"probabilities": tf.fill([n, len(classes)], p),
                      "classes": tf.tile(tf.constant([classes]), [n, 1])}


def _refused(folder, monkeypatch, *names):
    """load_predictor(folder) raises ModelFileError naming every op of `names`; TensorFlow never loads it."""
    import tensorflow as tf

    loaded = []
    with monkeypatch.context() as m:
        m.setattr(tf.saved_model, "load", lambda *a, **k: loaded.append(a))
        with pytest.raises(ModelFileError) as e:
            load_predictor(folder)
    assert loaded == []
    for name in names:
        assert name in str(e.value), str(e.value)
    assert "--trust-model" in str(e.value)
    return str(e.value)


def _dataset_attack(folder, export, secret, planted):
    """serving_default runs DatasetToSingleElement(DatasetFromGraph(graph_def)) where graph_def is joined at
    run time from two constants, one cut to a length computed from the images (so TensorFlow cannot fold it
    into a constant), and holds a tf.data map that reads
    `secret`, writes it to `planted` and returns its first byte as the probability."""
    import tensorflow as tf

    def leak(_):
        data = tf.io.read_file(str(secret))
        with tf.control_dependencies([tf.io.write_file(str(planted), data)]):
            return tf.cast(tf.io.decode_raw(tf.strings.substr(data, 0, 1), tf.uint8)[0], tf.float32) / 255.0

    ds = tf.data.Dataset.from_tensors(tf.constant(0)).map(leak)
    graph = ds._as_serialized_graph(external_state_policy=tf.data.experimental.ExternalStatePolicy.WARN).numpy()
    head, tail = graph[:len(graph) // 2], graph[len(graph) // 2:]
    outputs = _outputs(export, 0.0)

    def serve(images):
        zero = tf.cast(tf.reduce_max(images), tf.int32) // 1000  # 0 for any uint8 images, known only at run time
        tail_now = tf.strings.substr(tf.constant(tail), 0, len(tail) + zero)
        variant = tf.raw_ops.DatasetFromGraph(graph_def=tf.strings.join([tf.constant(head), tail_now]))
        p = tf.raw_ops.DatasetToSingleElement(dataset=variant, output_types=[tf.float32], output_shapes=[[]])[0]
        out = outputs(tf.shape(images)[0])
        return {**out, "probabilities": out["probabilities"] + p}
    return _save(folder, serve, export)


def test_a_dataset_run_from_a_serialized_graph_is_refused_before_loading(export, tmp_path, monkeypatch):
    """The issue's first row: served, each request read a file outside and wrote another. Refused naming
    DatasetFromGraph and DatasetToSingleElement; nothing read or written. With --trust-model (the only way
    past) the same folder loads and its warm-up call does write the file: the attack is real."""
    secret, planted = tmp_path / "secret.txt", tmp_path / "planted.txt"
    secret.write_bytes(b"\xffsecret")
    folder = _dataset_attack(tmp_path / "evil", export, secret, planted)
    message = _refused(folder, monkeypatch, "DatasetFromGraph", "DatasetToSingleElement")
    assert "tf.data" in message and str(secret) not in message
    assert not planted.exists()
    served = load_predictor(folder, trust_model=True)  # trusted: loaded and warmed up, so the map ran
    assert planted.read_bytes() == secret.read_bytes()
    assert served.predict_pixels(np.zeros((1, SIZE, SIZE, 3), np.uint8))[0, 0] == pytest.approx(1.0)


def test_a_sampler_reading_a_vocab_file_is_refused_before_tensorflow_opens_it(export, tmp_path, monkeypatch):
    """FixedUnigramCandidateSampler(vocab_file=...) opens its file when TensorFlow builds the kernel: refused
    on the protobuf, before TensorFlow loads anything."""
    import tensorflow as tf

    vocab = tmp_path / "vocab.txt"
    vocab.write_text("a,1\nb,1\n")
    outputs = _outputs(export, 0.5)

    def serve(images):
        sampled, _, _ = tf.random.fixed_unigram_candidate_sampler(
            tf.zeros([1, 1], tf.int64), num_true=1, num_sampled=1, unique=True, range_max=2, vocab_file=str(vocab))
        out = outputs(tf.shape(images)[0])
        return {**out, "probabilities": out["probabilities"] + tf.cast(sampled[0], tf.float32) * 0}
    _refused(_save(tmp_path / "sampler", serve, export), monkeypatch, "FixedUnigramCandidateSampler")


def test_restore_v2_in_a_function_the_signature_calls_is_refused(export, tmp_path, monkeypatch):
    """RestoreV2 reads any checkpoint the graph names: allowed only in the saver's own functions. Here a
    nested tf.function called by serving_default holds it: refused naming it."""
    import tensorflow as tf

    tf.train.Checkpoint(x=tf.Variable(3.0)).write(str(tmp_path / "ckpt"))
    outputs = _outputs(export, 0.5)

    @tf.function
    def restore():
        return tf.raw_ops.RestoreV2(prefix=str(tmp_path / "ckpt"), tensor_names=["x/.ATTRIBUTES/VARIABLE_VALUE"],
                                    shape_and_slices=[""], dtypes=[tf.float32])[0]

    def serve(images):
        out = outputs(tf.shape(images)[0])
        return {**out, "probabilities": out["probabilities"] + restore() * 0}
    message = _refused(_save(tmp_path / "restores", serve, export), monkeypatch, "RestoreV2")
    assert "outside the saver's own functions" in message


def test_the_saver_function_called_by_name_from_the_signature_is_refused(export, tmp_path, monkeypatch):
    """A node whose op is the name of a library function calls it: here serving_default's function calls the
    SavedModel's own save function (SaveV2, MergeV2Checkpoints) by name, which the saver_def alone should run.
    The real export, whose saver holds the same ops, is still accepted."""
    import tensorflow as tf
    from tensorflow.core.protobuf import saved_model_pb2

    from pipeline.export.allowed_ops import check_saved_model_ops

    folder = _save(tmp_path / "by_name", lambda images: _outputs(export, 0.5)(tf.shape(images)[0]), export,
                   variables=[tf.Variable(1.0)])
    pb = folder / "saved_model.pb"
    sm = saved_model_pb2.SavedModel.FromString(pb.read_bytes())
    mg = sm.meta_graphs[0]
    nodes = {n.name: n for n in mg.graph_def.node}
    save_fn = nodes[mg.saver_def.save_tensor_name.split(":")[0]].attr["f"].func.name
    wrapper = nodes[mg.signature_def["serving_default"].outputs["classes"].name.split(":")[0]].attr["f"].func.name
    fns = {f.signature.name: f for f in mg.graph_def.library.function}
    called = next(n.attr["f"].func.name for n in fns[wrapper].node_def if "f" in n.attr)
    call = fns[called].node_def.add()
    call.name, call.op = "save_everything", save_fn
    call.input.extend([fns[called].signature.input_arg[0].name])
    pb.write_bytes(sm.SerializeToString())
    check_saved_model_ops(export[1])  # the export: SaveV2 in its saver only
    _refused(folder, monkeypatch, "SaveV2", "MergeV2Checkpoints")


def test_a_tf1_saved_model_without_object_graph_is_refused(export, tmp_path, monkeypatch):
    """TensorFlow loads a SavedModel without object graph the TF1 way, running its init and restore ops."""
    import tensorflow as tf
    from tensorflow.core.protobuf import saved_model_pb2

    folder = _save(tmp_path / "tf1", lambda images: _outputs(export, 0.5)(tf.shape(images)[0]), export)
    sm = saved_model_pb2.SavedModel.FromString((folder / "saved_model.pb").read_bytes())
    sm.meta_graphs[0].ClearField("object_graph_def")
    (folder / "saved_model.pb").write_bytes(sm.SerializeToString())
    with pytest.raises(ModelFileError, match="no object graph"):
        load_predictor(folder)


def test_every_head_kind_exported_is_still_served(export, tmp_path):
    """The allow-list lets every export through: the real export loads and answers."""
    served = load_predictor(export[1])
    assert isinstance(served, SavedModelPredictor)
    p = served.predict_pixels(np.zeros((2, SIZE, SIZE, 3), np.uint8))
    assert p.shape == (2, len(export[0].classes_)) and np.allclose(p.sum(axis=1), 1.0, atol=1e-5)


# ---- TFLite ---------------------------------------------------------------------------------------
def _with_custom_op(src, dst, name: str = "FlexReadFile"):
    """`src` with its first operator's code turned into the custom (Flex) operator `name`."""
    from ai_edge_litert import schema_py_generated as schema
    from ai_edge_litert.tools import flatbuffer_utils as fb

    model = fb.read_model_from_bytearray(bytearray(src.read_bytes()))
    code = model.operatorCodes[model.subgraphs[0].operators[0].opcodeIndex]
    code.builtinCode = code.deprecatedBuiltinCode = schema.BuiltinOperator.CUSTOM
    code.customCode = name.encode()
    dst.write_bytes(bytes(fb.convert_object_to_bytearray(model)))
    return dst


@pytest.fixture(scope="module")
def tflite_export(tiny_head_export):
    return tiny_head_export("keras", fmt="tflite")[1]  # the same head as one .tflite, converted once (conftest)


def test_a_tflite_export_with_a_custom_op_is_refused_before_any_interpreter(tflite_export, tmp_path, monkeypatch):
    """A Flex op is a TensorFlow op run inside TFLite (FlexReadFile reads files): refused from the flatbuffer,
    naming it, before an interpreter is built; the export itself (built-in operators only) is served."""
    import pipeline.backbones.tflite as tflite

    evil = _with_custom_op(tflite_export, tmp_path / "evil.tflite")
    built = []
    real = tflite.interpreter_class
    monkeypatch.setattr(tflite, "interpreter_class", lambda: built.append(1) or real())
    with pytest.raises(ModelFileError, match="FlexReadFile") as e:
        load_predictor(evil)
    assert "--trust-model" in str(e.value)
    assert built == []
    threads = []

    def recording():  # the interpreter as served, its threads noted
        Interpreter, resolver = real()
        return (lambda *a, **k: threads.append(k.get("num_threads")) or Interpreter(*a, **k)), resolver

    monkeypatch.setattr(tflite, "interpreter_class", recording)
    monkeypatch.setattr("pipeline.serving.predictors.usable_cores", lambda: 1)  # as under taskset -c 0
    served = load_predictor(tflite_export)
    assert served.predict_pixels(np.zeros((1, SIZE, SIZE, 3), np.uint8)).shape == (1, len(served.classes))
    assert threads == [1]  # a thread per core the server may use, not per CPU of the machine


def test_a_tflite_backbone_with_a_custom_op_is_refused(tflite_export, tmp_path):
    """The same check guards a .tflite given as a backbone (featurize, score, a head's backbone)."""
    evil = _with_custom_op(tflite_export, tmp_path / "evil.tflite", "MyCustomOp")
    with pytest.raises(BackboneError, match="MyCustomOp"):
        create_backbone(str(evil), "penultimate")


# ---- the command line -----------------------------------------------------------------------------
def _serve(*args, timeout=300):
    return subprocess.run([sys.executable, "-m", "pipeline", "serve", *map(str, args), "--port", "0"],
                          cwd=REPO, capture_output=True, text=True, timeout=timeout)


def test_cli_serve_refuses_the_attack_with_exit_1_naming_the_op(export, tmp_path, capsys, monkeypatch):
    """`serve` exits 1 (a model it will not run) with one line naming the op and the way past. The command
    runs in this process (TensorFlow is imported here already; a fresh one spent ~10 s importing it): what a
    process of its own prints and exits with is the .tflite case below."""
    import pipeline.serving.serve as serving
    from pipeline.cli import main

    secret, planted = tmp_path / "secret.txt", tmp_path / "planted.txt"
    secret.write_text("x")
    folder = _dataset_attack(tmp_path / "evil", export, secret, planted)
    monkeypatch.setattr(serving, "serve", lambda *a, **k: pytest.fail("the attack was served"))
    assert main(["serve", str(folder), "--port", "0"]) == 1
    err = capsys.readouterr().err
    assert "DatasetFromGraph" in err and "--trust-model" in err and "Traceback" not in err
    assert len(err.strip().splitlines()) == 1, err  # Python's stderr (the .tflite case below: the process's)
    assert not planted.exists()


def test_cli_serve_refuses_a_custom_op_tflite_with_exit_1(tflite_export, tmp_path):
    r = _serve(_with_custom_op(tflite_export, tmp_path / "evil.tflite"))
    assert r.returncode == 1 and "FlexReadFile" in r.stderr and "Traceback" not in r.stderr, r.stderr


def test_cli_serve_help_offers_trust_model():
    r = subprocess.run([sys.executable, "-m", "pipeline", "serve", "-h"], cwd=REPO, capture_output=True, text=True,
                       timeout=120)
    assert r.returncode == 0 and "--trust-model" in r.stdout
