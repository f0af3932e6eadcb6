"""Graph backbones whose ops reach outside their tensors are refused before TensorFlow builds or loads them
(pipeline/backbones/graph_ops.py): a frozen GraphDef or a SavedModel that writes a file when featurizing is
code, not a model (RELIABILITY D01: a model file is code). TFP_TRUST_MODEL=1 runs it, and the attack is real."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from conftest import make_class_tree
from models_for_tests import SIZE

from pipeline.backbones import create_backbone
from pipeline.backbones.graph_ops import TRUST_ENV, check_graph_def, check_saved_model, ops_outside_saver
from pipeline.errors import ModelFileError

IMAGES = np.zeros((2, SIZE, SIZE, 3), np.uint8)


def _const(gd, name: str, value) -> None:
    import tensorflow as tf

    node = gd.node.add()
    node.name, node.op = name, "Const"
    node.attr["dtype"].type = tf.string.as_datatype_enum
    node.attr["value"].tensor.CopyFrom(tf.make_tensor_proto(value))


def _graph_writing(src: str, dst: Path, target: Path) -> str:
    """The tiny frozen graph with a WriteFile of `target` that the convolution waits for (a control input):
    every batch featurized writes the file."""
    import tensorflow as tf

    gd = tf.compat.v1.GraphDef.FromString(Path(src).read_bytes())
    _const(gd, "pwn/name", str(target))
    _const(gd, "pwn/data", "written by a model file")
    write = gd.node.add()
    write.name, write.op = "pwn", "WriteFile"
    write.input.extend(["pwn/name", "pwn/data"])
    next(n for n in gd.node if n.op == "Conv2D").input.append("^pwn")
    dst.write_bytes(gd.SerializeToString())
    return str(dst)


def test_a_frozen_graph_that_writes_a_file_is_refused_before_it_runs(tiny_frozen_graph, tmp_path, monkeypatch,
                                                                     capsys):
    from pipeline.cli import main

    src, inp, _ = tiny_frozen_graph
    target = tmp_path / "written.txt"
    path = _graph_writing(src, tmp_path / "planted.pb", target)
    bb = create_backbone(path, "penultimate", input_size=SIZE, scaling="tf", input_tensor=inp)
    with pytest.raises(ModelFileError, match=r"planted\.pb: the graph holds ops .*WriteFile \(reads or writes "
                                             rf"files\).*{TRUST_ENV}=1"):
        bb.load()
    data = make_class_tree(tmp_path / "data", per_class=1)
    assert main(["featurize", str(data), "--backbone", path, "--input-tensor", inp, "--input-size", str(SIZE),
                 "--scaling", "tf", "--layer", "penultimate", "--out", str(tmp_path / "s"), "--no-progress"]) == 1
    assert "WriteFile" in capsys.readouterr().err
    assert not target.exists() and not (tmp_path / "s").exists()

    monkeypatch.setenv(TRUST_ENV, "1")  # trusted, it runs: the attack is real
    trusted = create_backbone(path, "penultimate", input_size=SIZE, scaling="tf", input_tensor=inp)
    assert trusted(IMAGES).shape == (2, 8)
    assert target.read_text() == "written by a model file"


def test_a_saved_model_that_writes_a_file_is_refused_before_tensorflow_loads_it(tmp_path, monkeypatch):
    import tensorflow as tf

    target = tmp_path / "written.txt"

    class Planted(tf.Module):
        @tf.function(input_signature=[tf.TensorSpec([None, SIZE, SIZE, 3], tf.float32)])
        def serve(self, x):
            tf.io.write_file(str(target), "written by a model file")
            return {"features": tf.reduce_mean(x, axis=[1, 2])}

    module = Planted()
    tf.saved_model.save(module, str(tmp_path / "planted"), signatures={"serving_default": module.serve})
    monkeypatch.setattr(tf.saved_model, "load", lambda *a, **k: pytest.fail("TensorFlow loaded the SavedModel"))
    bb = create_backbone(str(tmp_path / "planted"), "penultimate", input_size=SIZE, scaling="tf")
    with pytest.raises(ModelFileError, match=r"planted: the SavedModel holds ops .*WriteFile"):
        bb.load()
    assert not target.exists()


def test_the_test_graphs_and_a_tf1_saved_model_with_its_saver_pass(tiny_frozen_graph, tiny_saved_model, tmp_path):
    """No refusal of what backbones are made of: the tiny CNN frozen and as a SavedModel (its saver's SaveV2 and
    RestoreV2 in the saver's functions), and a TensorFlow 1 SavedModel, whose saver is a subgraph of RestoreV2
    and Assign nodes of the main graph; RestoreV2 reached from its signature is refused."""
    import tensorflow as tf
    from tensorflow.core.protobuf import saved_model_pb2

    check_graph_def(tf.compat.v1.GraphDef.FromString(Path(tiny_frozen_graph[0]).read_bytes()), "tiny.pb")
    check_saved_model(tiny_saved_model)

    folder = tmp_path / "tf1"
    with tf.Graph().as_default(), tf.compat.v1.Session() as sess:
        x = tf.compat.v1.placeholder(tf.float32, [None, 4], name="x")
        v = tf.compat.v1.get_variable("v", [4], initializer=tf.compat.v1.ones_initializer())
        y = tf.identity(x * v, name="y")
        sess.run(tf.compat.v1.global_variables_initializer())
        builder = tf.compat.v1.saved_model.Builder(str(folder))
        sig = tf.compat.v1.saved_model.predict_signature_def({"x": x}, {"y": y})
        builder.add_meta_graph_and_variables(sess, ["serve"], signature_def_map={"serving_default": sig})
        builder.save()
    check_saved_model(folder)
    mg = saved_model_pb2.SavedModel.FromString((folder / "saved_model.pb").read_bytes()).meta_graphs[0]
    assert "RestoreV2" in {n.op for n in mg.graph_def.node}  # the saver is there, and was let through
    assert "RestoreV2" in ops_outside_saver(mg, {})  # serve's stricter walk (two saver nodes) would refuse it

    sm = saved_model_pb2.SavedModel.FromString((folder / "saved_model.pb").read_bytes())
    restore = next(n.name for n in sm.meta_graphs[0].graph_def.node if n.op == "RestoreV2")
    sm.meta_graphs[0].signature_def["serving_default"].outputs["y"].name = f"{restore}:0"
    (folder / "saved_model.pb").write_bytes(sm.SerializeToString())
    with pytest.raises(ModelFileError, match="RestoreV2 \\(reads or writes checkpoint files, outside the saver"):
        check_saved_model(folder)
