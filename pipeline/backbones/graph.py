"""TensorFlow graphs as backbones: frozen TF1 GraphDefs (.pb), TF2 SavedModels and TF-Hub handles.

Every kind becomes one frozen GraphDef (SavedModels are frozen with
``convert_variables_to_constants_v2``) that is imported once with ``wrap_function`` and pruned
to (input tensor -> feature tensor): a compiled TF2 function, not a Session per image. A graph whose ops
reach outside its tensors (files, Python, another graph) is refused before TensorFlow builds or loads it
(:mod:`pipeline.backbones.graph_ops`). Layers: ``logits`` is the input of the final Softmax (or the output
when there is none); ``penultimate`` the data input of the last MatMul/Conv2D before it; any other name is a
tensor name.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Mapping

from ..errors import BackboneError
from ..logs import native_output_quieted
from ..preprocess import Preprocess, normalize, resolve_preprocess
from ..spec import FeatureSpec
from .base import LAYER_ALIASES, Backbone, BuildOptions, file_sha256, padded_call, resolve_layer
from .graph_ops import check_graph_def, check_saved_model


@dataclass(frozen=True)
class GraphPreset:
    """Tensor names and preprocessing of a well-known frozen graph file."""

    input: str
    logits: str
    penultimate: str
    size: int
    scaling: str
    fixed_batch: bool = False


GRAPH_PRESETS: dict[str, GraphPreset] = {
    # Inception v3, 2015 (the "retrain.py" graph): 1008 logits, pool_3 is the 2048-d bottleneck.
    "classify_image_graph_def.pb": GraphPreset("Mul:0", "softmax/logits:0", "pool_3:0", 299,
                                               "inception_graph", fixed_batch=True),
    # Inception v1 / GoogLeNet (the DeepDream graph): 1008 logits, avgpool0 is 1024-d.
    "tensorflow_inception_graph.pb": GraphPreset("input:0", "softmax2_pre_activation:0", "avgpool0:0",
                                                 224, "googlenet_graph"),
}

_PASS_THROUGH = {"Identity", "Reshape", "Squeeze", "BiasAdd", "Add", "AddV2", "Cast"}
_CLASSIFIER_OPS = {"MatMul", "Conv2D"}


_GPU_READY = False


def import_tensorflow():
    """Import TensorFlow once, letting GPU memory grow on demand (TF places ops on the GPU itself)."""
    global _GPU_READY
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    if _GPU_READY:
        import tensorflow as tf

        return tf
    with native_output_quieted():  # CUDA and oneDNN notices on import and device listing (shown with -v)
        import tensorflow as tf

        for gpu in tf.config.list_physical_devices("GPU"):
            try:
                tf.config.experimental.set_memory_growth(gpu, True)
            except RuntimeError:  # already initialized by the caller: keep their settings
                pass
    _GPU_READY = True
    return tf


def _node(name: str) -> str:
    return name.lstrip("^").split(":")[0]


def _tensor(name: str) -> str:
    return name if ":" in name else f"{name}:0"


def find_layers(graph_def, output: str) -> dict:
    """{'logits': tensor|None, 'penultimate': tensor|None} by walking back from `output`."""
    nodes = {n.name: n for n in graph_def.node}
    logits, name = None, _node(output)
    while name in nodes:
        n = nodes[name]
        if n.op == "Softmax":
            logits = _tensor(n.input[0])
        elif n.op in _CLASSIFIER_OPS:
            return {"logits": logits or _tensor(output), "penultimate": _tensor(n.input[0])}
        elif n.op not in _PASS_THROUGH:
            break
        if not n.input:
            break
        name = _node(n.input[0])
    return {"logits": logits, "penultimate": None if logits else _tensor(output)}


def _placeholders(graph_def) -> list[str]:
    return [_tensor(n.name) for n in graph_def.node if n.op == "Placeholder"]


def _sinks(graph_def) -> list[str]:
    """Tensors nothing else consumes: the graph's outputs."""
    used = {_node(i) for n in graph_def.node for i in n.input}
    return [_tensor(n.name) for n in graph_def.node
            if n.name not in used and n.op not in ("Const", "NoOp", "Placeholder", "Assert")]


def _read_graph_def(path: Path):
    tf = import_tensorflow()
    gd = tf.compat.v1.GraphDef()
    try:
        gd.ParseFromString(path.read_bytes())
    except Exception as e:  # protobuf DecodeError
        raise BackboneError(f"{path} is not a frozen TensorFlow GraphDef: {e}") from e
    return gd


def _freeze_saved_model(path: Path):
    """(graph_def, input tensor, output tensor) of a SavedModel's serving signature."""
    tf = import_tensorflow()
    from tensorflow.python.framework.convert_to_constants import convert_variables_to_constants_v2

    try:
        loaded = tf.saved_model.load(str(path))
    except Exception as e:
        raise BackboneError(f"could not load the SavedModel in {path}: {e}") from e
    sigs = dict(loaded.signatures)
    if not sigs:
        raise BackboneError(f"SavedModel {path} has no signatures to call; export it with a serving signature")
    fn = sigs.get("serving_default") or sigs.get("serve") or next(iter(sigs.values()))
    frozen = convert_variables_to_constants_v2(fn)
    inputs = [t for t in frozen.inputs if t.dtype != tf.resource]
    if len(inputs) != 1 or len(frozen.outputs) < 1:
        raise BackboneError(f"SavedModel {path}: expected one image input, found {len(inputs)} inputs")
    return frozen.graph.as_graph_def(), inputs[0].name, frozen.outputs[0].name


class GraphBackbone(Backbone):
    """A frozen GraphDef file, a SavedModel directory, or ``hub:HANDLE``."""

    spec_kinds = ("graphdef", "savedmodel")  # an instance's kind is one of them

    def __init__(self, spec: str, layer: str = "penultimate", preprocess: Preprocess | Mapping | None = None,
                 input_tensor: str | None = None, batch_size: int = 32):
        self.kind, path, source = self._locate(spec)
        self.path = path
        self.preset = GRAPH_PRESETS.get(path.name) if self.kind == "graphdef" else None
        self.input_tensor = input_tensor or (self.preset.input if self.preset else None)
        # the graph's own config: its preset, else the TF-Hub image convention, float [0, 1], 224x224
        own = ({"size": self.preset.size, "scaling": self.preset.scaling} if self.preset
               else {"size": 224, "scaling": "unit"})
        super().__init__(spec, layer, resolve_preprocess(preprocess, own), source, batch_size)

    @classmethod
    def _matches_name(cls, name: str) -> bool:
        return name.startswith("hub:") or Path(name).is_dir() or name.lower().endswith(".pb")

    @classmethod
    def create(cls, name: str, layer: str, options: BuildOptions) -> "GraphBackbone":
        return cls(name, layer, options.preprocess, input_tensor=options.input_tensor)

    @classmethod
    def from_spec(cls, spec: FeatureSpec) -> "GraphBackbone":
        if spec.backbone.startswith("hub:"):
            return cls.create(spec.backbone, spec.layer, BuildOptions.from_spec(spec))
        return super().from_spec(spec)

    @staticmethod
    def _locate(spec: str):
        if spec.startswith("hub:"):
            handle = spec[4:]
            try:
                import tensorflow_hub as hub

                path = Path(hub.resolve(handle))
            except Exception as e:
                raise BackboneError(f"could not fetch TF-Hub model {handle!r} ({type(e).__name__}: {e}); "
                                    f"offline, download it elsewhere and pass the SavedModel folder") from e
            return "savedmodel", path, {"handle": handle, "path": str(path), "sha256": _dir_sha(path)}
        path = Path(spec)
        if path.is_dir():
            if not (path / "saved_model.pb").is_file():
                raise BackboneError(f"{spec} is a folder without saved_model.pb; a SavedModel folder is expected")
            return "savedmodel", path.resolve(), {"path": str(path.resolve()), "sha256": _dir_sha(path)}
        if path.is_file():
            return "graphdef", path.resolve(), {"path": str(path.resolve()), "sha256": file_sha256(path)}
        raise BackboneError(f"model {spec!r} does not exist")

    def _graph(self):
        if self.kind == "savedmodel":
            # before TensorFlow loads it; a TF-Hub model named by its handle, and the folder it was cached in
            check_saved_model(self.path, f"{self.name} ({self.path})" if self.name.startswith("hub:") else None)
            return _freeze_saved_model(self.path)
        gd = _read_graph_def(self.path)
        check_graph_def(gd, self.path)
        inp = self.input_tensor
        if inp is None:
            ph = _placeholders(gd)
            if len(ph) != 1:
                raise BackboneError(f"{self.path}: cannot tell the image input among placeholders {ph}; "
                                    f"pass --input-tensor NAME")
            inp = ph[0]
        sinks = _sinks(gd)
        return gd, _tensor(inp), sinks[0] if len(sinks) == 1 else None

    def has_class_scores(self) -> bool:
        return bool(self.preset.logits) if self.preset else super().has_class_scores()

    def _layer_table(self, gd=None, output=None) -> tuple[dict, list[str]]:
        """Aliases: the preset's tensors, else found by walking back from the output (predictions: the
        softmax of the logits, applied in forward); names: every node of the graph."""
        if gd is None:
            gd, _, output = self._graph()
        if self.preset:
            found = {"logits": self.preset.logits, "penultimate": self.preset.penultimate}
        else:
            found = find_layers(gd, output) if output is not None else {"logits": None, "penultimate": None}
        return {**found, "predictions": found["logits"]}, [n.name for n in gd.node]

    def _tensors(self, gd, output) -> list[str]:
        """The tensor each requested layer reads."""
        if output is None and not self.preset and any(layer in LAYER_ALIASES for layer in self.layers):
            raise BackboneError(f"{self.path}: cannot tell the output among {_sinks(gd)[:5]}; "
                                f"pass --layer TENSOR (e.g. the pooled features feeding the classifier)")
        table = self._layer_table(gd, output)
        return [_tensor(resolve_layer(layer, table, str(self.path), "tensor", key=_node)) for layer in self.layers]

    def _load(self):
        tf = import_tensorflow()
        gd, inp, output = self._graph()
        tensors = self._tensors(gd, output)
        wrapped = tf.compat.v1.wrap_function(lambda: tf.compat.v1.import_graph_def(gd, name=""), [])
        try:  # every layer's tensor from one pass through the graph
            pruned = wrapped.prune(wrapped.graph.get_tensor_by_name(inp),
                                   [wrapped.graph.get_tensor_by_name(t) for t in tensors])
        except (KeyError, ValueError) as e:
            raise BackboneError(f"{self.path}: cannot read tensor(s) {', '.join(tensors)} from input {inp!r}: {e}") from e
        h, w = self.preprocess.size
        pre = self.preprocess
        fixed = bool(self.preset and self.preset.fixed_batch)
        softmax = [layer == "predictions" for layer in self.layers]

        def flat(y, n, soft):
            if len(y.shape) == 4:
                y = tf.reduce_mean(y, axis=[1, 2])
            y = tf.reshape(y, [n, -1])
            return tf.nn.softmax(y) if soft else y

        def one(im):
            return [y[0] for y in pruned(im[None])]

        @tf.function(input_signature=[tf.TensorSpec([None, h, w, 3], tf.uint8)])
        def forward(images):
            x = normalize(images, pre)
            ys = tf.map_fn(one, x, fn_output_signature=[tf.float32] * len(tensors)) if fixed else pruned(x)
            return [flat(y, tf.shape(x)[0], soft) for y, soft in zip(ys, softmax)]

        self._fn = lambda images: tf.concat(forward(images), axis=1) if len(tensors) > 1 else forward(images)[0]
        self._set_layers(tensors, [int(y.shape[-1]) for y in forward(tf.zeros([1, h, w, 3], tf.uint8))])

    def _forward(self, images):
        if self.preset and self.preset.fixed_batch:  # one image per call inside the graph: padding costs
            return self._fn(images).numpy()
        return padded_call(self._fn, images, self.batch_size)


def _dir_sha(path: Path) -> str:
    import hashlib

    h = hashlib.sha256()
    for f in sorted(p for p in Path(path).rglob("*") if p.is_file()):
        h.update(f.relative_to(path).as_posix().encode())
        h.update(file_sha256(f).encode())
    return h.hexdigest()
