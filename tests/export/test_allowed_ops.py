"""The allow-list of ops a served SavedModel may hold (issue 27, item 1): every export passes it, nothing
that reads or writes files, runs a serialized graph or Python is on it, and the check walks the graph, every
function, calls by name and the saver's own functions as it should. RELIABILITY D01 (a model file is code),
D10 (model hot-swap: a model file is code)."""
from __future__ import annotations

import pytest

from pipeline.errors import ModelFileError
from pipeline.export.allowed_ops import ALLOWED_OPS, CHECKPOINT_OPS, check_saved_model_ops, refusal_reason

# argument and attribute names of ops that take a file, a file pattern, a serialized graph or function
FILE_OR_GRAPH_ARGS = ("filename", "file_pattern", "graph_def", "vocab_file", "logdir", "prefix", "f")


def test_no_op_on_the_list_reads_files_or_runs_a_graph():
    """Every allowed op is registered in TensorFlow (a misspelt name would allow nothing and hide it), matches
    none of the explicitly refused kinds, and takes no file name, pattern or serialized graph; the ops that
    call functions are the three call/loop forms whose functions are checked themselves."""
    from tensorflow.python.framework import op_def_registry

    calls = {"PartitionedCall", "StatefulPartitionedCall", "If", "While", "Case", "StatelessIf", "StatelessWhile",
             "StatelessCase"}
    assert not ALLOWED_OPS & CHECKPOINT_OPS
    for op in sorted(ALLOWED_OPS):
        assert refusal_reason(op) == "not on the allow-list of pure tensor ops", op
        op_def = op_def_registry.get(op)
        assert op_def is not None, f"{op} is not a TensorFlow op"
        names = [a.name for a in (*op_def.input_arg, *op_def.attr)]
        if op not in calls:
            assert not [n for n in names if n in FILE_OR_GRAPH_ARGS or "file" in n or "graph" in n], (op, names)
            assert not [a.name for a in op_def.attr if a.type.startswith(("func", "list(func"))], op


@pytest.mark.parametrize("op,why", [("DatasetFromGraph", "tf.data"), ("ReadFile", "files"), ("WriteFile", "files"),
                                    ("FixedUnigramCandidateSampler", "file"), ("PyFunc", "Python"),
                                    ("EagerPyFunc", "Python"), ("ImmutableConst", "maps a file"),
                                    ("TFRecordDatasetV2", "tf.data"), ("SaveV2", "files"), ("RestoreV2", "files"),
                                    ("ImportGraphDef", "serialized graph"), ("Softplus", "allow-list")])
def test_refused_ops_get_their_reason(op, why):
    assert op not in ALLOWED_OPS and why in refusal_reason(op)


# ---- the check, on SavedModel protobufs built by hand (no TensorFlow graph is built) -------------------
def _saved_model(folder, serving_ops=("Identity",), saver_ops=("SaveV2",), extra_fns=(), object_graph=True):
    """A saved_model.pb: serving_default -> StatefulPartitionedCall(f=serve) whose body has `serving_ops`
    (a name of a library function is a call by name); a saver_def whose save node calls `saver` (`saver_ops`);
    `extra_fns`: more (name, ops) functions."""
    from tensorflow.core.protobuf import saved_model_pb2

    sm = saved_model_pb2.SavedModel()
    mg = sm.meta_graphs.add()
    for name, ops in (("serve", serving_ops), ("saver", saver_ops), *extra_fns):
        fn = mg.graph_def.library.function.add()
        fn.signature.name = name
        for i, op in enumerate(ops):
            fn.node_def.add(name=f"n{i}", op=op)
    for name, fn in (("StatefulPartitionedCall", "serve"), ("saver_call", "saver")):
        node = mg.graph_def.node.add(name=name, op="StatefulPartitionedCall")
        node.attr["f"].func.name = fn
    mg.graph_def.node.add(name="saver_filename", op="Placeholder")
    mg.graph_def.node[1].input.append("saver_filename")
    mg.saver_def.save_tensor_name = "saver_call:0"
    mg.signature_def["serving_default"].outputs["p"].name = "StatefulPartitionedCall:0"
    if object_graph:
        mg.object_graph_def.nodes.add().bare_concrete_function.concrete_function_name = "serve"
    folder.mkdir()
    (folder / "saved_model.pb").write_bytes(sm.SerializeToString())
    return folder


def test_the_saver_may_hold_checkpoint_ops_nothing_else(tmp_path):
    check_saved_model_ops(_saved_model(tmp_path / "ok", ("Identity", "MatMul"), ("SaveV2", "MergeV2Checkpoints")))
    with pytest.raises(ModelFileError, match=r"SaveV2 \(reads or writes checkpoint files, outside the saver"):
        check_saved_model_ops(_saved_model(tmp_path / "sig", ("Identity", "SaveV2")))


def test_a_function_called_by_name_is_walked(tmp_path):
    """A node whose op names a library function calls it: the saver called so from the signature, or a
    function holding ReadFile, are refused; so is a function holding RestoreV2 that nothing calls (Grappler's
    implementation selector may run a function nothing names: tests/backbones/test_graph_ops.py)."""
    with pytest.raises(ModelFileError, match="SaveV2"):
        check_saved_model_ops(_saved_model(tmp_path / "saver", ("Identity", "saver")))
    with pytest.raises(ModelFileError, match="RestoreV2"):
        check_saved_model_ops(_saved_model(tmp_path / "chain", ("inner",), extra_fns=[("inner", ("RestoreV2",))]))
    with pytest.raises(ModelFileError, match=r"ReadFile \(reads or writes files\)"):
        check_saved_model_ops(_saved_model(tmp_path / "read", ("Identity",), extra_fns=[("dead", ("ReadFile",))]))
    with pytest.raises(ModelFileError, match=r"RestoreV2 \(reads or writes checkpoint files, in function dead, which "
                                             r"more than the saver may run\)"):
        check_saved_model_ops(_saved_model(tmp_path / "dead", ("Identity",), extra_fns=[("dead", ("RestoreV2",))]))
    with pytest.raises(ModelFileError, match=r"ReadFile \(reads or writes files\)"):  # a function named like an op
        check_saved_model_ops(_saved_model(tmp_path / "named", ("ReadFile",), extra_fns=[("ReadFile", ("Identity",))]))


def test_a_bare_op_given_as_a_function_attribute_is_checked(tmp_path):
    """StatefulPartitionedCall(f=ReadFile) names a bare op as its function (TensorFlow 2.21 refuses to run it,
    "Failed to find function", but another version might): a function attribute must name a library function
    or an allowed op."""
    from tensorflow.core.protobuf import saved_model_pb2

    folder = _saved_model(tmp_path / "m")
    sm = saved_model_pb2.SavedModel.FromString((folder / "saved_model.pb").read_bytes())
    sm.meta_graphs[0].graph_def.node[0].attr["f"].func.name = "ReadFile"
    (folder / "saved_model.pb").write_bytes(sm.SerializeToString())
    with pytest.raises(ModelFileError, match=r"ReadFile \(reads or writes files\)"):
        check_saved_model_ops(folder)


def test_a_saver_def_naming_the_serving_node_does_not_hide_it(tmp_path):
    """saver_def may name any node: the signature still reaches it, so its checkpoint ops are refused."""
    from tensorflow.core.protobuf import saved_model_pb2

    folder = _saved_model(tmp_path / "m", ("Identity", "RestoreV2"))
    sm = saved_model_pb2.SavedModel.FromString((folder / "saved_model.pb").read_bytes())
    sm.meta_graphs[0].saver_def.restore_op_name = "StatefulPartitionedCall"
    (folder / "saved_model.pb").write_bytes(sm.SerializeToString())
    with pytest.raises(ModelFileError, match="RestoreV2"):
        check_saved_model_ops(folder)


def test_unparsable_or_tf1_saved_models_are_refused(tmp_path):
    (tmp_path / "junk").mkdir()
    (tmp_path / "junk" / "saved_model.pb").write_bytes(b"\xff" * 64)
    with pytest.raises(ModelFileError, match="cannot be parsed"):
        check_saved_model_ops(tmp_path / "junk")
    with pytest.raises(ModelFileError, match="no object graph"):
        check_saved_model_ops(_saved_model(tmp_path / "tf1", object_graph=False))


# ---- every export the tests can build passes -------------------------------------------------------
@pytest.mark.slow
@pytest.mark.parametrize("backbone,head,pca", [("keras", "linear_svm", None), ("keras", "svm", 4),
                                               ("keras", "logreg", None), ("keras_flip", "linear_svm", None),
                                               ("savedmodel", "logreg", None), ("graphdef", "svm", None)])
def test_every_exported_kind_passes_the_allow_list(tiny_head_export, backbone, head, pca):
    """Each backbone kind a test can build (a Keras application, with test-time flip; a SavedModel and a
    frozen GraphDef: the graph kind) with each head kind: every op of the export is on the list (the saver's
    checkpoint ops in the saver only), so check_saved_model_ops passes. (The exports tests/export/test_export.py
    compares with predict_proba: conftest builds each once per test process.)"""
    from tensorflow.core.protobuf import saved_model_pb2

    from pipeline.export.allowed_ops import graph_ops

    _, out = tiny_head_export(backbone, head, pca)
    sm = saved_model_pb2.SavedModel.FromString((out / "saved_model.pb").read_bytes())
    fns = {f.signature.name for f in sm.meta_graphs[0].graph_def.library.function}
    assert graph_ops(sm.meta_graphs[0].graph_def) - fns - CHECKPOINT_OPS <= ALLOWED_OPS
    check_saved_model_ops(out)


@pytest.mark.slow
def test_a_tflite_export_holds_builtin_operators_only(tiny_head_export):
    from pipeline.backbones.tflite import operator_names

    _, out = tiny_head_export("keras", fmt="tflite")  # a linear head over the tiny CNN, converted once (conftest)
    names = operator_names(out.read_bytes())
    assert names and not [n for n in names if n.startswith("custom:")], names
