"""What ``serve`` runs: decoded uint8 pixels -> class probabilities, from a head file or an export.

A predictor has ``classes`` (column names), ``preprocess`` (how :mod:`pipeline.decode.inputs` decodes a
request's images for it, exactly as featurize would), ``batch_size``, ``predict_pixels(pixels)``
((N, h, w, 3) uint8 -> (N, n_classes) float, columns in ``classes`` order, then any columns of its own) and
``describe()`` (what ``GET /model`` shows); optionally ``answer_fields(row)``: the fields of an answer beyond
the prediction and probabilities, from one row of ``predict_pixels`` (a head's ``ood_distance`` and ``ood``). :func:`load_predictor` picks one by what the path is:

* :class:`HeadPredictor`: a ``.head.npz`` head (:class:`~pipeline.heads.classifier.Classifier`) over its
  own backbone;
* :class:`SavedModelPredictor`: a SavedModel folder written by ``python -m pipeline export``, run
  through its ``serving_default`` signature after ``tf.saved_model.load``;
* :class:`TFLitePredictor`: a ``.tflite`` file written by ``export --format tflite``.

An export is loaded without pickle and without Python code from the file, but a SavedModel is a
TensorFlow graph whose ops run on every request: it is served only when every op of its graph and of
every function of its library is on the allow-list of pure tensor ops that ``export`` emits
(:mod:`pipeline.export.allowed_ops`), checked on ``saved_model.pb`` before TensorFlow loads it. A
``.tflite`` is served only with LiteRT's built-in operators (no custom or Flex op), checked on the
flatbuffer before the interpreter is built. ``trust_model=True`` (``serve --trust-model``) skips both
checks, for models whose origin you trust.
"""
from __future__ import annotations

import logging
from pathlib import Path

import numpy as np

from ..errors import ModelFileError, UsageError
from ..export.allowed_ops import check_saved_model_ops
from ..export.info import read_saved_model_info, read_tflite_info, without_paths
from ..heads.ood import MISSING, check_reject_ood
from ..machine import usable_cores

log = logging.getLogger(__name__)
REJECTED = "unknown"  # the prediction of a flagged image under reject_ood, as score writes it

__all__ = ["HeadPredictor", "SavedModelPredictor", "TFLitePredictor", "check_saved_model_ops", "load_predictor"]


def load_predictor(path, trusted: bool = False, reject_ood: bool = False, trust_model: bool = False):
    """The predictor for `path`: an exported SavedModel folder, an exported .tflite, else a head file.
    `trusted`: also load an old pickle head; `reject_ood`: answer ``unknown`` for the images a head flags
    out-of-distribution (head files only); `trust_model`: serve an export whose ops are not all on the
    allow-list (SavedModel) or not all built-in (TFLite): only for models you trust."""
    path = Path(path)
    if reject_ood and (path.is_dir() or (path.is_file() and _is_tflite(path))):
        raise UsageError(f"{path} is an export: exports carry no out-of-distribution summary, so reject_ood cannot "
                         f"apply; serve the head file (.head.npz) instead")
    if path.is_dir():
        if not (path / "saved_model.pb").is_file():
            raise ModelFileError(f"{path} is a folder but not a SavedModel (no saved_model.pb); serve a head file "
                                 f"(.head.npz) or a model written by `python -m pipeline export`")
        return SavedModelPredictor(path, trust_model)
    if path.is_file() and _is_tflite(path):
        return TFLitePredictor(path, trust_model)
    from ..heads.classifier import load

    return HeadPredictor(load(path, trusted=trusted), reject_ood)


def _is_tflite(path: Path) -> bool:
    with open(path, "rb") as f:
        return f.read(8)[4:8] == b"TFL3"


class HeadPredictor:
    """A :class:`~pipeline.heads.classifier.Classifier`: its backbone (loaded now), then the head; with the
    head's out-of-distribution summary (pipeline/heads/ood.py), each answer also has ``ood_distance`` and
    ``ood`` (1 flagged, 0 not), and `reject_ood` answers ``unknown`` for the flagged images."""

    def __init__(self, classifier, reject_ood: bool = False):
        self.classifier, self.ood, self.reject_ood = classifier, classifier.ood_summary, reject_ood
        if reject_ood:
            check_reject_ood(self.ood, classifier.classes_, REJECTED)
        if self.ood is None:
            log.warning("%r %s (answers have no ood_distance/ood fields)", classifier, MISSING)
        bb = classifier.backbone  # builds and loads the network now, not on the first request
        self.preprocess, self.batch_size = bb.preprocess, bb.batch_size
        self.classes = [str(c) for c in classifier.classes_]

    def predict_pixels(self, pixels: np.ndarray) -> np.ndarray:
        """Probabilities, then (with an OOD summary) the OOD distance and flag: (N, n_classes [+ 2])."""
        X = self.classifier.pixel_features(pixels)
        proba = self.classifier.predict_proba(X)
        return proba if self.ood is None else np.column_stack([proba, *self.ood.score(X)])

    def answer_fields(self, row) -> dict:
        """``ood_distance`` and ``ood`` of one row of predict_pixels (and ``unknown`` as the prediction of a
        flagged image under reject_ood); nothing for a head without an OOD summary."""
        if self.ood is None:
            return {}
        k = len(self.classes)
        flagged = bool(row[k + 1])
        return {"ood_distance": float(row[k]), "ood": int(flagged),
                **({"prediction": REJECTED} if self.reject_ood and flagged else {})}

    def describe(self) -> dict:
        clf = self.classifier
        return {"head": clf.metrics.get("head"), "feature_spec": without_paths(clf.spec),
                "metrics": without_paths(clf.metrics), "trained_with": clf.versions,
                "ood": None if self.ood is None else {**self.ood.header(), "reject_ood": self.reject_ood}}

    def __repr__(self):
        return repr(self.classifier)


class _Exported:
    """What both export formats share: the description written beside the graph, and checks on it."""

    def __init__(self, path: Path, info: dict, fmt: str):
        self.path, self.info, self.format = path, info, fmt
        self.preprocess = info["preprocess"]
        self.classes = list(info["classes"])

    def describe(self) -> dict:
        info = self.info
        return {"head": info.get("head"), "feature_spec": info.get("feature_spec") or {},
                "metrics": info.get("metrics") or {}, "trained_with": info.get("versions", {}).get("trained_with"),
                "export": {"format": self.format, "exported_with": info.get("versions", {}).get("exported_with")}}

    def _check_outputs(self, classes, input_shape) -> None:
        """The graph's own class names and input size must be the ones its description gives."""
        if [str(c) for c in classes] != self.classes:
            raise ModelFileError(f"{self.path}: the model's classes {list(classes)} differ from its description's "
                                 f"{self.classes}; export the head again")
        if tuple(input_shape) != tuple(self.preprocess.size):
            raise ModelFileError(f"{self.path}: the model takes {tuple(input_shape)} images but its description "
                                 f"says {tuple(self.preprocess.size)}; export the head again")

    def __repr__(self):
        return (f"<exported {self.format} {self.info.get('head')} classes={self.classes} on "
                f"{self.info.get('feature_spec', {}).get('backbone')}>")


class SavedModelPredictor(_Exported):
    """An exported SavedModel, run through ``serving_default`` (uint8 (N, H, W, 3) -> probabilities)."""

    def __init__(self, path: Path, trust_model: bool = False):
        super().__init__(Path(path), read_saved_model_info(path), "saved_model")
        if not trust_model:
            check_saved_model_ops(self.path)  # on the protobuf, before TensorFlow loads anything
        import tensorflow as tf

        try:
            self._fn = tf.saved_model.load(str(self.path)).signatures["serving_default"]
        except (KeyError, OSError, ValueError, tf.errors.OpError) as e:
            raise ModelFileError(f"{self.path} cannot be loaded as a SavedModel with serving_default: {e}") from e
        self.batch_size = int(self.info.get("batch_size") or 32)
        spec = self._fn.structured_input_signature[1].get("images")
        if spec is None or spec.dtype != tf.uint8 or len(spec.shape) != 4:
            raise ModelFileError(f"{self.path}: serving_default does not take uint8 'images' (N, H, W, 3)")
        out = self._fn(images=tf.zeros([1, *self.preprocess.size, 3], tf.uint8))  # also the warm-up
        self._check_outputs([c.decode() for c in out["classes"].numpy()[0]], spec.shape[1:3])

    def predict_pixels(self, pixels: np.ndarray) -> np.ndarray:
        import tensorflow as tf

        out = [self._fn(images=tf.constant(pixels[i:i + self.batch_size]))["probabilities"].numpy()
               for i in range(0, len(pixels), self.batch_size)]
        return np.concatenate(out) if out else np.zeros((0, len(self.classes)), np.float32)


class TFLitePredictor(_Exported):
    """An exported ``.tflite`` file, run image by image through its ``serving_default`` signature."""

    def __init__(self, path: Path, trust_model: bool = False):
        super().__init__(Path(path), read_tflite_info(path), "tflite")
        from ..backbones.tflite import check_builtin_ops, interpreter_class
        from ..logs import native_output_quieted

        if not trust_model:
            check_builtin_ops(self.path, error=ModelFileError, advice=", or pass --trust-model if you trust where "
                              "this model came from")  # on the flatbuffer, before any interpreter
        Interpreter, _ = interpreter_class()
        try:
            with native_output_quieted():  # XNNPACK's notice when tensors are allocated (shown with -v)
                it = Interpreter(model_path=str(self.path), num_threads=usable_cores())
                it.allocate_tensors()
            self._run = it.get_signature_runner("serving_default")
        except (ValueError, RuntimeError) as e:
            raise ModelFileError(f"{self.path} is not a usable TFLite model: {e}") from e
        shape = it.get_input_details()[0]["shape"]
        self.batch_size = int(self.info.get("batch_size") or 32)
        out = self._run(images=np.zeros((1, *self.preprocess.size, 3), np.uint8))  # also the warm-up
        self._check_outputs([c.decode() for c in out["classes"][0]], shape[1:3])

    def predict_pixels(self, pixels: np.ndarray) -> np.ndarray:
        out = [self._run(images=p[None])["probabilities"] for p in pixels]
        return np.concatenate(out) if out else np.zeros((0, len(self.classes)), np.float32)
