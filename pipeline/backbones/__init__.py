"""The backbone registry: a name, a file or a TF-Hub handle -> a :class:`Backbone`.

SPEC is one of
  * a registry name (``pipeline backbones`` lists them): Keras applications and the bundled
    quantized MobileNetV2 ``mobilenet_v2_quant``;
  * a path to a ``.tflite`` flatbuffer, a frozen ``.pb`` GraphDef, or a SavedModel folder;
  * ``hub:HANDLE`` for a TF-Hub model.

Precedence for preprocessing: explicit overrides > the backbone's own config.
"""
from __future__ import annotations

from pathlib import Path

from ..errors import BackboneError, UnknownNameError, UsageError
from ..hints import did_you_mean
from ..preprocess import Preprocess
from .base import TTA_MODES, Backbone, describe, identity
from .graph import GRAPH_PRESETS, GraphBackbone
from .keras_apps import KERAS_APPS, KerasBackbone, KerasRuntime
from .tflite import TFLiteBackbone

DATA_DIR = Path(__file__).resolve().parent.parent / "data"
BUNDLED = {
    "mobilenet_v2_quant": DATA_DIR / "mobilenet_v2_1.0_224_quant.tflite",
}
DEFAULT_BACKBONE = "mobilenet_v2_quant"

__all__ = ["Backbone", "create_backbone", "backbone_from_spec", "list_backbones", "identity", "describe",
           "DEFAULT_BACKBONE"]


def _overrides(base: Preprocess, input_size=None, scaling=None, crop_fraction=None, resample=None):
    size = (int(input_size),) * 2 if isinstance(input_size, (int, str)) else input_size
    return base.replace(size=size, scaling=scaling, crop_fraction=crop_fraction, resample=resample)


def create_backbone(spec: str = DEFAULT_BACKBONE, layer: str = "penultimate", weights: str | None = None,
                    *, input_size=None, scaling=None, crop_fraction=None, resample=None,
                    input_tensor=None, batch_size: int | None = None, precision: str | None = None,
                    tta: str | None = None, keras_backend: str | None = None,
                    jit_compile: bool = False) -> Backbone:
    """Resolve SPEC to a (not yet loaded) backbone reading `layer`.

    precision: float32 (default), bfloat16 or float16 compute for Keras applications.
    tta: "flip" averages the features of each image and of its horizontal mirror (any kind).
    keras_backend: tensorflow, jax or torch for Keras applications (default: $KERAS_BACKEND, else
    tensorflow); jit_compile: XLA-compile the TensorFlow function.
    """
    if tta not in (None, *TTA_MODES):
        raise UsageError(f"unknown test-time augmentation {tta!r}; choose one of {', '.join(TTA_MODES)}")
    spec = str(spec)
    if batch_size is not None and int(batch_size) < 1:
        raise UsageError(f"batch_size must be an integer >= 1, got {batch_size!r}")
    pre_kw = dict(input_size=input_size, scaling=scaling, crop_fraction=crop_fraction, resample=resample)
    if weights and weights != "imagenet" and spec not in KERAS_APPS:
        raise UsageError(f"--weights applies to Keras applications ({', '.join(KERAS_APPS)}), not to {spec!r}")
    if precision not in (None, "float32") and spec not in KERAS_APPS:
        raise UsageError(f"--precision {precision} applies to Keras applications ({', '.join(KERAS_APPS)}), "
                         f"not to {spec!r}")
    if (keras_backend or jit_compile) and spec not in KERAS_APPS:
        raise UsageError(f"--keras-backend and --jit-compile apply to Keras applications ({', '.join(KERAS_APPS)}), "
                         f"not to {spec!r}")
    if spec in KERAS_APPS:
        app = KERAS_APPS[spec]
        pre = _overrides(Preprocess(size=(app.size, app.size), scaling=app.scaling), **pre_kw)
        bb = KerasBackbone(spec, layer, weights, pre, batch_size, precision=precision or "float32",
                           runtime=KerasRuntime(keras_backend, jit_compile))
    elif spec in BUNDLED:
        bb = _tflite(BUNDLED[spec], layer, spec, pre_kw)
    elif spec.lower().endswith(".tflite"):
        bb = _tflite(Path(spec), layer, spec, pre_kw)
    elif spec.startswith("hub:") or Path(spec).is_dir() or spec.lower().endswith(".pb"):
        bb = GraphBackbone(spec, layer, input_tensor=input_tensor)
        bb.preprocess = _overrides(bb.preprocess, **pre_kw)
    else:
        raise UnknownNameError(f"unknown backbone {spec!r}{did_you_mean(spec, names())}: give a registry name "
                               f"({', '.join(sorted(names()))}), a .tflite/.pb file, a SavedModel folder, "
                               f"or hub:HANDLE")
    if batch_size:
        bb.batch_size = int(batch_size)
    bb.tta = tta
    return bb


def _tflite(path: Path, layer, name, pre_kw):
    probe = TFLiteBackbone(path, layer, name=name)
    if any(v is not None for v in pre_kw.values()):
        return TFLiteBackbone(path, layer, name=name, preprocess=_overrides(probe.preprocess, **pre_kw))
    return probe


def backbone_from_spec(spec: dict) -> Backbone:
    """Rebuild the backbone that produced features described by `spec` (as stored in a head)."""
    if spec.get("backbone") == "imported":  # features made elsewhere: no network to rebuild
        raise UsageError(f"this head was trained on features imported from {spec.get('source')}; "
                         f"score a feature store of the same kind")
    pre = spec["preprocess"]
    src = spec.get("source", {})
    kw = dict(input_size=tuple(pre["size"]), scaling=pre["scaling"], crop_fraction=pre["crop_fraction"],
              resample=pre["resample"], tta=spec.get("tta"))
    name = spec["backbone"]
    if spec["kind"] == "keras":
        return create_backbone(name, spec["layer"], src.get("weights"), precision=spec.get("precision"), **kw)
    if name in BUNDLED or name.startswith("hub:"):
        return create_backbone(name, spec["layer"], **kw)
    path = src.get("path")
    if not path or not Path(path).exists():
        raise BackboneError(f"the model file {path!r} that made these features is gone; "
                            f"put it back or featurize with --backbone PATH and pass the features instead")
    return create_backbone(path, spec["layer"], **kw)


def names() -> list[str]:
    return sorted(KERAS_APPS) + sorted(BUNDLED)


def list_backbones() -> list[dict]:
    """One row per registry entry: name, kind, input size, scaling, weights."""
    rows = [{"name": n, "kind": "keras", "input_size": a.size, "scaling": a.scaling,
             "weights": "imagenet (downloaded by Keras) or --weights FILE"} for n, a in sorted(KERAS_APPS.items())]
    rows += [{"name": n, "kind": "tflite", "input_size": 224, "scaling": "raw (uint8)",
              "weights": f"bundled ({p.name})"} for n, p in BUNDLED.items()]
    rows += [{"name": f"PATH/{n}", "kind": "graphdef", "input_size": p.size, "scaling": p.scaling,
              "weights": "frozen in the file"} for n, p in GRAPH_PRESETS.items()]
    return rows
