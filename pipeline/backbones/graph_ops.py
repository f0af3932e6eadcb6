"""Which TensorFlow ops a graph handed to this project may not hold: the ops that reach outside tensors.

A frozen GraphDef or a SavedModel is a TensorFlow graph, and its ops run when it is loaded (a TF1
SavedModel's init ops) and on every batch. Most ops compute on tensors in memory; a few read or write
files (``ReadFile``, ``WriteFile``, summaries, checkpoints at a path the graph chooses), run a serialized
graph or function (``tf.data`` datasets, ``ImportGraphDef``, XLA modules) or Python (``PyFunc``). A
model file holding those can read or write anything the user can, so it is code, not a model.

:data:`REFUSED_OPS` names those kinds. Graph backbones (:mod:`pipeline.backbones.graph`: a frozen ``.pb``,
a SavedModel folder, a TF-Hub handle) are checked against it before TensorFlow builds or loads anything
(:func:`check_graph_def`, :func:`check_saved_model`): any node, in the graph or in any function of its
library, called or not, whose op, or a bare op a function attribute names (``f=ReadFile``), is of a
refused kind; the checkpoint ops (:data:`CHECKPOINT_OPS`) anywhere in a frozen graph, and in a SavedModel
anywhere but in functions that nothing but its two saver calls reaches (TensorFlow 2's loader never runs
them: it restores the variables itself), none of which may carry ``api_implements`` (Grappler's
implementation selector may run any library function of the same ``api_implements`` in place of a call,
named or not, so every library function counts as run: :func:`saver_problems`); and a TensorFlow 1 SavedModel (no object graph, or several meta graphs), whose loader runs the
saver and init ops the file names, which no check of the file can vouch for. The list is a deny-list:
tests/backbones/test_graph_ops.py goes through every op TensorFlow registers and fails on one whose
arguments name a file, a folder, a pattern, a host or a graph that the list does not refuse and no one
has reviewed. The environment variable ``TFP_TRUST_MODEL=1`` lets any graph run, for a model from a source
you trust.

``serve`` holds exports to more: the allow-list of :mod:`pipeline.export.allowed_ops`, built on the
walkers here. Only ``saved_model.pb`` or the ``.pb`` is parsed, with the protobuf classes alone.
"""
from __future__ import annotations

import os
import re
from pathlib import Path

from ..errors import ModelFileError

TRUST_ENV = "TFP_TRUST_MODEL"  # "1": graph backbones run whatever ops they hold

# Checkpoint reads and writes at a path the graph chooses: allowed in the saver's own functions only.
CHECKPOINT_OPS = frozenset({"SaveV2", "RestoreV2", "MergeV2Checkpoints", "Save", "SaveSlices", "Restore",
                            "RestoreSlice"})

# Ops refused in any model file, with the reason a refusal gives (and never on serve's allow-list: a test).
REFUSED_OPS: dict[str, str] = {
    r".*Dataset.*|.*Iterator.*|DatasetToSingleElement|DatasetFromGraph": "runs a tf.data pipeline (a graph of its own)",
    r".*FromGraph|ImportGraphDef|.*Function.*|RemoteCall|.*Xla.*": "runs a serialized graph or function",
    r".*Reader.*|ReadFile|WriteFile|MatchingFiles|.*Summary.*|.*Checkpoint.*|Save.*|Restore.*|MergeV2Checkpoints":
        "reads or writes files",
    r".*CandidateSampler|.*TextFile.*|.*Vocab.*|LoadAndRemapMatrix": "reads a file it is given the name of",
    r".*PyFunc.*|EagerPyFunc|ImmutableConst|.*Debug.*|PrintV2|Print|.*Proto.*": "runs Python, maps a file or prints",
    r"DumpTensor|CalibrationStatistics.*|RecordInput|Skipgram|DistributedSave|DTensor.*|FileSystem.*|ImportEvent":
        "reads or writes files",
    r".*Rpc.*|Collective.*|_?Nccl.*|.*TPU.*|_?(Host)?(Send|Recv)": "talks to other hosts or devices",
    r"Abort|Sleep.*|.*Exit.*": "ends or stalls the process",
}
# Function attributes under which Grappler runs a library function in place of another (implementation selection)
SELECTOR_ATTRS = ("api_implements", "forward_function_name", "backward_function_name")
_REFUSED = [(re.compile(pattern), why) for pattern, why in REFUSED_OPS.items()]


def refused_kind(op: str) -> str | None:
    """Why `op` is refused in any model file (its REFUSED_OPS reason), or None."""
    return next((why for pattern, why in _REFUSED if pattern.fullmatch(op)), None)


def trusted() -> bool:
    """Whether the user lets graph backbones run whatever they hold (``TFP_TRUST_MODEL=1``)."""
    return os.environ.get(TRUST_ENV, "") == "1"


def check_graph_def(graph_def, where) -> None:
    """Refuse (ModelFileError naming the ops) a frozen GraphDef backbone with an op of a refused kind or a
    checkpoint op, in the graph or in any function of its library."""
    if trusted():
        return
    fns = {f.signature.name for f in graph_def.library.function}
    bad = {op: refused_kind(op) or "reads or writes checkpoint files" for op in _ops_named(graph_def, fns)
           if refused_kind(op) or op in CHECKPOINT_OPS}
    _refuse(bad, where, "graph")


def check_saved_model(folder, where=None) -> None:
    """Refuse (ModelFileError naming the ops) a SavedModel backbone with an op of a refused kind anywhere, a
    checkpoint op that anything but its saver calls reaches, or no TensorFlow 2 object graph. Nothing is
    loaded: only saved_model.pb is parsed. `where`: how the refusal names it (default: the folder)."""
    if trusted():
        return
    folder = Path(folder)
    where = where or folder
    sm = parse_saved_model(folder, "use the model's original SavedModel folder")
    if len(sm.meta_graphs) != 1 or not sm.meta_graphs[0].object_graph_def.nodes:
        raise ModelFileError(f"{where}: a TensorFlow 1 SavedModel ({len(sm.meta_graphs)} meta graph(s), "
                             f"{'no ' if not sm.meta_graphs[0].object_graph_def.nodes else ''}object graph): "
                             f"TensorFlow's loader runs the saver and init ops it names, which no check of the file "
                             f"can vouch for; save it again with TensorFlow 2 (tf.saved_model.save), or set "
                             f"{TRUST_ENV}=1 if you trust where it came from")
    mg = sm.meta_graphs[0]
    fns = {f.signature.name: f for f in mg.graph_def.library.function}
    bad = {op: why for op in _ops_named(mg.graph_def, fns) - CHECKPOINT_OPS if (why := refused_kind(op))}
    bad.update(saver_problems(mg, fns))
    _refuse(bad, where, "SavedModel")


def _ops_named(graph_def, fns) -> set[str]:
    """Every op a node of the graph or of a library function runs: its op (not a call of a library function by
    name) and the bare ops its function attributes name."""
    by_name = {name for name in fns if not registered(name)}  # a function named like an op is no call
    ops = set()
    for node in every_node(graph_def):
        if node.op not in by_name:
            ops.add(node.op)
        ops.update(name for name in function_attrs(node) if name not in fns)
    return ops


def _refuse(bad: dict, where, what: str) -> None:
    if bad:
        named = "; ".join(f"{op} ({why})" for op, why in sorted(bad.items()))
        raise ModelFileError(f"{where}: the {what} holds ops that reach outside its tensors: {named}. A backbone's "
                             f"graph runs as it is, so such a file is code, not a model (pipeline/backbones/"
                             f"graph_ops.py); use a model from a source you trust, and set {TRUST_ENV}=1 to run "
                             f"this one anyway")


def registered(name: str) -> bool:
    """True when `name` is a TensorFlow op (a node with that op runs the op, whatever a function says)."""
    from tensorflow.python.framework import op_def_registry

    return op_def_registry.get(name) is not None


def parse_saved_model(folder: Path, what_to_do: str):
    """The SavedModel protobuf of `folder` (ModelFileError naming the file and `what_to_do` when it cannot be)."""
    from tensorflow.core.protobuf import saved_model_pb2

    sm = saved_model_pb2.SavedModel()
    try:
        sm.ParseFromString((folder / "saved_model.pb").read_bytes())
    except Exception as e:  # noqa: BLE001 - a malformed protobuf raises DecodeError and others
        raise ModelFileError(f"{folder}/saved_model.pb cannot be parsed ({type(e).__name__}: {e}); "
                             f"{what_to_do}") from None
    if not sm.meta_graphs:
        raise ModelFileError(f"{folder}/saved_model.pb holds no graph; {what_to_do}")
    return sm


def every_node(graph_def):
    """The nodes of the graph and of every function of its library."""
    yield from graph_def.node
    for fn in graph_def.library.function:
        yield from fn.node_def


def saver_problems(mg, fns: dict) -> dict[str, str]:
    """{op or function: why} for the checkpoint ops of a TensorFlow 2 SavedModel that something but its saver
    could run. Grappler's implementation selector may run any library function in place of a call of one with the
    same ``api_implements``, whether anything names it or not; so every library function counts as run, and a
    checkpoint op is allowed only in a function that nothing but the saver's two calls reaches: not from a
    signature, the graph or the object graph (:func:`ops_outside_saver`), not from any other library function,
    called or not, and not named as a bare op by a function attribute. The saver's own functions may not carry
    ``api_implements`` themselves."""
    saver = _saver_nodes(mg)
    own = _functions_from([f for node in mg.graph_def.node if node.name in saver for f in _called(node, fns)], fns)
    bad = {op: "reads or writes checkpoint files, outside the saver's own functions"
           for op in ops_outside_saver(mg, fns) & CHECKPOINT_OPS}
    for name in sorted(_functions_from([f for f in fns if f not in own], fns)):  # every other function, and all
        for op in {n.op for n in fns[name].node_def} & CHECKPOINT_OPS:          # it may call, saver's or not
            bad.setdefault(op, f"reads or writes checkpoint files, in function {name}, which more than the "
                               f"saver may run")
    for node in every_node(mg.graph_def):
        for op in set(function_attrs(node)) & CHECKPOINT_OPS:
            bad.setdefault(op, "reads or writes checkpoint files, named as a bare op by a function attribute")
    for name in own:
        if any(attr in fns[name].attr for attr in SELECTOR_ATTRS):
            bad[name] = ("a function of the saver that TensorFlow may run in place of another "
                         f"({', '.join(a for a in SELECTOR_ATTRS if a in fns[name].attr)})")
    return bad


def _saver_nodes(mg) -> set[str]:
    """The names of the SavedModel's two saver calls (its saver_def's save and restore)."""
    return {mg.saver_def.save_tensor_name.split(":")[0], mg.saver_def.restore_op_name.split(":")[0]} - {""}


def _functions_from(names, fns: dict) -> set[str]:
    """`names` and every library function they call, directly or not."""
    seen, todo = set(), list(names)
    while todo:
        f = todo.pop()
        if f in fns and f not in seen:
            seen.add(f)
            todo += [g for node in fns[f].node_def for g in _called(node, fns)]
    return seen


def ops_outside_saver(mg, fns: dict) -> set[str]:
    """The ops of every graph node and function that anything but the saver reaches: the signatures, every
    node of the graph other than the saver's two calls (a TensorFlow 2 SavedModel's save and restore), and
    every function the object graph names."""
    saver = _saver_nodes(mg)
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
    """Every concrete function the object graph names (functions, bare functions, captured tensors' functions,
    saveables' functions)."""
    names = set(og.concrete_functions)
    for node in og.nodes:
        kind = node.WhichOneof("kind")
        if kind == "function":
            names.update(node.function.concrete_functions)
        elif kind == "bare_concrete_function":
            names.add(node.bare_concrete_function.concrete_function_name)
        elif kind == "captured_tensor":
            names.add(node.captured_tensor.concrete_function)
    return names


def _called(node, fns: dict) -> list[str]:
    """The functions a node calls: its op when that names a library function (a call by name), and every
    function-valued attribute (PartitionedCall's f, If/While branches, nested function attributes)."""
    return ([node.op] if node.op in fns else []) + function_attrs(node)


def function_attrs(node) -> list[str]:
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
