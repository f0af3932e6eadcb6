"""A trained head bound to the exact features it was trained on; persisted with joblib.

The joblib file holds a plain dict: the fitted sklearn pipeline, class names, the full
feature spec (backbone, source, weights, layer, tensor, preprocessing, D), library versions
and training metrics. Loading refuses a file written by another scikit-learn version, and
scoring refuses features whose spec differs from the head's.
"""
from __future__ import annotations

import os
import threading
import warnings
from pathlib import Path

import joblib
import numpy as np

from .backbones import backbone_from_spec, describe, identity
from .errors import ModelFileError, SpecMismatchError
from .inputs import as_list, decode_images, is_image_input

FORMAT = "tf-feature-pipeline/head-1"
_BACKBONE_LOCK = threading.Lock()


class Classifier:
    """A fitted head. ``predict``/``predict_proba`` take images (paths, bytes, PIL, uint8 arrays) or features."""

    def __init__(self, model, classes, spec: dict, metrics: dict | None = None, versions: dict | None = None):
        self.model = model
        self.classes_ = np.asarray(classes, dtype=object)
        self.spec = spec
        self.metrics = metrics or {}
        self.versions = versions or {}
        self._backbone = None
        self.train_hashes: list[str] = []  # sha256 prefixes (16 hex) of the training images, for leakage checks
        if list(model.classes_) != list(self.classes_):
            raise ModelFileError("class order of the fitted model and the recorded class names differ")

    @property
    def n_features_in_(self) -> int:
        return int(self.spec["dim"])

    # ---- feature compatibility -------------------------------------------------------------
    def check_spec(self, spec: dict, where: str = "the features") -> None:
        """Refuse features made by another backbone, layer or preprocessing."""
        if identity(spec) != identity(self.spec):
            diff = [k for k, v in identity(self.spec).items() if identity(spec).get(k) != v]
            raise SpecMismatchError(
                f"this head was trained on {describe(self.spec)}, but {where} come from {describe(spec)} "
                f"(different {', '.join(diff)}); featurize with the head's backbone and layer")

    def _matrix(self, X) -> np.ndarray:
        X = np.asarray(X, dtype=np.float32)
        if X.ndim != 2 or X.shape[1] != self.n_features_in_:
            raise SpecMismatchError(f"X has {X.shape[-1] if X.ndim else 0} features, but this head is expecting "
                                    f"{self.n_features_in_} features from {describe(self.spec)}")
        return X

    @property
    def backbone(self):
        """The head's own backbone, rebuilt from its spec and loaded on first use (once, thread-safe)."""
        if self._backbone is None:
            with _BACKBONE_LOCK:
                if self._backbone is None:
                    bb = backbone_from_spec(self.spec)
                    self.check_spec(bb.spec(), "the rebuilt backbone's features")
                    self._backbone = bb
        return self._backbone

    def features(self, images) -> np.ndarray:
        """Features of images with the head's own backbone, decoded exactly as featurize decodes files.

        `images`: file paths, encoded bytes, PIL images (RGB) or uint8 RGB arrays ((H, W, 3) or
        (N, H, W, 3)), alone or in a list (:mod:`pipeline.inputs`). Errors are ImageErrors naming the
        image. Safe to call from several threads. Decoded one batch at a time: memory follows the batch.
        """
        bb, items = self.backbone, as_list(images)
        out = [bb(decode_images(items[i:i + bb.batch_size], bb.preprocess, start=i))
               for i in range(0, len(items), bb.batch_size)]
        return np.concatenate(out) if out else np.zeros((0, self.n_features_in_), np.float32)

    def pixel_features(self, pixels: np.ndarray) -> np.ndarray:
        """Features of an already decoded uint8 batch (N, h, w, 3), in chunks of the backbone's batch size."""
        bb = self.backbone
        if len(pixels) == 1 and bb.per_image:  # one image: in this thread, no hand-off to the backbone's pool
            return bb.featurize_one(pixels[0])[None]
        out = [bb(pixels[start:start + bb.batch_size]) for start in range(0, len(pixels), bb.batch_size)]
        return np.concatenate(out) if out else np.zeros((0, self.n_features_in_), np.float32)

    def _as_features(self, X):
        if is_image_input(X):
            return self.features(X)
        if hasattr(X, "features") and hasattr(X, "spec"):  # a FeatureStore
            self.check_spec(X.spec, str(getattr(X, "root", "the store")))
            return X.features
        return self._matrix(X)

    # ---- prediction --------------------------------------------------------------------------
    def predict_proba(self, X) -> np.ndarray:
        """(N, n_classes) probabilities, columns in the order of ``classes_``."""
        return self.model.predict_proba(self._as_features(X))

    def predict(self, X) -> np.ndarray:
        proba = self.predict_proba(X)
        return self.classes_[np.argmax(proba, axis=1)]

    # ---- persistence -------------------------------------------------------------------------
    def save(self, path) -> Path:
        """Write atomically (temp file, fsync, rename): an interrupted save keeps the old file."""
        from .store import versions

        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        payload = {"format": FORMAT, "model": self.model, "classes": [str(c) for c in self.classes_],
                   "spec": self.spec, "metrics": self.metrics, "versions": self.versions or versions(),
                   "train_hashes": list(self.train_hashes)}
        tmp = path.with_name(path.name + f".tmp-{os.getpid()}")
        try:
            with open(tmp, "wb") as f:
                joblib.dump(payload, f)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, path)
        finally:
            tmp.unlink(missing_ok=True)
        return path

    @classmethod
    def load(cls, path) -> "Classifier":
        from sklearn.exceptions import InconsistentVersionWarning

        path = Path(path)
        if not path.is_file():
            raise ModelFileError(f"model file {str(path)!r} does not exist; train one with `python -m pipeline train`")
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("error", InconsistentVersionWarning)
                payload = joblib.load(path)
        except InconsistentVersionWarning as w:
            raise ModelFileError(f"{path} was saved with scikit-learn {w.original_sklearn_version}, this is "
                                 f"{w.current_sklearn_version}; retrain the head from its features") from None
        except Exception as e:
            raise ModelFileError(f"{path} is not a readable model file ({type(e).__name__}: {e}); "
                                 f"it may be truncated: retrain or restore it") from e
        if not isinstance(payload, dict) or payload.get("format") != FORMAT:
            raise ModelFileError(f"{path} is not a tf-feature-pipeline head (format {FORMAT} expected)")
        clf = cls(payload["model"], payload["classes"], payload["spec"], payload.get("metrics"),
                  payload.get("versions"))
        clf.train_hashes = list(payload.get("train_hashes", []))
        return clf

    def __repr__(self):
        return f"<Classifier {self.metrics.get('head')} classes={list(self.classes_)} on {describe(self.spec)}>"


def load(path) -> Classifier:
    """Load a head saved with :meth:`Classifier.save`. Only load files you trust (joblib is pickle)."""
    return Classifier.load(path)
