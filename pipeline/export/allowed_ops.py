"""Which TensorFlow ops a served SavedModel may hold: an allow-list, checked on the protobuf before loading.

A SavedModel is a TensorFlow graph, and its ops run on every request. :data:`ALLOWED_OPS` is the set of
pure tensor ops (arithmetic, shapes, control flow, image decoding from bytes already in memory,
variables held in memory) that ``export`` emits for every backbone kind and head kind, Keras
applications included; it was derived from the exports by ``bench/export_ops.py`` and is checked against
every export the tests can build (tests/export/test_allowed_ops.py). :func:`check_saved_model_ops`
parses ``saved_model.pb`` with the protobuf classes only (nothing is loaded, no op is built) and
refuses, naming the ops:

* any node, in the graph or in any function of its library, whose op is neither on the list nor a
  call of a function of the library by name, or whose function attributes (``f``, branches) name
  anything but a library function or an op on the list (:data:`REFUSED_OPS` explains the ops
  refused whatever the list says: datasets, ``*FromGraph``, readers, savers, samplers reading a
  ``vocab_file``, ``PyFunc*``, ``ImmutableConst``...);
* the checkpoint ops (:data:`CHECKPOINT_OPS`: ``SaveV2``, ``RestoreV2``...) anywhere but in the saver's
  own functions (those the SavedModel's ``saver_def`` runs and nothing else reaches: called only by
  TensorFlow's save and restore, never by a signature): a signature, the graph, a function of the object
  graph or a node calling a function by name that reaches them is refused;
* a SavedModel without an object graph (a TF1 one, whose loader runs its init and restore ops).
"""
from __future__ import annotations

import re
from pathlib import Path

from ..errors import ModelFileError

# The pure tensor ops of every export: exactly what `python bench/export_ops.py` printed (the 14 Keras
# applications, the tiny CNN as a Keras application with flip, two layers and mixed precisions, as a
# SavedModel and as a frozen GraphDef, with every head kind; the checkpoint ops below aside). Keep it
# sorted; add an op only after checking it reads and writes nothing but tensors in memory.
ALLOWED_OPS = frozenset({
    "Abs", "AddV2", "All", "Any", "Assert", "AssignVariableOp", "AvgPool", "BiasAdd", "Case", "Cast", "Ceil",
    "ConcatV2", "Const", "Conv2D", "Cumsum", "DecodeBmp", "DecodeGif", "DecodeImage", "DecodeJpeg", "DecodePng",
    "DecodeRaw", "DepthwiseConv2dNative", "DisableCopyOnRead", "EnsureShape", "Equal", "Exp", "ExpandDims",
    "ExtractJpegShape", "Fill", "Floor", "FloorDiv", "FloorMod", "GatherV2", "Greater", "GreaterEqual",
    "Identity", "IdentityN", "If", "LeftShift", "Less", "LessEqual", "Log", "LogicalAnd", "LogicalNot",
    "LogicalOr", "MatMul", "Max", "MaxPool", "Maximum", "Mean", "Minimum", "Mul", "Neg", "NoOp", "NotEqual",
    "OnesLike", "Pack", "Pad", "PadV2", "PartitionedCall", "Placeholder", "Range", "ReadVariableOp", "RealDiv",
    "Relu", "Relu6", "Reshape", "ReverseV2", "RightShift", "Round", "Rsqrt", "Select", "SelectV2", "Shape",
    "ShardedFilename", "Sigmoid", "Sign", "Softmax", "Sqrt", "Squeeze", "StatefulPartitionedCall",
    "StatelessCase", "StatelessIf", "StatelessWhile", "StaticRegexFullMatch", "StridedSlice", "StringJoin",
    "StringLength", "Sub", "Substr", "Sum", "TensorListFromTensor", "TensorListGetItem", "TensorListReserve",
    "TensorListSetItem", "TensorListStack", "TensorScatterUpdate", "Tile", "Transpose", "VarHandleOp", "While",
    "ZerosLike",
})

# Checkpoint reads and writes at a path the graph chooses: allowed in the saver's own functions only.
CHECKPOINT_OPS = frozenset({"SaveV2", "RestoreV2", "MergeV2Checkpoints", "Save", "SaveSlices", "Restore",
                            "RestoreSlice"})

# Ops refused whatever ALLOWED_OPS says, with the reason a refusal gives (a test keeps them off the list).
REFUSED_OPS: dict[str, str] = {
    r".*Dataset.*|.*Iterator.*|DatasetToSingleElement|DatasetFromGraph": "runs a tf.data pipeline (a graph of its own)",
    r".*FromGraph|ImportGraphDef|.*Function.*|RemoteCall|.*Xla.*": "runs a serialized graph or function",
    r".*Reader.*|ReadFile|WriteFile|MatchingFiles|.*Summary.*|.*Checkpoint.*|Save.*|Restore.*|MergeV2Checkpoints":
        "reads or writes files",
    r".*CandidateSampler|.*TextFile.*|.*Vocab.*|LoadAndRemapMatrix": "reads a file it is given the name of",
    r".*PyFunc.*|EagerPyFunc|ImmutableConst|.*Debug.*|PrintV2|Print|.*Proto.*": "runs Python, maps a file or prints",
}


def refusal_reason(op: str) -> str:
    """Why `op` is refused: its REFUSED_OPS reason, else that it is not on the allow-list."""
    for pattern, why in REFUSED_OPS.items():
        if re.fullmatch(pattern, op):
            return why
    return "not on the allow-list of pure tensor ops"


def graph_ops(graph_def) -> set[str]:
    """The op of every node of a GraphDef and of every function of its library (calls by name included)."""
    ops = {n.op for n in graph_def.node}
    for fn in graph_def.library.function:
        ops.update(n.op for n in fn.node_def)
    return ops


def check_saved_model_ops(folder) -> None:
    """Refuse (ModelFileError naming the ops) a SavedModel that could read or write files, run a serialized
    graph or Python: see the module's docstring. Nothing is loaded: only saved_model.pb is parsed."""
    folder = Path(folder)
    sm = _parse(folder)
    bad: dict[str, str] = {}
    for mg in sm.meta_graphs:
        if not mg.object_graph_def.nodes:
            raise ModelFileError(f"{folder}: the SavedModel has no object graph (a TensorFlow 1 SavedModel, whose "
                                 f"loader runs its own init and restore ops); it was not written by `export`")
        fns = {f.signature.name: f for f in mg.graph_def.library.function}
        by_name = {name for name in fns if not _registered(name)}  # a function named like an op is no call
        for node in _every_node(mg.graph_def):
            if node.op not in ALLOWED_OPS and node.op not in by_name and node.op not in CHECKPOINT_OPS:
                bad[node.op] = refusal_reason(node.op)
            for name in _function_attrs(node):  # f=ReadFile: TensorFlow runs a bare op given as a function
                if name not in fns and name not in ALLOWED_OPS:
                    bad[name] = refusal_reason(name)
        for op in _ops_outside_saver(mg, fns) & CHECKPOINT_OPS:
            bad[op] = "reads or writes checkpoint files, outside the saver's own functions"
    if bad:
        named = "; ".join(f"{op} ({why})" for op, why in sorted(bad.items()))
        raise ModelFileError(f"{folder}: the SavedModel holds ops that are not served: {named}. Only the pure "
                             f"tensor ops that `export` emits are allowed (pipeline/export/allowed_ops.py); export "
                             f"the head again, or pass --trust-model if you trust where this model came from")


def _registered(name: str) -> bool:
    """True when `name` is a TensorFlow op (a node with that op runs the op, whatever a function says)."""
    from tensorflow.python.framework import op_def_registry

    return op_def_registry.get(name) is not None


def _parse(folder: Path):
    from tensorflow.core.protobuf import saved_model_pb2

    sm = saved_model_pb2.SavedModel()
    try:
        sm.ParseFromString((folder / "saved_model.pb").read_bytes())
    except Exception as e:  # noqa: BLE001 - a malformed protobuf raises DecodeError and others
        raise ModelFileError(f"{folder}/saved_model.pb cannot be parsed ({type(e).__name__}: {e}); "
                             f"export the head again") from None
    if not sm.meta_graphs:
        raise ModelFileError(f"{folder}/saved_model.pb holds no graph; export the head again")
    return sm


def _every_node(graph_def):
    yield from graph_def.node
    for fn in graph_def.library.function:
        yield from fn.node_def


def _ops_outside_saver(mg, fns: dict) -> set[str]:
    """The ops of every graph node and function that anything but the saver reaches: the signatures, every
    node of the graph other than the saver's, and every function the object graph names."""
    saver = {mg.saver_def.save_tensor_name.split(":")[0], mg.saver_def.restore_op_name.split(":")[0]} - {""}
    nodes = {n.name: n for n in mg.graph_def.node}
    todo = [name for name in nodes if name not in saver]  # a saver node reached from elsewhere is walked too
    todo += [t.name for sig in mg.signature_def.values() for t in (*sig.inputs.values(), *sig.outputs.values())]
    calls = list(_object_graph_functions(mg.object_graph_def))
    ops, seen_nodes, seen_fns = set(), set(), set()
    while todo:
        name = todo.pop().lstrip("^").split(":")[0]
        if name in seen_nodes or name not in nodes:
            continue
        seen_nodes.add(name)
        node = nodes[name]
        ops.add(node.op)
        todo += list(node.input)
        calls += _called(node, fns)
    while calls:
        f = calls.pop()
        if f in fns and f not in seen_fns:
            seen_fns.add(f)
            for inner in fns[f].node_def:
                ops.add(inner.op)
                calls += _called(inner, fns)
    return ops


def _object_graph_functions(og) -> set[str]:
    """Every concrete function the object graph names (functions, bare functions, saveables' functions)."""
    names = set(og.concrete_functions)
    for node in og.nodes:
        kind = node.WhichOneof("kind")
        if kind == "function":
            names.update(node.function.concrete_functions)
        elif kind == "bare_concrete_function":
            names.add(node.bare_concrete_function.concrete_function_name)
    return names


def _called(node, fns: dict) -> list[str]:
    """The functions a node calls: its op when that names a library function (a call by name), and every
    function-valued attribute (PartitionedCall's f, If/While branches, nested function attributes)."""
    return ([node.op] if node.op in fns else []) + _function_attrs(node)


def _function_attrs(node) -> list[str]:
    """The names in a node's function-valued attributes, nested ones included."""
    names, todo = [], list(node.attr.values())
    while todo:
        attr = todo.pop()
        if attr.HasField("func"):
            names.append(attr.func.name)
            todo += list(attr.func.attr.values())
        for f in attr.list.func:
            names.append(f.name)
            todo += list(f.attr.values())
    return names
