"""The feature spec: the exact description of the features a backbone produces.

Every feature store (``meta.json``), head (the ``.head.npz`` header) and export (Parquet / NPZ)
records one. :class:`FeatureSpec` is its typed form; on disk it stays the JSON object it has
always been (:meth:`FeatureSpec.to_dict` / :meth:`FeatureSpec.from_dict`), so old files load
and new files read the same:

    backbone    the name asked for: a registry name, a model path, ``hub:HANDLE``, or ``imported``
    kind        keras, tflite, graphdef or savedmodel
    model       sha256 of the model file (a registry name for Keras applications)
    weights     "imagenet", "random", a weights file, or its sha256
    layer       the layer asked for (``penultimate``, ``logits``, a tensor name, or several joined by commas)
    preprocess  :meth:`pipeline.preprocess.Preprocess.to_dict`
    precision   float32, bfloat16 or float16 (missing in stores made before it existed: float32)
    tta         test-time augmentation: null or ``flip`` (missing in older stores: null)
    decoder     which JPEG decoder made the pixels: ``pillow`` (the CPU path; not written, so every
                store made before it existed reads as pillow) or a GPU library (``--decode gpu``)
    source      where the network came from: paths, hashes, constructor
    tensor, dim the resolved tensor and feature width D; absent from a *request* (not loaded yet)

Keys this version does not model (``keras_backend``, information only; ``sha256`` of imported
features) are kept in ``extra`` as they are. :meth:`FeatureSpec.identity` is the part that must
agree for features to be interchangeable; :meth:`FeatureSpec.describe` names a spec in errors.
"""
from __future__ import annotations

from dataclasses import MISSING, dataclass, field, fields, replace
from typing import Any, Mapping

IMPORTED = "imported"  # the backbone of features imported from a file that names no network
_REQUEST_KEYS = ("backbone", "kind", "model", "weights", "layer", "preprocess", "precision", "tta", "source")
_LOADED_KEYS = ("tensor", "dim")
DEFAULT_DECODER = "pillow"  # pipeline.decode.images on the CPU; a GPU decoder's name otherwise


@dataclass(frozen=True)
class FeatureSpec:
    """One feature spec. Not hashable (``source`` and ``preprocess`` are dicts); compare with ``==``."""

    backbone: str | None = None
    kind: str | None = None
    model: str | None = None
    weights: str | None = None
    layer: str | None = None
    preprocess: dict | None = None
    precision: str = "float32"
    tta: str | None = None
    decoder: str = DEFAULT_DECODER
    source: Any = field(default_factory=dict)  # a dict; the file name of imported features
    tensor: str | None = None
    dim: int | None = None
    extra: dict = field(default_factory=dict)
    # the keys of the dict this spec was read from, in order: to_dict() gives that dict back exactly
    layout: tuple[str, ...] = field(default=(), compare=False, repr=False)

    # ---- the on-disk form ------------------------------------------------------------------------
    @classmethod
    def from_dict(cls, d: Mapping) -> "FeatureSpec":
        """Read a spec as stored; older dicts may lack newer keys (precision, tta, tensor, dim...)."""
        names = {f.name for f in fields(cls)} - {"extra", "layout"}
        known = {k: v for k, v in d.items() if k in names}  # a missing precision: float32, as before it existed
        extra = {k: v for k, v in d.items() if k not in names}
        return cls(**known, extra=extra, layout=tuple(d))

    @classmethod
    def of(cls, spec: "FeatureSpec | Mapping") -> "FeatureSpec":
        """`spec` as a FeatureSpec (a dict as stored is read with :meth:`from_dict`)."""
        return spec if isinstance(spec, FeatureSpec) else cls.from_dict(spec)

    @classmethod
    def imported(cls, source: str, sha256: str, dim: int) -> "FeatureSpec":
        """The spec of features imported from a file without this project's metadata."""
        return cls(IMPORTED, source=source, dim=dim, extra={"sha256": sha256},
                   layout=("backbone", "source", "sha256", "dim"))

    def to_dict(self) -> dict:
        """The JSON object stored on disk: the dict this spec was read from, or today's layout."""
        values = {f.name: getattr(self, f.name) for f in fields(self) if f.name not in ("extra", "layout")}
        values.update(self.extra)
        if not self.layout:
            layout = _REQUEST_KEYS + (("decoder",) if self.decoder != DEFAULT_DECODER else ()) + tuple(self.extra)
            return {k: _copy(values[k]) for k in layout + (_LOADED_KEYS if self._has_loaded() else ())}
        # a spec read from a dict: its keys as they were, then any other key set since (e.g. with replace())
        later = [f.name for f in fields(self) if f.name in values and f.name not in self.layout
                 and values[f.name] != _default(f)] + [k for k in self.extra if k not in self.layout]
        return {k: _copy(values.get(k)) for k in (*self.layout, *later)}

    def _has_loaded(self) -> bool:
        return self.tensor is not None or self.dim is not None

    # ---- what is known when ----------------------------------------------------------------------
    @property
    def is_imported(self) -> bool:
        return self.backbone == IMPORTED

    @property
    def loaded(self) -> bool:
        """True once the network was loaded: the tensor and D are known."""
        return self.dim is not None

    def request(self) -> "FeatureSpec":
        """This spec without what only loading the network tells (tensor, D): what a run asks for."""
        layout = tuple(k for k in self.layout if k not in _LOADED_KEYS)
        return replace(self, tensor=None, dim=None, layout=layout)

    def loaded_as(self, tensor: str | None, dim: int, layer: str | None = None) -> "FeatureSpec":
        """This request completed with what loading the network told (and one of its layers)."""
        layout = tuple(k for k in self.layout if k not in _LOADED_KEYS) + _LOADED_KEYS if self.layout else ()
        return replace(self, layer=self.layer if layer is None else layer, tensor=tensor, dim=int(dim), layout=layout)

    # ---- comparing and naming ----------------------------------------------------------------------
    def identity(self, full: bool = True) -> dict:
        """The parts that must agree for features to be interchangeable.

        File locations may differ (a model copied elsewhere); contents, weights, layer and
        preprocessing may not. full=False leaves out what is only known after loading the network.
        Features imported from a file without this project's metadata name no network: all that
        can be checked is that they are imported and their width.
        """
        if self.is_imported:
            return {"backbone": IMPORTED, **({"dim": self.dim} if full else {})}
        keys = ("kind", "model", "weights", "layer", "preprocess") + (_LOADED_KEYS if full else ())
        out = {k: getattr(self, k) for k in keys}
        out["precision"], out["tta"], out["decoder"] = self.precision, self.tta, self.decoder
        return out

    def differences(self, other: "FeatureSpec | Mapping", full: bool = True) -> list[str]:
        """The names of the identity parts in which `other` differs from this spec (empty: the same)."""
        mine, theirs = self.identity(full), FeatureSpec.of(other).identity(full)
        diff = [k for k, v in mine.items() if theirs.get(k) != v]
        return diff or [k for k, v in theirs.items() if mine.get(k) != v]

    def describe(self) -> str:
        """One line naming this spec for error messages; what is not known yet (the tensor and D
        before the network was loaded) is left out rather than shown as None."""
        if self.is_imported:
            return f"features imported from {self.source} (D={self.dim})"
        pre = self.preprocess or {}
        size = "x".join(str(v) for v in pre.get("size") or [])
        details = [self.tensor, f"D={self.dim}" if self.dim is not None else None,
                   f"{size} {pre.get('scaling') or ''}".strip() or None,
                   f"crop {pre['crop_fraction']}" if pre.get("crop_fraction") is not None else None,
                   self.precision if self.precision != "float32" else None,
                   f"tta {self.tta}" if self.tta else None,
                   f"decoder {self.decoder}" if self.decoder != DEFAULT_DECODER else None]
        details = [str(d) for d in details if d]
        return (f"{self.backbone or '?'} [{self.kind or '?'}] layer={self.layer or '?'}"
                + (f" ({', '.join(details)})" if details else ""))

    def __str__(self) -> str:
        return self.describe()


def _default(f):
    return f.default_factory() if f.default is MISSING else f.default


def _copy(value):
    """A fresh copy of a JSON value, so a dict handed out never aliases the spec's own."""
    if isinstance(value, dict):
        return {k: _copy(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return type(value)(_copy(v) for v in value)
    return value


__all__ = ["DEFAULT_DECODER", "FeatureSpec", "IMPORTED"]
