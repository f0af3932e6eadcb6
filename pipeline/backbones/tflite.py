"""TFLite flatbuffers (quantized uint8/int8 or float) as backbones.

The model's op graph is read once to find its layers: ``logits`` is the tensor feeding the
final SOFTMAX (or the output when there is none), ``penultimate`` the data input of the last
FULLY_CONNECTED / CONV_2D before it. Intermediate tensors are read through
``experimental_preserve_all_tensors``. Quantized inputs take raw uint8 pixels (that is what the
quantization parameters of ImageNet TFLite models encode); outputs are dequantized.

Models with a fixed batch of 1 run one interpreter per worker thread, so all cores are used.
"""
from __future__ import annotations

import os
import threading
import warnings
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

from ..errors import BackboneError, UnknownNameError
from ..preprocess import Preprocess, normalize
from ..hints import did_you_mean
from ..logs import native_output_quieted
from .base import LAYER_ALIASES, Backbone, file_sha256, pool

_PASS_THROUGH = {"RESHAPE", "SQUEEZE", "DEQUANTIZE", "QUANTIZE", "ADD"}
_CLASSIFIER_OPS = {"FULLY_CONNECTED", "CONV_2D"}


def _interpreter_class():
    try:
        from ai_edge_litert.interpreter import Interpreter, OpResolverType
    except ImportError:  # pragma: no cover - fallback for environments without LiteRT
        import tensorflow as tf

        Interpreter = tf.lite.Interpreter
        OpResolverType = tf.lite.experimental.OpResolverType
    return Interpreter, OpResolverType


def _input_details(path: str) -> dict:
    """The model's input tensor details, from an interpreter without delegates (cheap: nothing is prepared)."""
    Interpreter, OpResolverType = _interpreter_class()
    try:
        it = Interpreter(model_path=path, experimental_op_resolver_type=OpResolverType.BUILTIN_WITHOUT_DEFAULT_DELEGATES)
        return it.get_input_details()[0]
    except (ValueError, RuntimeError) as e:
        raise BackboneError(f"{path} is not a usable TFLite model: {e}") from e


def _open_interpreter(path: str, content: bytes | None = None, **kw):
    """An allocated interpreter; from `content` (a model rewritten to output the layer) when given,
    else from the file with every tensor preserved (how intermediate layers are read without it)."""
    Interpreter, _ = _interpreter_class()
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


def with_output(path: str, tensor: str | list[str]) -> bytes | None:
    """The model with `tensor` (or each of a list) added to its outputs, so reading it needs no
    preserved tensors (5-10% faster inference: BENCHMARKS.md); None when it cannot be rewritten."""
    try:
        from ai_edge_litert.tools import flatbuffer_utils as fb
    except ImportError:  # pragma: no cover
        return None
    try:
        model = fb.read_model_from_bytearray(bytearray(Path(path).read_bytes()))
        graph = model.subgraphs[0]
        names = [t.name.decode("utf-8", "replace") for t in graph.tensors]
        for name in [tensor] if isinstance(tensor, str) else tensor:
            index = names.index(name)
            if index not in list(graph.outputs):
                graph.outputs = np.append(np.asarray(graph.outputs, np.int32), np.int32(index))
        return bytes(fb.convert_object_to_bytearray(model))
    except Exception:  # noqa: BLE001 - fall back to preserving every tensor
        return None


def find_layers(path: str) -> dict:
    """{'logits': name|None, 'penultimate': name|None, 'output': name} from the op graph."""
    _, OpResolverType = _interpreter_class()
    it = _open_interpreter(path, experimental_op_resolver_type=OpResolverType.BUILTIN_WITHOUT_DEFAULT_DELEGATES)
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


class TFLiteBackbone(Backbone):
    kind = "tflite"

    def __init__(self, path, layer: str = "penultimate", name: str | None = None,
                 preprocess: Preprocess | None = None, threads: int | None = None):
        path = Path(path)
        if not path.is_file():
            raise BackboneError(f"TFLite model {str(path)!r} does not exist")
        self.path = str(path.resolve())
        inp = _input_details(self.path)
        shape = [int(v) for v in inp["shape"]]
        if len(shape) != 4 or shape[3] != 3:
            raise BackboneError(f"{path}: expects input of shape {shape}; only (N, H, W, 3) images are supported")
        self._in_dtype = np.dtype(inp["dtype"])
        self._in_quant = inp["quantization"]
        # quantized uint8 models take pixels; float/int8 models take the declared scaling
        default = "raw" if self._in_dtype == np.uint8 else "tf"
        pre = preprocess or Preprocess(size=(shape[1], shape[2]), scaling=default)
        if tuple(pre.size) != (shape[1], shape[2]):
            raise BackboneError(f"{path} takes {shape[1]}x{shape[2]} images, but "
                                f"{pre.size[0]}x{pre.size[1]} was requested")
        source = {"path": self.path, "sha256": file_sha256(self.path),
                  "input_dtype": self._in_dtype.name, "input_quantization": list(self._in_quant)}
        super().__init__(name or path.name, layer, pre, source, batch_size=32)
        self.threads = threads or os.cpu_count() or 1
        self._local = threading.local()
        self._content = None

    def _tensor_name(self, layer: str, layers: dict) -> str:
        if layer not in LAYER_ALIASES:
            return layer
        if layer != "penultimate" and layers["logits"] is None:
            raise BackboneError(f"{self.path} has no classifier, so no {layer!r} layer; use --layer penultimate")
        return layers["output"] if layer == "predictions" else layers[layer]

    def _load(self):
        layers = find_layers(self.path)
        tensors = [self._tensor_name(layer, layers) for layer in self.layers]
        extra = [t for t in tensors if t != layers["output"]]
        self._content = with_output(self.path, extra) if extra else None
        it = self._interpreter()
        details = {t["name"]: t for t in it.get_tensor_details()}
        dims, self._outputs = [], []
        for tensor in tensors:
            if tensor not in details:
                raise UnknownNameError(f"{self.path} has no tensor {tensor!r}"
                                       f"{did_you_mean(tensor, [*LAYER_ALIASES, *details])}; use "
                                       f"{', '.join(LAYER_ALIASES)} or a tensor name such as {layers['penultimate']!r}")
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
        it.set_tensor(it.get_input_details()[0]["index"], self._quantize(image))
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
