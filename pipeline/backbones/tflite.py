"""TFLite flatbuffers (quantized uint8/int8 or float) as backbones.

The model's op graph is read once to find its layers: ``logits`` is the tensor feeding the
final SOFTMAX (or the output when there is none), ``penultimate`` the data input of the last
FULLY_CONNECTED / CONV_2D before it. Intermediate tensors are read through
``experimental_preserve_all_tensors``. Quantized inputs take raw uint8 pixels (that is what the
quantization parameters of ImageNet TFLite models encode); outputs are dequantized.

Models with a fixed batch of 1 run one interpreter per worker thread, so all cores are used.

Only LiteRT's built-in operators run: :func:`check_builtin_ops` reads the flatbuffer's operator codes
before any interpreter is built and refuses a model with a custom operator or a Flex (SELECT_TF_OPS)
one, which would run a TensorFlow op (file reads and writes included) inside the interpreter.
"""
from __future__ import annotations

import struct
import threading
import warnings
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Mapping

import numpy as np

from ..errors import BackboneError
from ..logs import native_output_quieted
from ..machine import usable_cores
from ..preprocess import Preprocess, normalize, resolve_preprocess
from ..spec import FeatureSpec
from .base import Backbone, BuildOptions, file_sha256, pool, resolve_layer

DATA_DIR = Path(__file__).resolve().parent.parent / "data"


@dataclass(frozen=True)
class BundledModel:
    """A TFLite model shipped in pipeline/data, known by its registry name."""

    file: str  # in DATA_DIR
    dim: int  # width of the penultimate layer (checked by tests/backbones/test_registry.py)
    classes: int  # width of the logits

    @property
    def path(self) -> Path:
        return DATA_DIR / self.file


BUNDLED_MODELS: dict[str, BundledModel] = {
    "mobilenet_v2_quant": BundledModel("mobilenet_v2_1.0_224_quant.tflite", 1280, 1001),
}

_PASS_THROUGH = {"RESHAPE", "SQUEEZE", "DEQUANTIZE", "QUANTIZE", "ADD"}
_CLASSIFIER_OPS = {"FULLY_CONNECTED", "CONV_2D"}


def interpreter_class():
    """(Interpreter, OpResolverType) from LiteRT, or from TensorFlow's tf.lite where LiteRT is absent."""
    try:
        from ai_edge_litert.interpreter import Interpreter, OpResolverType
    except ImportError:  # pragma: no cover - fallback for environments without LiteRT
        import tensorflow as tf

        Interpreter = tf.lite.Interpreter
        OpResolverType = tf.lite.experimental.OpResolverType
    return Interpreter, OpResolverType


def _schema():
    try:
        from ai_edge_litert import schema_py_generated as schema
    except ImportError:  # pragma: no cover - fallback for environments without LiteRT
        from tensorflow.lite.python import schema_py_generated as schema
    return schema


CUSTOM_CODE = 32  # BuiltinOperator.CUSTOM in the TFLite schema: a custom or Flex operator


def operator_codes(data: bytes) -> list[tuple[int, bytes | None]]:
    """(builtin code, custom name or None) of every operator code of a .tflite flatbuffer, read from its
    bytes alone (no schema module: importing LiteRT's generated one cost ~20 ms of every cold start).
    The code is the larger of ``builtin_code`` and ``deprecated_builtin_code``, as the schema says to
    read it. ValueError when `data` is not a TFLite flatbuffer or its operator codes cannot be read."""
    if len(data) < 8 or data[4:8] != b"TFL3":
        raise ValueError("not a TFLite flatbuffer (no TFL3 identifier)")

    def u32(at: int) -> int:
        return struct.unpack_from("<I", data, at)[0]

    try:
        codes = _field(data, u32(0), 1)  # Model field 1: operator_codes, a vector of OperatorCode tables
        if codes is None:
            return []
        vector = codes + u32(codes)
        out = []
        for i in range(u32(vector)):
            at = vector + 4 + 4 * i
            table = at + u32(at)
            deprecated, custom, builtin = (_field(data, table, slot) for slot in (0, 1, 3))
            code = max(struct.unpack_from("<b", data, deprecated)[0] if deprecated is not None else 0,
                       struct.unpack_from("<i", data, builtin)[0] if builtin is not None else 0)
            name = None
            if custom is not None:
                string = custom + u32(custom)
                if string + 4 + u32(string) > len(data):
                    raise struct.error("a custom operator's name runs past the end of the file")
                name = bytes(data[string + 4:string + 4 + u32(string)])
            out.append((code, name))
        return out
    except struct.error as e:
        raise ValueError(f"its operator codes cannot be read ({e})") from None


def operator_names(data: bytes) -> list[str]:
    """The name of every operator code of a .tflite flatbuffer: a built-in's name (CONV_2D...), or
    ``custom:NAME`` for a custom operator (Flex ops are custom ones named ``Flex...``). ValueError when
    `data` is not a TFLite flatbuffer."""
    builtins = {v: k for k, v in vars(_schema().BuiltinOperator).items() if not k.startswith("_")}
    return [f"custom:{_custom_name(code, custom)}" if code == CUSTOM_CODE or code not in builtins else builtins[code]
            for code, custom in operator_codes(data)]


def _custom_name(code: int, custom: bytes | None) -> str:
    return custom.decode("utf-8", "replace") if custom else str(code)


def check_builtin_ops(path, data: bytes | None = None, error=BackboneError, advice: str = "") -> None:
    """Refuse (`error` naming them) a .tflite holding custom or Flex operators, from the flatbuffer alone."""
    try:
        codes = operator_codes(Path(path).read_bytes() if data is None else data)
    except (OSError, ValueError) as e:
        raise error(f"{path} is not a usable TFLite model: {e}") from None
    # a built-in code this LiteRT does not know is refused by the interpreter itself ("didn't find op")
    custom = sorted({_custom_name(code, name) for code, name in codes if code == CUSTOM_CODE})
    if custom:
        raise error(f"{path} holds custom or Flex (TensorFlow) operators: {', '.join(custom)}; only LiteRT's "
                    f"built-in operators are run (a Flex op is a TensorFlow op, able to read and write files). "
                    f"Convert the model with the built-in operators only (the converter's default){advice}")


def _input_details(path: str) -> dict:
    """The model's input tensor details, from an interpreter without delegates (cheap: nothing is prepared)."""
    Interpreter, OpResolverType = interpreter_class()
    try:
        it = Interpreter(model_path=path, experimental_op_resolver_type=OpResolverType.BUILTIN_WITHOUT_DEFAULT_DELEGATES)
        return it.get_input_details()[0]
    except (ValueError, RuntimeError) as e:
        raise BackboneError(f"{path} is not a usable TFLite model: {e}") from e


def _open_interpreter(path: str, content: bytes | None = None, **kw):
    """An allocated interpreter; from `content` (a model rewritten to output the layer) when given,
    else from the file with every tensor preserved (how intermediate layers are read without it)."""
    Interpreter, _ = interpreter_class()
    try:
        with native_output_quieted():  # "INFO: Created TensorFlow Lite XNNPACK delegate" (shown with -v)
            if content is not None:
                it = Interpreter(model_content=content, **kw)
            else:
                with warnings.catch_warnings():
                    warnings.filterwarnings("ignore", message=".*experimental_preserve_all_tensors.*")
                    it = Interpreter(model_path=path, experimental_preserve_all_tensors=True, **kw)
            it.allocate_tensors()
    except (ValueError, RuntimeError) as e:
        raise BackboneError(f"{path} is not a usable TFLite model: {e}") from e
    return it


def with_output(path: str, tensor: str | list[str], it=None) -> bytes | None:
    """The model with `tensor` (or each of a list) added to its outputs, so reading it needs no
    preserved tensors (5-10% faster inference: BENCHMARKS.md); None when it cannot be rewritten.
    `it`: an interpreter of the model (its tensor indices), else a structure interpreter is opened.

    The rewrite appends one int32 vector (the new output list) to the file's bytes and points the
    main subgraph at it: a few bytes written, nothing else moved, so it takes about a millisecond
    where unpacking and repacking the whole flatbuffer took ~0.2 s of CPU at every start."""
    names = [tensor] if isinstance(tensor, str) else list(tensor)
    it = it or _structure_interpreter(path)
    index = {t["name"]: t["index"] for t in it.get_tensor_details()}
    if any(n not in index for n in names):
        return None
    content = Path(path).read_bytes()
    return add_outputs(content, [index[n] for n in names]) or _repacked_with_outputs(content, names)


def add_outputs(content: bytes, indices: list[int]) -> bytes | None:
    """`content` (a .tflite flatbuffer) with tensors `indices` appended to subgraph 0's outputs; None
    when the file is not laid out as expected (the caller falls back to repacking it)."""
    def u32(at: int) -> int:
        return struct.unpack_from("<I", content, at)[0]

    try:
        subgraphs = _field(content, u32(0), 2)  # the root table is a Model; its field 2: the subgraphs
        if subgraphs is None or u32(subgraphs + u32(subgraphs)) == 0:
            return None
        first = subgraphs + u32(subgraphs) + 4  # the vector's first element: an offset to SubGraph 0
        outputs = _field(content, first + u32(first), 2)  # SubGraph field 2: the output tensor indices
        if outputs is None:
            return None
        vector = outputs + u32(outputs)
        old = list(struct.unpack_from(f"<{u32(vector)}i", content, vector + 4))
    except struct.error:
        return None
    new = old + [int(i) for i in indices if int(i) not in old]
    buf = bytearray(content)
    buf += bytes(-len(buf) % 4)  # a vector's length word is 4-byte aligned
    if len(buf) - outputs >= 2 ** 31:  # an offset beyond what a flatbuffer can hold (models over 2 GB)
        return None
    struct.pack_into("<I", buf, outputs, len(buf) - outputs)  # offsets point forward, to the new vector
    buf += struct.pack(f"<I{len(new)}i", len(new), *new)
    return bytes(buf)


def _field(buf: bytes, table: int, slot: int) -> int | None:
    """Where field number `slot` of the flatbuffer table at `table` is stored, or None when absent."""
    vtable = table - struct.unpack_from("<i", buf, table)[0]
    if vtable < 0:  # struct counts a negative offset from the buffer's end: a hostile file would pick the bytes
        raise struct.error(f"a vtable at {vtable}, before the buffer's start")
    size, at = struct.unpack_from("<H", buf, vtable)[0], 4 + 2 * slot
    offset = struct.unpack_from("<H", buf, vtable + at)[0] if at < size else 0
    return table + offset if offset else None


def _repacked_with_outputs(content: bytes, names: list[str]) -> bytes | None:
    """The slow way to add outputs (unpack the whole model, repack it); None when it fails."""
    try:
        from ai_edge_litert.tools import flatbuffer_utils as fb
    except ImportError:  # pragma: no cover
        return None
    try:
        model = fb.read_model_from_bytearray(bytearray(content))
        graph = model.subgraphs[0]
        tensor_names = [t.name.decode("utf-8", "replace") for t in graph.tensors]
        for name in names:
            index = tensor_names.index(name)
            if index not in list(graph.outputs):
                graph.outputs = np.append(np.asarray(graph.outputs, np.int32), np.int32(index))
        return bytes(fb.convert_object_to_bytearray(model))
    except Exception:  # noqa: BLE001 - fall back to preserving every tensor
        return None


def find_layers(path: str, it=None) -> dict:
    """{'logits': name|None, 'penultimate': name|None, 'output': name} from the op graph."""
    it = it or _structure_interpreter(path)
    names = {t["index"]: t["name"] for t in it.get_tensor_details()}
    producer = {}
    for op in it._get_ops_details():
        for o in op["outputs"]:
            producer[o] = op
    out = it.get_output_details()[0]["index"]
    logits, t = None, out
    while t in producer:
        op = producer[t]
        kind = op["op_name"]
        if kind == "SOFTMAX":
            logits = op["inputs"][0]
        elif kind in _CLASSIFIER_OPS:
            logits = logits if logits is not None else out
            return {"logits": names[logits], "penultimate": names[op["inputs"][0]], "output": names[out]}
        elif kind not in _PASS_THROUGH:
            break
        t = op["inputs"][0]
    # no classifier found: an embedding extractor; its output is the penultimate layer
    return {"logits": names[logits] if logits is not None else None, "penultimate": names[out],
            "output": names[out]}


def _structure_interpreter(path: str):
    """An interpreter without delegates, every tensor preserved: for reading the op graph, not for running."""
    _, OpResolverType = interpreter_class()
    return _open_interpreter(path, experimental_op_resolver_type=OpResolverType.BUILTIN_WITHOUT_DEFAULT_DELEGATES)


class TFLiteBackbone(Backbone):
    """A .tflite file or a bundled model; `preprocess`: explicit settings (resolve_preprocess)."""

    kind = "tflite"
    spec_kinds = ("tflite",)

    def __init__(self, path, layer: str = "penultimate", name: str | None = None,
                 preprocess: Preprocess | Mapping | None = None, threads: int | None = None):
        path = Path(path)
        if not path.is_file():
            raise BackboneError(f"TFLite model {str(path)!r} does not exist")
        self.path = str(path.resolve())
        check_builtin_ops(self.path)  # before any interpreter is built
        inp = _input_details(self.path)
        shape = [int(v) for v in inp["shape"]]
        if len(shape) != 4 or shape[3] != 3:
            raise BackboneError(f"{path}: expects input of shape {shape}; only (N, H, W, 3) images are supported")
        self._in_dtype = np.dtype(inp["dtype"])
        self._in_quant = inp["quantization"]
        # the model's own config: its input size; quantized uint8 models take pixels, float/int8 models "tf"
        own = {"size": (shape[1], shape[2]), "scaling": "raw" if self._in_dtype == np.uint8 else "tf"}
        pre = resolve_preprocess(preprocess, own)
        if tuple(pre.size) != (shape[1], shape[2]):
            raise BackboneError(f"{path} takes {shape[1]}x{shape[2]} images, but "
                                f"{pre.size[0]}x{pre.size[1]} was requested")
        source = {"path": self.path, "sha256": file_sha256(self.path),
                  "input_dtype": self._in_dtype.name, "input_quantization": list(self._in_quant)}
        super().__init__(name or path.name, layer, pre, source, batch_size=32)
        self.threads = threads or usable_cores()  # the cores it may use: under taskset, one thread per core
        self._local = threading.local()
        self._content = None

    @classmethod
    def _matches_name(cls, name: str) -> bool:
        return name in BUNDLED_MODELS or name.lower().endswith(".tflite")

    @classmethod
    def create(cls, name: str, layer: str, options: BuildOptions) -> "TFLiteBackbone":
        path = BUNDLED_MODELS[name].path if name in BUNDLED_MODELS else Path(name)
        return cls(path, layer, name=name, preprocess=options.preprocess)

    @classmethod
    def from_spec(cls, spec: FeatureSpec) -> "TFLiteBackbone":
        if spec.backbone in BUNDLED_MODELS:
            return cls.create(spec.backbone, spec.layer, BuildOptions.from_spec(spec))
        return super().from_spec(spec)

    def _layer_table(self, it=None) -> tuple[dict, list[str]]:
        """Aliases from the op graph (predictions: the model's output, when it ends in a classifier);
        names: every tensor of the model."""
        it = it or _structure_interpreter(self.path)
        found = find_layers(self.path, it)
        aliases = {"logits": found["logits"], "penultimate": found["penultimate"],
                   "predictions": found["output"] if found["logits"] is not None else None}
        return aliases, [t["name"] for t in it.get_tensor_details()]

    def _load(self):
        it = _structure_interpreter(self.path)
        table = self._layer_table(it)
        tensors = [resolve_layer(layer, table, self.path, "tensor") for layer in self.layers]
        output = it.get_output_details()[0]["name"]
        extra = [t for t in tensors if t != output]
        self._content = with_output(self.path, extra, it) if extra else None
        self._input_index = it.get_input_details()[0]["index"]  # the rewritten model's too: only outputs change
        details = {t["name"]: t for t in it.get_tensor_details()}  # indices, shapes, quantization: the same
        dims, self._outputs = [], []
        for tensor in tensors:
            t = details[tensor]
            self._outputs.append((t["index"], t["quantization"]))
            shape = [int(v) for v in t["shape"]]
            dims.append(shape[-1] if len(shape) == 4 else int(np.prod(shape[1:])))
        self._set_layers(tensors, dims)
        self._pool = ThreadPoolExecutor(self.threads, thread_name_prefix="tflite")

    def _interpreter(self, wide: bool = False):
        """This thread's interpreter: single-threaded (many run side by side), or `wide`, using every
        worker thread for one image (a lone image: half the latency on 2 cores, the same outputs)."""
        name = "it_wide" if wide else "it"
        it = getattr(self._local, name, None)
        if it is None:
            it = _open_interpreter(self.path, self._content, num_threads=self.threads if wide else 1)
            setattr(self._local, name, it)
        return it

    def _quantize(self, image: np.ndarray) -> np.ndarray:
        if self._in_dtype == np.uint8:
            return image[None]
        x = normalize(image[None], self.preprocess)
        if self._in_dtype == np.float32:
            return x
        scale, zero = self._in_quant
        info = np.iinfo(self._in_dtype)
        return np.clip(np.round(x / scale + zero), info.min, info.max).astype(self._in_dtype)

    def _invoke(self, image: np.ndarray, wide: bool = False) -> np.ndarray:
        it = self._interpreter(wide)
        it.set_tensor(self._input_index, self._quantize(image))
        it.invoke()
        out = []
        for index, (scale, zero) in self._outputs:
            y = it.get_tensor(index).astype(np.float32)
            if scale:
                y = (y - np.float32(zero)) * np.float32(scale)
            out.append(pool(y))
        return out[0] if len(out) == 1 else np.concatenate(out, axis=1)

    per_image = True  # fixed batch of 1 on most models: one interpreter per thread, fed by the decoders

    def _one(self, image: np.ndarray) -> np.ndarray:
        return self._invoke(image)[0]

    def _forward(self, images):
        if len(images) == 1 and self.threads > 1:  # a lone image (a single request): all threads on it
            return self._invoke(images[0], wide=True)
        return np.concatenate(list(self._pool.map(self._invoke, images)), axis=0)
