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
from pipeline.backbones.graph_ops import TRUST_ENV, check_graph_def, check_saved_model
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


def _tf1_saved_model(folder: Path) -> Path:
    """A TensorFlow 1 SavedModel (Builder, a Session): a variable, its saver, a serving signature."""
    import tensorflow as tf

    with tf.Graph().as_default(), tf.compat.v1.Session() as sess:
        x = tf.compat.v1.placeholder(tf.float32, [None, 4], name="x")
        v = tf.compat.v1.get_variable("v", [4], initializer=tf.compat.v1.ones_initializer())
        y = tf.identity(x * v, name="y")
        sess.run(tf.compat.v1.global_variables_initializer())
        builder = tf.compat.v1.saved_model.Builder(str(folder))
        sig = tf.compat.v1.saved_model.predict_signature_def({"x": x}, {"y": y})
        builder.add_meta_graph_and_variables(sess, ["serve"], signature_def_map={"serving_default": sig})
        builder.save()
    return folder


def test_the_test_graphs_pass_and_tf1_saved_models_need_trust(tiny_frozen_graph, tiny_saved_model, tmp_path,
                                                              monkeypatch):
    """What backbones are made of passes: the tiny CNN frozen, and as a SavedModel (its saver's SaveV2 and
    RestoreV2 in the saver's functions, which TensorFlow 2's loader never runs). A TensorFlow 1 SavedModel
    (no object graph), or one with a second meta graph, is loaded by running the saver and init ops the file
    names, whatever they write: refused, unless trusted."""
    import tensorflow as tf
    from tensorflow.core.protobuf import saved_model_pb2

    check_graph_def(tf.compat.v1.GraphDef.FromString(Path(tiny_frozen_graph[0]).read_bytes()), "tiny.pb")
    check_saved_model(tiny_saved_model)

    tf1 = _tf1_saved_model(tmp_path / "tf1")
    with pytest.raises(ModelFileError, match=rf"tf1: a TensorFlow 1 SavedModel \(1 meta graph\(s\), no object "
                                             rf"graph\).*tf.saved_model.save.*{TRUST_ENV}=1"):
        check_saved_model(tf1)
    two = tmp_path / "two"
    sm = saved_model_pb2.SavedModel.FromString((Path(tiny_saved_model) / "saved_model.pb").read_bytes())
    sm.meta_graphs.add().CopyFrom(sm.meta_graphs[0])
    two.mkdir()
    (two / "saved_model.pb").write_bytes(sm.SerializeToString())
    with pytest.raises(ModelFileError, match=r"\(2 meta graph\(s\), object graph\)"):
        check_saved_model(two)
    monkeypatch.setenv(TRUST_ENV, "1")
    check_saved_model(tf1)


def test_ops_that_dump_tensors_or_call_other_hosts_are_refused(tiny_frozen_graph, tmp_path):
    """DumpTensor writes a tensor to any folder; RpcClient talks to any host: both refused, named."""
    import tensorflow as tf

    gd = tf.compat.v1.GraphDef.FromString(Path(tiny_frozen_graph[0]).read_bytes())
    for name, op in (("dump", "DumpTensor"), ("rpc", "RpcClient")):
        node = gd.node.add()
        node.name, node.op = name, op
    with pytest.raises(ModelFileError, match=r"DumpTensor \(reads or writes files\); RpcClient \(talks to other "
                                             r"hosts or devices\)"):
        check_graph_def(gd, "dump.pb")


def _with_swappable_writer(folder: Path, target: Path, how: str) -> Path:
    """A SavedModel whose signature calls a function of api_implements "feat", with a second function of the
    same api_implements in its library that writes `target` (a checkpoint op): Grappler's implementation
    selector may run the second in place of the first, though nothing names it (a reviewer's script wrote
    the file through tf.saved_model.load and through this project's backbone). `how`: "alone" (named by nothing),
    "in-saver" (also called from the SavedModel's own save function, so that it counts as the saver's), or
    "via-saver-function" (the twin holds no checkpoint op: it calls a function of the saver's that does)."""
    import tensorflow as tf
    from tensorflow.core.protobuf import saved_model_pb2

    feat = tf.TensorSpec([None, 3], tf.float32)

    @tf.function(experimental_attributes={"api_implements": "feat", "api_preferred_device": "GPU"}, autograph=False)
    def plain(x):
        return x * 2.0

    def write(x):
        s = tf.raw_ops.Save(filename=tf.constant(str(target)), tensor_names=tf.constant(["t"]),
                            data=[tf.constant(["written by a model file"])])
        with tf.control_dependencies([s]):
            return x * 2.0

    saver_fn = tf.function(write, autograph=False).get_concrete_function(feat)  # no api_implements
    twin = {"api_implements": "feat", "api_preferred_device": "CPU"}
    writer = tf.function(saver_fn if how == "via-saver-function" else write, experimental_attributes=twin,
                         autograph=False)

    class Model(tf.Module):
        def __init__(self):
            self.w = tf.Variable(tf.ones([3]))

        @tf.function(input_signature=[tf.TensorSpec([None, SIZE, SIZE, 3], tf.float32)], autograph=False)
        def serve(self, x):
            return {"features": plain(tf.reduce_mean(x, axis=[1, 2]) * self.w)}

    model = Model()
    tf.saved_model.save(model, str(folder), signatures={"serving_default": model.serve})
    fdef = writer.get_concrete_function(feat).function_def
    sm = saved_model_pb2.SavedModel.FromString((folder / "saved_model.pb").read_bytes())
    library = sm.meta_graphs[0].graph_def.library
    library.function.add().CopyFrom(fdef)
    if how == "via-saver-function":
        library.function.add().CopyFrom(saver_fn.function_def)
        fdef = saver_fn.function_def  # what the save function calls
    if how != "alone":
        save = next(f for f in library.function if "_traced_save" in f.signature.name)
        const = save.node_def.add()
        const.name, const.op = "ones", "Const"
        const.attr["dtype"].type = tf.float32.as_datatype_enum
        const.attr["value"].tensor.CopyFrom(tf.make_tensor_proto(np.ones([1, 3], np.float32)))
        call = save.node_def.add()
        call.name, call.op = "also_write", "StatefulPartitionedCall"
        call.input.append("ones:output:0")
        call.attr["f"].func.name = fdef.signature.name
        call.attr["Tin"].list.type.append(tf.float32.as_datatype_enum)
        call.attr["Tout"].list.type.append(tf.float32.as_datatype_enum)
    (folder / "saved_model.pb").write_bytes(sm.SerializeToString())
    return folder


@pytest.mark.parametrize("how,why", [("alone", "which more than the saver may run"),
                                     ("in-saver", "a function of the saver that TensorFlow may run"),
                                     ("via-saver-function", "which more than the saver may run")])
def test_a_checkpoint_writer_that_tensorflow_may_swap_in_is_refused_by_both_checks(tmp_path, how, why):
    """Checkpoint ops are allowed only in functions that nothing but the saver's calls reaches (every library
    function counts as run), none of them with api_implements: refused by the backbone check and by serve's
    allow-list (which shares the saver rule), naming the function. Reviewers' scripts wrote the file each way."""
    from pipeline.export.allowed_ops import check_saved_model_ops

    folder = _with_swappable_writer(tmp_path / "swap", tmp_path / "written.txt", how)
    for check in (check_saved_model, check_saved_model_ops):
        with pytest.raises(ModelFileError, match=why):
            check(folder)
    assert not (tmp_path / "written.txt").exists()


def test_an_op_that_ends_or_stalls_the_process_is_refused(tiny_frozen_graph):
    """Abort(exit_without_error=True) ends a featurize run with exit status 0, as if it had finished."""
    import tensorflow as tf

    gd = tf.compat.v1.GraphDef.FromString(Path(tiny_frozen_graph[0]).read_bytes())
    for name, op in (("abort", "Abort"), ("sleep", "SleepOp")):
        node = gd.node.add()
        node.name, node.op = name, op
    with pytest.raises(ModelFileError, match=r"Abort \(ends or stalls the process\); SleepOp \(ends or stalls"):
        check_graph_def(gd, "abort.pb")


# Registered ops whose name, arguments or attributes look like a file, folder, pattern, host or graph, reviewed:
# they compute on tensors in memory (image channels, regex patterns, cuDNN directions and host-side buffers, the
# fused kernels' host arguments, device copies, the saver's file *names* as strings, graph version numbers,
# a decoder's top paths).
REVIEWED = {"CudnnRNN", "CudnnRNNBackprop", "CudnnRNNBackpropV2", "CudnnRNNBackpropV3", "CudnnRNNCanonicalToParams",
            "CudnnRNNCanonicalToParamsV2", "CudnnRNNParamsSize", "CudnnRNNParamsToCanonical",
            "CudnnRNNParamsToCanonicalV2", "CudnnRNNV2", "CudnnRNNV3", "RegexFullMatch", "RegexReplace",
            "StaticRegexFullMatch", "StaticRegexReplace", "_FusedConv2D", "_MklNativeFusedConv2D", "HostConst",
            "_HostCast", "CopyHost", "_CopyFromGpuToHost", "_CopyFromHostToGpu", "ShardedFilename", "ShardedFilespec",
            "GraphDefVersion", "RequiresOlderGraphVersion", "_FusedQuantizedConv2D", "_FusedQuantizedDepthwiseConv2D",
            "_QuantizedMatMul", "CTCBeamSearchDecoder"}
OUTWARD_ARG = r"file|path|(^|_)dir(_|$)|directory|pattern|address|url|prefix|graph|(^|_)host(_|$)|port$|socket|server"
OUTWARD_OP = (r"File|Dir|Path|Rpc|Socket|Http|Url|Dump|Event|Record|Summary|Graph|Save|Restore|Checkpoint|Send|Recv|"
              r"Host|Abort|Exit|Sleep")


def test_every_registered_op_that_names_a_file_or_host_is_refused_or_reviewed():
    """A deny-list falls behind new TensorFlow releases: every op TensorFlow registers whose name, arguments or
    attributes name a file, a folder, a pattern, a host or a graph is refused, or reviewed above. A new such op
    fails here until someone decides which."""
    import re

    from tensorflow.core.framework import op_def_pb2
    from tensorflow.python.client import pywrap_tf_session as c_api

    from pipeline.backbones.graph_ops import refused_kind

    ops = op_def_pb2.OpList.FromString(c_api.TF_GetBuffer(c_api.TF_GetAllOpList()))
    assert len(ops.op) > 1000  # the whole registry, not a few
    arg, name = re.compile(OUTWARD_ARG, re.IGNORECASE), re.compile(OUTWARD_OP)
    unknown = {}
    for op in ops.op:
        hits = [n for n in (a.name for a in (*op.input_arg, *op.attr)) if arg.search(n)] + name.findall(op.name)
        if hits and not refused_kind(op.name) and op.name not in REVIEWED:
            unknown[op.name] = hits
    assert not unknown, f"ops that may reach outside their tensors, neither refused nor reviewed: {unknown}"
    assert all(not refused_kind(op) for op in REVIEWED)
