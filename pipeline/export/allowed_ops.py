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
  refused whatever the list says, in any model file: :mod:`pipeline.backbones.graph_ops`, which also holds the
  walkers used here: datasets, ``*FromGraph``, readers, savers, samplers reading a ``vocab_file``,
  ``PyFunc*``, ``ImmutableConst``...);
* the checkpoint ops (:data:`CHECKPOINT_OPS`: ``SaveV2``, ``RestoreV2``...) anywhere but in the saver's
  own functions (those the SavedModel's ``saver_def`` runs and nothing else reaches: called only by
  TensorFlow's save and restore, never by a signature): a signature, the graph, a function of the object
  graph or a node calling a function by name that reaches them is refused, and so is a checkpoint op in any
  other library function, reached or not, or a saver function with ``api_implements`` (Grappler's
  implementation selector may run a function in place of another of the same ``api_implements``);
* a SavedModel without an object graph (a TF1 one, whose loader runs its init and restore ops).
"""
from __future__ import annotations

from pathlib import Path

from ..backbones.graph_ops import (  # noqa: F401 - CHECKPOINT_OPS, REFUSED_OPS: this module's list, in force here too
    CHECKPOINT_OPS,
    REFUSED_OPS,
    every_node,
    function_attrs,
    parse_saved_model,
    refused_kind,
    registered,
    saver_problems,
)
from ..errors import ModelFileError

# The pure tensor ops of every export: exactly what `python bench/export_ops.py` printed (the 14 Keras
# applications, the tiny CNN as a Keras application with flip, two layers and mixed precisions, as a
# SavedModel and as a frozen GraphDef, with every head kind; the checkpoint ops aside). Keep it
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


def refusal_reason(op: str) -> str:
    """Why `op` is refused: its REFUSED_OPS reason, else that it is not on the allow-list."""
    return refused_kind(op) or "not on the allow-list of pure tensor ops"


def graph_ops(graph_def) -> set[str]:
    """The op of every node of a GraphDef and of every function of its library (calls by name included)."""
    return {n.op for n in every_node(graph_def)}


def check_saved_model_ops(folder) -> None:
    """Refuse (ModelFileError naming the ops) a SavedModel that could read or write files, run a serialized
    graph or Python: see the module's docstring. Nothing is loaded: only saved_model.pb is parsed."""
    folder = Path(folder)
    sm = parse_saved_model(folder, "export the head again")
    bad: dict[str, str] = {}
    for mg in sm.meta_graphs:
        if not mg.object_graph_def.nodes:
            raise ModelFileError(f"{folder}: the SavedModel has no object graph (a TensorFlow 1 SavedModel, whose "
                                 f"loader runs its own init and restore ops); it was not written by `export`")
        fns = {f.signature.name: f for f in mg.graph_def.library.function}
        by_name = {name for name in fns if not registered(name)}  # a function named like an op is no call
        for node in every_node(mg.graph_def):
            if node.op not in ALLOWED_OPS and node.op not in by_name and node.op not in CHECKPOINT_OPS:
                bad[node.op] = refusal_reason(node.op)
            for name in function_attrs(node):  # f=ReadFile: a bare op named as a function
                if name not in fns and name not in ALLOWED_OPS:
                    bad[name] = refusal_reason(name)
        bad.update(saver_problems(mg, fns))  # checkpoint ops: in the saver's own functions only
    if bad:
        named = "; ".join(f"{op} ({why})" for op, why in sorted(bad.items()))
        raise ModelFileError(f"{folder}: the SavedModel holds ops that are not served: {named}. Only the pure "
                             f"tensor ops that `export` emits are allowed (pipeline/export/allowed_ops.py); export "
                             f"the head again, or pass --trust-model if you trust where this model came from")
