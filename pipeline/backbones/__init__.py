"""The backbone registry: a name, a file or a TF-Hub handle -> a :class:`Backbone`.

SPEC is one of
  * a registry name (``pipeline backbones`` lists them): Keras applications and the bundled
    quantized MobileNetV2 ``mobilenet_v2_quant``;
  * a path to a ``.tflite`` flatbuffer, a frozen ``.pb`` GraphDef, or a SavedModel folder;
  * ``hub:HANDLE`` for a TF-Hub model.

:data:`KINDS` holds one class per kind of network; each says whether it ``matches`` a name or a
feature spec, ``create``s itself from a name (``from_spec`` from a feature spec) and lists its
layers (``list_layers``; aliases and names resolve through ``base.resolve_layer``). The feature
widths of the registry's named models are declared with them (:func:`known_widths`).

Preprocessing: explicit arguments > the backbone's own config > library default, resolved by
:func:`pipeline.preprocess.resolve_preprocess` inside each kind.
"""
from __future__ import annotations

from ..errors import BackboneError, UnknownNameError, UsageError
from ..hints import did_you_mean
from ..spec import FeatureSpec
from .base import TTA_MODES, Backbone, BuildOptions, describe, identity, model_file
from .graph import GRAPH_PRESETS, GraphBackbone
from .keras_apps import KERAS_APPS, KerasBackbone, KerasRuntime
from .tflite import BUNDLED_MODELS, DATA_DIR, TFLiteBackbone  # noqa: F401 - DATA_DIR: public

KINDS: dict[str, type[Backbone]] = {"keras": KerasBackbone, "tflite": TFLiteBackbone, "graph": GraphBackbone}
BUNDLED = {name: m.path for name, m in BUNDLED_MODELS.items()}
DEFAULT_BACKBONE = "mobilenet_v2_quant"

__all__ = ["Backbone", "create_backbone", "backbone_from_spec", "list_backbones", "identity", "describe",
           "DEFAULT_BACKBONE", "KINDS", "FeatureSpec", "known_widths"]


def kind_of(what: str | FeatureSpec) -> type[Backbone] | None:
    """The registry's kind that builds `what` (a --backbone value or a feature spec); None if none does."""
    return next((kind for kind in KINDS.values() if kind.matches(what)), None)


def _check_tta(tta: str | None) -> None:
    if tta not in (None, *TTA_MODES):
        raise UsageError(f"unknown test-time augmentation {tta!r}; choose one of {', '.join(TTA_MODES)}")


def _check_options(spec: str, kind, weights, precision, keras_backend, jit_compile) -> None:
    """Options that only Keras applications take, refused for any other backbone."""
    if kind is KerasBackbone:
        return
    apps = ", ".join(KERAS_APPS)
    if weights and weights != "imagenet":
        raise UsageError(f"--weights applies to Keras applications ({apps}), not to {spec!r}")
    if precision not in (None, "float32"):
        raise UsageError(f"--precision {precision} applies to Keras applications ({apps}), not to {spec!r}")
    if keras_backend or jit_compile:
        raise UsageError(f"--keras-backend and --jit-compile apply to Keras applications ({apps}), not to {spec!r}")


def create_backbone(spec: str = DEFAULT_BACKBONE, layer: str = "penultimate", weights: str | None = None,
                    **options) -> Backbone:
    """Resolve SPEC to a (not yet loaded) backbone reading `layer`.

    `options`: any field of :class:`pipeline.options.BackboneOptions` -- input_size / scaling /
    crop_fraction / resample (explicit preprocessing; None: the backbone's own), input_tensor,
    batch_size, precision (float32, bfloat16 or float16 for Keras applications), tta ("flip"
    averages the features of each image and of its mirror), keras_backend (tensorflow, jax or torch;
    default: $KERAS_BACKEND, else tensorflow) and jit_compile (XLA on TensorFlow).
    """
    from ..options import BackboneOptions

    return build_backbone(BackboneOptions(backbone=str(spec), layer=layer, weights=weights, **options))


def build_backbone(o, layer: str | None = None) -> Backbone:
    """The backbone a :class:`pipeline.options.BackboneOptions` describes, reading `layer` (default o.layer,
    and penultimate where that is None: featurize's default pass is pipeline.featurizer.layers.default_pass)."""
    _check_tta(o.tta)
    spec = str(o.backbone)
    kind = kind_of(spec)
    _check_options(spec, kind, o.weights, o.precision, o.keras_backend, o.jit_compile)
    if kind is None:
        raise UnknownNameError(f"unknown backbone {spec!r}{did_you_mean(spec, names())}: give a registry name "
                               f"({', '.join(sorted(names()))}), a .tflite/.pb file, a SavedModel folder, "
                               f"or hub:HANDLE")
    explicit = dict(input_size=o.input_size, scaling=o.scaling, crop_fraction=o.crop_fraction, resample=o.resample)
    options = BuildOptions(preprocess=explicit, weights=o.weights, precision=o.precision,
                           input_tensor=o.input_tensor, runtime=KerasRuntime(o.keras_backend, o.jit_compile))
    bb = kind.create(spec, layer or o.layer or "penultimate", options)
    if o.batch_size:
        bb.fix_batch_size(o.batch_size)
    bb.tta = o.tta
    return bb


def backbone_from_spec(spec: FeatureSpec | dict) -> Backbone:
    """Rebuild the backbone that produced features described by `spec` (as stored in a head)."""
    spec = FeatureSpec.of(spec)
    if spec.is_imported:  # features made elsewhere: no network to rebuild
        raise UsageError(f"this head was trained on features imported from {spec.source}; "
                         f"score a feature store of the same kind")
    _check_tta(spec.tta)
    kind = kind_of(spec) or kind_of(model_file(spec))  # a kind this version does not name: by its model file
    if kind is None:
        raise BackboneError(f"cannot rebuild a {spec.kind!r} backbone from {model_file(spec)}; featurize with "
                            f"--backbone PATH and pass the features instead")
    bb = kind.from_spec(spec)
    bb.tta, bb.decoder = spec.tta, spec.decoder  # scoring decodes as the head's features were
    return bb


def names() -> list[str]:
    return sorted(KERAS_APPS) + sorted(BUNDLED_MODELS)


def known_widths() -> dict[str, dict[str, int]]:
    """{registry name: {'penultimate': D, 'logits': classes}} as declared with each named model."""
    out = {n: {"penultimate": a.dim, "logits": a.classes} for n, a in KERAS_APPS.items() if a.dim}
    out.update({n: {"penultimate": m.dim, "logits": m.classes} for n, m in BUNDLED_MODELS.items()})
    return out


def list_backbones() -> list[dict]:
    """One row per registry entry: name, kind, input size, scaling, weights, D (penultimate width)."""
    rows = [{"name": n, "kind": "keras", "input_size": a.size, "scaling": a.scaling,
             "weights": "imagenet (downloaded by Keras) or --weights FILE", "dim": a.dim}
            for n, a in sorted(KERAS_APPS.items())]
    rows += [{"name": n, "kind": "tflite", "input_size": 224, "scaling": "raw (uint8)",
              "weights": f"bundled ({m.file})", "dim": m.dim} for n, m in BUNDLED_MODELS.items()]
    rows += [{"name": f"PATH/{n}", "kind": "graphdef", "input_size": p.size, "scaling": p.scaling,
              "weights": "frozen in the file", "dim": None} for n, p in GRAPH_PRESETS.items()]
    return rows
