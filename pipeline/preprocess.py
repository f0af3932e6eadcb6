"""How pixels become network input: one `Preprocess` record per backbone.

A backbone's preprocessing is part of the model. It is split in two halves that run in
different places but are described together here:

* geometry (input size, centre crop, resampling) runs on the CPU while decoding, in
  :mod:`pipeline.decode.images`, and yields a ``uint8`` RGB image of exactly ``size``;
* pixel scaling (colour order, scale, mean, std) runs inside the backbone's compiled
  forward function, via :func:`normalize`.

Scalings are named after the Keras ``preprocess_input`` modes they reproduce.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Mapping

import numpy as np

from .errors import UsageError

# name -> (channel order, scale, mean, std); applied as (x[..., order] * scale - mean) / std
SCALINGS: dict[str, tuple[str, float, tuple[float, ...], tuple[float, ...]]] = {
    # Keras "caffe" (VGG, ResNet50): RGB -> BGR, zero-centre by the ImageNet mean, no scaling.
    "caffe": ("BGR", 1.0, (103.939, 116.779, 123.68), (1.0, 1.0, 1.0)),
    # Keras "tf" (Inception, Xception, MobileNet): [0, 255] -> [-1, 1].
    "tf": ("RGB", 1.0 / 127.5, (1.0, 1.0, 1.0), (1.0, 1.0, 1.0)),
    # Keras "torch" (DenseNet): [0, 1] then ImageNet mean/std.
    "torch": ("RGB", 1.0 / 255.0, (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)),
    # TF-Hub image modules: [0, 1].
    "unit": ("RGB", 1.0 / 255.0, (0.0, 0.0, 0.0), (1.0, 1.0, 1.0)),
    # The network normalizes inside (EfficientNet) or takes raw pixels (quantized TFLite).
    "raw": ("RGB", 1.0, (0.0, 0.0, 0.0), (1.0, 1.0, 1.0)),
    # Frozen Inception v3 (classify_image_graph_def.pb, tensor Mul:0): (x - 128) / 128.
    "inception_graph": ("RGB", 1.0 / 128.0, (1.0, 1.0, 1.0), (1.0, 1.0, 1.0)),
    # Frozen GoogLeNet (tensorflow_inception_graph.pb, tensor input:0): x - 117.
    "googlenet_graph": ("RGB", 1.0, (117.0, 117.0, 117.0), (1.0, 1.0, 1.0)),
}

RESAMPLING = ("bilinear", "bicubic", "nearest", "lanczos")


@dataclass(frozen=True)
class Preprocess:
    """Everything between an image file and the network's input tensor.

    size: (height, width) the network takes.
    crop_fraction: the centre crop keeps this fraction of the largest box of the target's
        aspect ratio that fits the image (1.0: a centre square for square inputs; 0.875:
        the classic "resize to 256, crop 224").
    resample: Pillow resampling filter used for the (antialiased) resize.
    scaling: a key of :data:`SCALINGS`.
    """

    size: tuple[int, int] = (224, 224)
    crop_fraction: float = 1.0
    resample: str = "bilinear"
    scaling: str = "tf"
    channel_order: str = field(init=False)
    scale: float = field(init=False)
    mean: tuple[float, ...] = field(init=False)
    std: tuple[float, ...] = field(init=False)

    def __post_init__(self):
        if self.scaling not in SCALINGS:
            raise UsageError(f"unknown scaling {self.scaling!r}; choose one of {', '.join(SCALINGS)}")
        if self.resample not in RESAMPLING:
            raise UsageError(f"unknown resampling {self.resample!r}; choose one of {', '.join(RESAMPLING)}")
        if not 0.0 < float(self.crop_fraction) <= 1.0:
            raise UsageError(f"crop_fraction must be in (0, 1], got {self.crop_fraction!r}")
        h, w = (int(v) for v in self.size)
        if h < 8 or w < 8:
            raise UsageError(f"input size must be at least 8x8 pixels, got {self.size!r}")
        order, scale, mean, std = SCALINGS[self.scaling]
        object.__setattr__(self, "size", (h, w))
        object.__setattr__(self, "crop_fraction", float(self.crop_fraction))
        object.__setattr__(self, "channel_order", order)
        object.__setattr__(self, "scale", float(scale))
        object.__setattr__(self, "mean", tuple(float(m) for m in mean))
        object.__setattr__(self, "std", tuple(float(s) for s in std))

    def to_dict(self) -> dict:
        d = asdict(self)
        d["size"] = list(self.size)
        d["mean"], d["std"] = list(self.mean), list(self.std)
        return d

    @classmethod
    def from_dict(cls, d: dict) -> "Preprocess":
        return cls(size=tuple(d["size"]), crop_fraction=d["crop_fraction"],
                   resample=d["resample"], scaling=d["scaling"])

    def replace(self, **changes) -> "Preprocess":
        """A copy with some of size / crop_fraction / resample / scaling changed (None keeps)."""
        kw = dict(size=self.size, crop_fraction=self.crop_fraction,
                  resample=self.resample, scaling=self.scaling)
        kw.update({k: v for k, v in changes.items() if v is not None})
        return Preprocess(**kw)


PREPROCESS_SETTINGS = ("size", "crop_fraction", "resample", "scaling")  # what a caller or a backbone may set


def resolve_preprocess(explicit: "Preprocess | Mapping | None" = None, own: Mapping | None = None) -> Preprocess:
    """The one precedence rule for preprocessing: explicit argument > the backbone's own config > library default.

    explicit: what the caller asked for: a complete :class:`Preprocess` (wins as a whole) or a mapping of
    some of size / crop_fraction / resample / scaling (``input_size`` is read as size; an int is a square);
    None values never override. own: the same keys from the backbone's own config (a Keras application's
    row, a graph preset, a TFLite model's input). Whatever neither sets is :class:`Preprocess`'s default.
    """
    if isinstance(explicit, Preprocess):
        return explicit
    settings: dict = {}
    for layer in (own or {}, explicit or {}):
        settings.update({k: v for k, v in _settings(layer).items() if v is not None})
    return Preprocess(**settings)


def _settings(values: Mapping) -> dict:
    values = dict(values)
    if "input_size" in values:
        values["size"] = values.pop("input_size")
    unknown = set(values) - set(PREPROCESS_SETTINGS)
    if unknown:
        raise UsageError(f"unknown preprocessing setting(s) {', '.join(sorted(unknown))}; "
                         f"choose from {', '.join(PREPROCESS_SETTINGS)}")
    size = values.get("size")
    if isinstance(size, (int, str)):
        values["size"] = (int(size),) * 2
    return values


def normalize(images, pre: Preprocess):
    """uint8 (N, H, W, 3) RGB -> float32 network input. Works on numpy arrays and tf tensors."""
    if hasattr(images, "dtype") and isinstance(images, np.ndarray):
        x = images.astype(np.float32)
    else:  # a tf.Tensor inside a tf.function
        import tensorflow as tf

        x = tf.cast(images, tf.float32)
    if pre.channel_order == "BGR":
        x = x[..., ::-1]
    mean = np.asarray(pre.mean, np.float32)
    std = np.asarray(pre.std, np.float32)
    x = x * np.float32(pre.scale) - mean
    if np.any(std != 1.0):
        x = x / std
    return x
