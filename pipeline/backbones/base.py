"""The Backbone contract shared by every kind of frozen network.

A Backbone is cheap to create: it knows its preprocessing and which layer it will read.
:meth:`Backbone.load` builds the network (the expensive part) and is called only when
there is an image to featurize. Calling a loaded backbone maps a uint8 RGB batch of shape
(N, H, W, 3) to float32 features (N, D); spatial layers are global-average-pooled.

Test-time augmentation (``tta="flip"``) is done here, once for every kind: the features are
the mean of those of the image and of its horizontal mirror, on the batch path and on the
per-image path alike. It is part of the feature spec, so features made with and without it
never mix.

A backbone may read several layers in one forward pass (``layer="penultimate,logits"``): its
features are then the layers' features side by side (D = the sum of ``dims``), and
:meth:`Backbone.layer_spec` describes each layer as a single-layer backbone would.
"""
from __future__ import annotations

import hashlib
import threading
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any, Mapping

import numpy as np

from ..preprocess import Preprocess
from ..spec import DEFAULT_DECODER, FeatureSpec

_LOAD_LOCK = threading.RLock()
LAYER_ALIASES = ("logits", "penultimate", "predictions")  # predictions: class probabilities (softmax)
TTA_MODES = ("flip",)  # flip: mean of the features of the image and of its horizontal mirror


@lru_cache(maxsize=32)
def _sha256_cached(path: str, size: int, mtime_ns: int) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def file_sha256(path) -> str:
    """sha256 of a file (a model or weights file), cached per (path, size, mtime)."""
    st = Path(path).stat()
    return _sha256_cached(str(Path(path).resolve()), st.st_size, st.st_mtime_ns)


@dataclass(frozen=True)
class BuildOptions:
    """What :func:`pipeline.backbones.create_backbone` hands the kind it picked (each reads what applies).

    preprocess: explicit preprocessing, a complete Preprocess or a mapping of some settings
    (:func:`pipeline.preprocess.resolve_preprocess`); weights, precision and runtime (a KerasRuntime):
    Keras applications; input_tensor: frozen graphs.
    """

    preprocess: Preprocess | Mapping | None = None
    weights: str | None = None
    precision: str | None = None
    input_tensor: str | None = None
    runtime: Any = None

    @classmethod
    def from_spec(cls, spec: FeatureSpec) -> "BuildOptions":
        """The options that rebuild the backbone a feature spec describes."""
        pre = spec.preprocess or {}
        explicit = {k: pre.get(k) for k in ("size", "crop_fraction", "resample", "scaling")}
        return cls(preprocess=explicit, weights=(spec.source or {}).get("weights"), precision=spec.precision)


class Backbone:
    """Base class. Subclasses set the attributes below and implement `_load`, `_forward` and `_layer_table`.

    As a kind of the registry (:data:`pipeline.backbones.KINDS`), a subclass also says which names and
    specs it `matches`, and `create`s itself from a name or (`from_spec`) from a feature spec.
    """

    kind: str = "?"
    spec_kinds: tuple[str, ...] = ()  # the values of FeatureSpec.kind this class makes

    @classmethod
    def matches(cls, what: "str | FeatureSpec") -> bool:
        """True when this kind builds `what`: a --backbone value (name, path, handle) or a feature spec."""
        if isinstance(what, FeatureSpec):
            return what.kind in cls.spec_kinds
        return cls._matches_name(str(what))

    @classmethod
    def _matches_name(cls, name: str) -> bool:  # pragma: no cover - abstract
        raise NotImplementedError

    @classmethod
    def create(cls, name: str, layer: str, options: BuildOptions) -> "Backbone":  # pragma: no cover - abstract
        """The (not yet loaded) backbone `name` reading `layer`."""
        raise NotImplementedError

    @classmethod
    def from_spec(cls, spec: FeatureSpec) -> "Backbone":
        """The backbone that produced features described by `spec`; by default from the model file it records."""
        return cls.create(model_file(spec), spec.layer, BuildOptions.from_spec(spec))

    def __init__(self, name: str, layer: str, preprocess: Preprocess, source: dict,
                 batch_size: int = 32):
        self.name = name
        self.layer = layer or "penultimate"
        self.layers = split_layers(self.layer)
        self.tensors: list[str] = []  # per layer, set by _load (one entry unless several layers)
        self.dims: list[int] = []
        self.preprocess = preprocess
        self.source = source  # where the network comes from: paths, hashes, weights
        self.batch_size = batch_size
        self._auto_batch = False  # True: a kind may pick the batch for the device when it loads (Keras: GPU 256)
        self.tensor: str | None = None  # the resolved layer/tensor name, set by _load
        self.dim: int | None = None
        self.num_classes: int | None = None  # classifier width when the layer is 'logits'
        self._loaded = False
        self.tta: str | None = None  # test-time augmentation: None or one of TTA_MODES
        # the JPEG decoder its features come from: None until a run decides (pillow, or a GPU library for
        # --decode gpu); a backbone rebuilt from a spec keeps the spec's
        self.decoder: str | None = None

    per_image = False  # True: featurize_one() is the fast path (runs in the decoding threads)

    def featurize_one(self, image: np.ndarray) -> np.ndarray:
        """Features (D,) of one decoded uint8 image; thread-safe where ``per_image`` is True."""
        image = self._check(np.asarray(image)[None])[0]
        self.load()
        if self.tta == "flip":
            return (self._one(image) + self._one(np.ascontiguousarray(image[:, ::-1]))) / np.float32(2)
        return self._one(image)

    def _one(self, image: np.ndarray) -> np.ndarray:
        """Features (D,) of one image without augmentation; kinds with a per-image path override it."""
        return self._features(image[None])[0]

    def _features(self, images: np.ndarray) -> np.ndarray:
        return np.asarray(self._forward(images), dtype=np.float32).reshape(len(images), -1)

    @property
    def loaded(self) -> bool:
        """True once the network is built (a fully cached run never builds it)."""
        return self._loaded

    def load(self) -> "Backbone":
        if not self._loaded:
            with _LOAD_LOCK:
                if not self._loaded:
                    self._load()
                    self._loaded = True
        return self

    def _check(self, images: np.ndarray) -> np.ndarray:
        if not _on_device(images):  # a batch decoded on the GPU (--decode gpu) stays there
            images = np.asarray(images)
        h, w = self.preprocess.size
        if images.dtype != np.uint8 or images.ndim != 4 or images.shape[1:] != (h, w, 3):
            raise ValueError(f"{self.name} takes uint8 RGB batches of shape (N, {h}, {w}, 3), "
                             f"got {images.dtype} {images.shape}; decode with pipeline.decode.images.decode")
        return images

    def fix_batch_size(self, n: int) -> None:
        """An explicit batch size: kept when the network is built (no default for the device)."""
        self.batch_size, self._auto_batch = int(n), False

    def __call__(self, images: np.ndarray) -> np.ndarray:
        images = self._check(images)
        self.load()
        if self.tta == "flip":
            mirrored = images[:, :, ::-1] if _on_device(images) else np.ascontiguousarray(images[:, :, ::-1])
            return (self._features(images) + self._features(mirrored)) / np.float32(2)
        return self._features(images)

    def feature_request(self) -> FeatureSpec:
        """What was asked for, known without loading the network (enough to match a cache)."""
        return FeatureSpec(backbone=self.name, kind=self.kind, model=self.source.get("sha256") or self.name,
                           weights=self.source.get("weights_sha256") or self.source.get("weights"),
                           layer=self.layer, preprocess=self.preprocess.to_dict(),
                           precision=getattr(self, "precision", "float32"), tta=self.tta,
                           decoder=self.decoder or DEFAULT_DECODER,
                           source=dict(self.source), extra=self._spec_extra())

    def _spec_extra(self) -> dict:
        """Information recorded in the spec that is not part of its identity (none by default)."""
        return {}

    def feature_spec(self, layer: int | None = None) -> FeatureSpec:
        """The exact description of the features this backbone produces (of layer `layer` alone when given)."""
        self.load()
        if layer is None:
            return self.feature_request().loaded_as(self.tensor, self.dim)
        return self.feature_request().loaded_as(self.tensors[layer], self.dims[layer], self.layers[layer])

    def request(self) -> dict:
        """:meth:`feature_request` as stored (a dict)."""
        return self.feature_request().to_dict()

    def spec(self) -> dict:
        """:meth:`feature_spec` as stored everywhere (a dict)."""
        return self.feature_spec().to_dict()

    def layer_spec(self, i: int) -> dict:
        """The spec of layer i alone: what a single-layer backbone reading it records."""
        return self.feature_spec(i).to_dict()

    def _set_layers(self, tensors: list[str], dims: list[int]) -> None:
        """Record the resolved tensors and widths of every layer; tensor/dim describe them all."""
        self.tensors, self.dims = list(tensors), [int(d) for d in dims]
        self.tensor = tensors[0] if len(tensors) == 1 else ",".join(tensors)
        self.dim = sum(self.dims)
        classes = [d for layer, d in zip(self.layers, self.dims) if layer in ("logits", "predictions")]
        self.num_classes = classes[0] if classes else None

    def has_class_scores(self) -> bool:
        """True when the network ends in a classifier, so it has ``logits`` and ``predictions`` layers (what
        the default featurize pass keeps beside ``penultimate``). Reads the network's structure, not its
        weights; False where the structure cannot tell (loading then says why)."""
        from ..errors import BackboneError

        try:
            return self._layer_table()[0].get("predictions") is not None
        except BackboneError:
            return False

    def list_layers(self) -> list[str]:
        """The layers this backbone can read: the aliases the network has, then every layer or tensor name
        (reads the network's structure; for Keras applications that builds the model)."""
        aliases, names = self._layer_table()
        return [a for a in LAYER_ALIASES if aliases.get(a)] + list(names)

    def _layer_table(self, *network) -> tuple[dict, list[str]]:  # pragma: no cover - abstract
        """({alias: layer or tensor name, None when the network has none}, every readable name)."""
        raise NotImplementedError

    def _load(self):  # pragma: no cover - abstract
        raise NotImplementedError

    def _forward(self, images: np.ndarray) -> np.ndarray:  # pragma: no cover - abstract
        raise NotImplementedError

    def __repr__(self):
        return f"<{type(self).__name__} {self.name} layer={self.layer}>"


def resolve_layer(layer: str, table: tuple[dict, list[str]], where: str, what: str = "layer", key=None) -> str:
    """The layer or tensor name to read for `layer` (an alias or a name): the one rule of every kind.

    table: :meth:`Backbone._layer_table`: what each alias is in this network (None: it has no
    classifier) and every readable name; key: how a name asked for is compared with those (graphs
    compare node names, ``pool:0`` -> ``pool``). Errors say what exists instead.
    """
    from ..errors import BackboneError, UnknownNameError
    from ..hints import did_you_mean

    aliases, names = table
    if layer in LAYER_ALIASES:
        if aliases.get(layer) is None:
            raise BackboneError(f"{where} has no classifier, so no {layer!r} layer; "
                                f"use --layer penultimate or a {what} name")
        return aliases[layer]
    if (key or str)(layer) not in set(names):
        hint = did_you_mean(layer, [*LAYER_ALIASES, *names])
        examples = ", ".join(repr(n) for n in [aliases.get("penultimate"), *list(names)[-4:]] if n)
        raise UnknownNameError(f"{where} has no {what} {layer!r}{hint}; use {', '.join(LAYER_ALIASES)} "
                               f"or a {what} name such as {examples}")
    return layer


def model_file(spec: FeatureSpec) -> str:
    """The model file a feature spec records, refused when it is gone."""
    path = (spec.source or {}).get("path") if isinstance(spec.source, dict) else None
    if not path or not Path(path).exists():
        from ..errors import BackboneError

        raise BackboneError(f"the model file {path!r} that made these features is gone; "
                            f"put it back or featurize with --backbone PATH and pass the features instead")
    return path


def split_layers(layer: str) -> tuple[str, ...]:
    """'penultimate,logits' -> ('penultimate', 'logits'); refuses an empty or repeated name."""
    from ..errors import UsageError

    names = tuple(part.strip() for part in str(layer).split(","))
    if not all(names) or len(set(names)) != len(names):
        raise UsageError(f"--layer {layer!r}: give layer names separated by commas, each once")
    return names


def identity(spec, full: bool = True) -> dict:
    """:meth:`FeatureSpec.identity` of a spec (a FeatureSpec or a dict as stored)."""
    return FeatureSpec.of(spec).identity(full)


def describe(spec) -> str:
    """:meth:`FeatureSpec.describe` of a spec (a FeatureSpec or a dict as stored)."""
    return FeatureSpec.of(spec).describe()


def pool(x: np.ndarray) -> np.ndarray:
    """Global-average-pool a (N, H, W, C) map to (N, C); flatten anything else to (N, -1)."""
    x = np.asarray(x)
    if x.ndim == 4:
        if x.shape[1:3] == (1, 1):  # a 1x1 map (a pooled layer) is its own mean: no reduction per image
            return x.reshape(x.shape[0], x.shape[3])
        return x.mean(axis=(1, 2))
    return x.reshape(len(x), -1)


def padded_call(fn, images: np.ndarray, batch_size: int) -> np.ndarray:
    """fn on a short batch padded to the next power of two (at most `batch_size`), padding dropped.

    The compiled graph then sees at most log2(batch) + 1 batch shapes in a whole run, so nothing
    is re-planned per batch (XLA and GPU kernels are shape-specialised), while one image still
    costs at most as much as two.
    """
    n = len(images)
    target = min(batch_size, 1 << max(0, n - 1).bit_length()) if n else 0
    if n < target:
        pad = np.zeros((target - n, *images.shape[1:]), images.dtype)
        return np.asarray(fn(np.concatenate([images, pad])))[:n]
    return np.asarray(fn(images))


def _on_device(images) -> bool:
    """True for an array on an accelerator (a JAX array from --decode gpu): checked and passed on as it is."""
    return not isinstance(images, np.ndarray) and type(images).__module__.startswith(("jax", "jaxlib"))
