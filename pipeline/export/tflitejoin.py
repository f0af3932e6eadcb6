"""Join two TFLite flatbuffers into one model: a (quantized) backbone, then a float head after it.

A full-integer backbone must stay quantized (that is its accuracy and its speed), while the head
(scaler, PCA, SVM, calibration) is best run in float. Converting "dequantized backbone + head"
from TensorFlow would re-quantize or de-quantize the backbone; instead the head is converted on
its own (a float TFLite model whose inputs are the backbone's feature tensors) and its subgraph
is appended to the backbone's: its tensors, buffers and operators are copied with their indices
shifted, each head input becomes the output of a DEQUANTIZE of the backbone's feature tensor,
the backbone's own classifier (everything the new outputs do not need) is pruned, and the
model's outputs and signature become the head's. A float-input backbone gets, the same way, a
small converted model of its pixel scaling spliced in before it (``pre``). The result is one
``.tflite`` file that any TFLite runtime runs, with uint8 images in and float probabilities out.
"""
from __future__ import annotations

import numpy as np

DEQUANTIZE = 6  # BuiltinOperator.DEQUANTIZE


def _fb():
    from ai_edge_litert.tools import flatbuffer_utils as fb

    return fb


def _schema():
    from ai_edge_litert import schema_py_generated as schema

    return schema


def _opcode(model, code) -> int:
    """Index of an operator code equal to `code` in model.operatorCodes, appending it when absent."""
    key = (code.builtinCode, code.deprecatedBuiltinCode, code.customCode, code.version)
    for i, c in enumerate(model.operatorCodes):
        if (c.builtinCode, c.deprecatedBuiltinCode, c.customCode, c.version) == key:
            return i
    model.operatorCodes.append(code)
    return len(model.operatorCodes) - 1


def _dequantize_code():
    code = _schema().OperatorCodeT()
    code.builtinCode = code.deprecatedBuiltinCode = DEQUANTIZE
    code.version = 2  # uint8/int8 -> float32
    return code


def _signature(model, name: str):
    for sig in model.signatureDefs or []:
        if sig.signatureKey.decode() == name:
            return sig
    raise ValueError(f"the head model has no signature {name!r}")


def join(backbone: bytes, head: bytes, feeds: dict[str, int], pre: bytes | None = None,
         signature: str = "serving_default") -> bytes:
    """One model: `backbone`, then `head` reading, for each of its signature inputs named in `feeds`,
    the backbone tensor of that index (dequantized when quantized). Outputs: the head's. `pre`, when
    given, is a one-input one-output model run before the backbone (pixel scaling for float inputs)."""
    fb, schema = _fb(), _schema()
    model = fb.read_model_from_bytearray(bytearray(backbone))
    other = fb.read_model_from_bytearray(bytearray(head))
    g = model.subgraphs[0]
    if len(model.subgraphs) != 1 or len(other.subgraphs) != 1:
        raise ValueError("only single-subgraph TFLite models can be joined")
    hsig = _signature(other, signature)
    t0 = len(g.tensors)
    ops, rewire = _append(model, other), {}
    for entry in hsig.inputs:
        name = entry.name.decode()
        if name not in feeds:
            raise ValueError(f"no backbone tensor given for the head input {name!r}")
        src, dst = feeds[name], entry.tensorIndex + t0
        if g.tensors[src].type == g.tensors[dst].type:  # a float feature tensor: read it directly
            rewire[dst] = src
            continue
        op = schema.OperatorT()
        op.opcodeIndex, op.inputs, op.outputs = _opcode(model, _dequantize_code()), [src], [dst]
        ops.insert(0, op)
    _rewire(ops, rewire)
    g.operators = list(g.operators) + ops
    g.outputs = np.asarray([o + t0 for o in other.subgraphs[0].outputs], np.int32)
    if pre is not None:
        _prepend(model, fb.read_model_from_bytearray(bytearray(pre)))
    _prune(g)
    sig = schema.SignatureDefT()
    sig.signatureKey, sig.subgraphIndex = signature.encode(), 0
    sig.inputs = [_tensor_map(schema, "images", int(g.inputs[0]))]
    sig.outputs = [_tensor_map(schema, e.name.decode(), e.tensorIndex + t0) for e in hsig.outputs]
    model.signatureDefs = [sig]
    model.metadata = [m for m in model.metadata or [] if m.name.decode() == "min_runtime_version"]
    return bytes(fb.convert_object_to_bytearray(model))


def _append(model, other) -> list:
    """Copy the buffers and tensors of `other`'s subgraph into `model`'s; its operators, re-indexed."""
    g, h = model.subgraphs[0], other.subgraphs[0]
    buf0, t0 = len(model.buffers), len(g.tensors)
    model.buffers.extend(other.buffers[1:])  # buffer 0 is the shared empty sentinel
    for t in h.tensors:
        t.buffer = 0 if t.buffer == 0 else t.buffer - 1 + buf0
        g.tensors.append(t)
    codes = [_opcode(model, c) for c in other.operatorCodes]
    for op in h.operators:
        op.opcodeIndex = codes[op.opcodeIndex]
        op.inputs = [i + t0 if i >= 0 else i for i in op.inputs]
        op.outputs = [o + t0 for o in op.outputs]
        if op.intermediates is not None:
            op.intermediates = [i + t0 for i in op.intermediates]
    return list(h.operators)


def _rewire(ops, mapping: dict[int, int]) -> None:
    for op in ops:
        op.inputs = [mapping.get(int(i), int(i)) for i in op.inputs]


def _prepend(model, pre) -> None:
    """Run `pre` (one input, one output) first and feed its output to where the model's input went."""
    g = model.subgraphs[0]
    if len(pre.subgraphs) != 1 or len(pre.subgraphs[0].inputs) != 1 or len(pre.subgraphs[0].outputs) != 1:
        raise ValueError("the preprocessing model must have one input and one output")
    t0 = len(g.tensors)
    ops = _append(model, pre)
    old_input = int(g.inputs[0])
    _rewire(g.operators, {old_input: int(pre.subgraphs[0].outputs[0]) + t0})
    g.operators = ops + list(g.operators)
    g.inputs = np.asarray([int(pre.subgraphs[0].inputs[0]) + t0], np.int32)


def _tensor_map(schema, name: str, index: int):
    m = schema.TensorMapT()
    m.name, m.tensorIndex = name.encode(), index
    return m


def _prune(g) -> None:
    """Drop the operators the graph's outputs do not need (the backbone's own classifier)."""
    need, keep = set(int(o) for o in g.outputs), []
    for op in reversed(g.operators):
        if any(int(o) in need for o in op.outputs):
            keep.append(op)
            need.update(int(i) for i in op.inputs if i >= 0)
    g.operators = keep[::-1]
