"""A trained head bound to the exact features it was trained on; persisted as a .head.npz file.

The file (pipeline/heads/headfile.py) holds the head's arrays and a JSON header: class names, the
full feature spec (backbone, source, weights, layer, tensor, preprocessing, D), library
versions, training metrics and the estimator's parameters; it holds no code and loads under
any scikit-learn version. Old joblib files load only when trusted. Scoring refuses features
whose spec differs from the head's. The head itself is a scikit-learn estimator,
``FeatureHead`` (pipeline/training/estimator.py), kept as ``Classifier.estimator``.
"""
from __future__ import annotations

import threading
from pathlib import Path

import numpy as np

from ..backbones import backbone_from_spec, describe
from ..decode.inputs import as_list, decode_images, is_image_input
from ..errors import ModelFileError, SpecMismatchError, UsageError
from ..featurizer.mapper import map_in_batches
from ..hints import looks_like_pickle, spec_mismatch, unreadable_model
from ..spec import DEFAULT_DECODER, FeatureSpec
from . import headfile
from .headfile import LEGACY_CALIBRATION
from .ood import MISSING, OODScores, OODSummary, split_arrays

_BACKBONE_LOCK = threading.Lock()


class Classifier:
    """A fitted head. ``predict``/``predict_proba`` take images (paths, bytes, PIL, uint8 arrays) or features.

    `model`: a fitted FeatureHead (pipeline/training/estimator.py), or a fitted scorer (a make_head() Pipeline, a
    loaded ArrayHead, a multi-label Pipeline); ``model`` is the fitted scorer that predicts. `params`: the
    FeatureHead parameters of a bare scorer (default: those `metrics` record). `metrics` default to the
    FeatureHead's ``metrics_``.
    """

    def __init__(self, model, classes, spec: dict, metrics: dict | None = None, versions: dict | None = None,
                 params: dict | None = None):
        self._estimator = model if hasattr(model, "model_") and hasattr(model, "get_params") else None
        if self._estimator is not None:
            model = self._estimator.model_
            metrics = dict(self._estimator.metrics_) if metrics is None else metrics
        self.model = model
        self._params = params
        self.classes_ = np.asarray(classes, dtype=object)
        self.spec = spec
        self.metrics = metrics or {}
        self.versions = versions or {}
        self._backbone = None
        self.train_hashes: list[str] = []  # sha256 prefixes (16 hex) of the training images, for leakage checks
        self.ood_summary = None  # pipeline/heads/ood.py: an OODSummary of the training features, or None
        if list(model.classes_) != list(self.classes_):
            raise ModelFileError("class order of the fitted model and the recorded class names differ")

    @property
    def estimator(self):
        """The head as a fitted scikit-learn estimator (a FeatureHead; get_params, clone, ...); for a bare or
        loaded scorer, rebuilt around it on first use with its parameters. None for a multi-label head."""
        if self._estimator is None and not self.multi_label:
            from ..training.estimator import FeatureHead

            self._estimator = FeatureHead.fitted(self.model, self.params, self.metrics)
        return self._estimator

    @property
    def params(self) -> dict | None:
        """The estimator's parameters (head, C, folds, seed, pca, class_weight, ...); None for multi-label."""
        if self._estimator is not None:
            return self._estimator.get_params()
        if self.multi_label:
            return None
        return dict(self._params) if self._params is not None else _params_from_metrics(self.metrics)

    @property
    def n_features_in_(self) -> int:
        return int(self.spec["dim"])

    # ---- feature compatibility -------------------------------------------------------------
    @property
    def feature_spec(self) -> FeatureSpec:
        """The spec of the features this head was trained on (``spec`` is its stored dict)."""
        return FeatureSpec.of(self.spec)

    def check_spec(self, spec, where: str = "the features", data_dir=None) -> None:
        """Refuse features made by another backbone, layer or preprocessing (`spec`: a FeatureSpec or dict);
        `data_dir`: the image folder they came from, named in the command the error suggests."""
        mine, theirs = self.feature_spec, FeatureSpec.of(spec)
        diff = mine.differences(theirs)
        if diff:
            raise SpecMismatchError(*spec_mismatch(mine, theirs, where, diff, data_dir))

    def _matrix(self, X) -> np.ndarray:
        X = np.asarray(X, dtype=np.float32)
        if X.ndim != 2 or X.shape[1] != self.n_features_in_:
            raise SpecMismatchError(f"X has {X.shape[-1] if X.ndim else 0} features, but this head is expecting "
                                    f"{self.n_features_in_} features from {describe(self.spec)}")
        return X

    def check_cpu_decoder(self, what: str) -> None:
        """Refuse to give this head features of `what` when its own were decoded on the GPU (``--decode gpu``):
        the decoder is part of the features (docs/performance.md), and only a folder can be decoded there."""
        decoder = FeatureSpec.of(self.spec).decoder
        if decoder != DEFAULT_DECODER:
            raise UsageError(f"this head was trained on features of JPEGs decoded on the GPU ({decoder}), and {what} "
                             f"would give it Pillow's pixels: score a folder with `score` on a GPU machine (it decodes "
                             f"as training did), or retrain it on a store featurized with --decode thread")

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
        (N, H, W, 3)), alone or in a list (:mod:`pipeline.decode.inputs`). Errors are ImageErrors naming the
        image. Safe to call from several threads. Decoded one batch at a time: memory follows the batch.
        """
        self.check_cpu_decoder("images decoded one by one (by Pillow, on the CPU)")
        bb, items = self.backbone, as_list(images)
        if not items:
            return np.zeros((0, self.n_features_in_), np.float32)
        return map_in_batches(bb, len(items), lambda a, b: decode_images(items[a:b], bb.preprocess, start=a))

    def pixel_features(self, pixels: np.ndarray) -> np.ndarray:
        """Features of an already decoded uint8 batch (N, h, w, 3), in chunks of the backbone's batch size."""
        bb = self.backbone
        if len(pixels) == 1 and bb.per_image:  # one image: in this thread, no hand-off to the backbone's pool
            return bb.featurize_one(pixels[0])[None]
        if not len(pixels):
            return np.zeros((0, self.n_features_in_), np.float32)
        return map_in_batches(bb, len(pixels), lambda a, b: pixels[a:b])

    def _as_features(self, X):
        if is_image_input(X):
            return self.features(X)
        if hasattr(X, "features") and hasattr(X, "spec"):  # a FeatureStore
            if hasattr(X, "meta") and X.meta.get("layers") and self.feature_spec.differences(X.spec):
                from .featuresets import (
                    store_features,  # a layer written beside it, or a join of two
                )

                found = store_features(X, self.spec)
                if found is not None:
                    return found
            self.check_spec(X.spec, str(getattr(X, "root", "the store")), getattr(X, "meta", {}).get("data_dir"))
            return X.features
        return self._matrix(X)

    # ---- prediction --------------------------------------------------------------------------
    def predict_proba(self, X) -> np.ndarray:
        """(N, n_classes) probabilities, columns in the order of ``classes_``."""
        return self.model.predict_proba(self._as_features(X))

    def predict(self, X):
        """Class names; for a multi-label head, the label set of each image (its tags, in class order)."""
        proba = self.predict_proba(X)
        if self.multi_label:
            return label_sets(proba, self.classes_, self.thresholds_)
        return self.classes_[np.argmax(proba, axis=1)]

    def ood(self, X) -> OODScores:
        """(distance, flagged) per image: how unlike the training images each is (pipeline/heads/ood.py).

        `X`: images, features or a FeatureStore, as for :meth:`predict_proba`. ``distance`` is the cosine
        distance to the k-th nearest training vector, ``flagged`` True above the head's calibrated threshold.
        UsageError for a head saved without a summary (before OOD existed): retrain it.
        """
        if self.ood_summary is None:
            raise UsageError(f"{self!r} {MISSING}")
        return self.ood_summary.score(self._as_features(X))

    @property
    def multi_label(self) -> bool:
        """True for a head with one-vs-rest tags (pipeline/training/multilabel.py)."""
        return self.thresholds_ is not None

    @property
    def thresholds_(self) -> np.ndarray | None:
        """The per-tag thresholds of a multi-label head; None for a single-label head."""
        return _thresholds(self.model)

    # ---- persistence -------------------------------------------------------------------------
    def save(self, path) -> Path:
        """Write a head-2 file (arrays + JSON, no pickle; see pipeline/heads/headfile.py) atomically."""
        from ..versions import versions
        from .arrayhead import ArrayHead, export

        try:
            head = export(self.model)
        except ValueError as e:
            raise ModelFileError(f"cannot save this head to {path}: {e}") from None
        header = {"spec": self.spec, "metrics": self.metrics, "versions": self.versions or versions(),
                  "train_hashes": list(self.train_hashes)}
        if self.params is not None:
            header["params"] = self.params
        if self.ood_summary is not None:  # its arrays ride with the head's, under ood.* (pipeline/heads/ood.py)
            header["ood"] = self.ood_summary.header()
            head = ArrayHead(head.classes_, {**head.arrays, **self.ood_summary.arrays()}, head.scorer,
                             head.probabilities)
        return headfile.write(path, head, header)

    @classmethod
    def load(cls, path, trusted: bool = False) -> "Classifier":
        """Load a head-2 file; an old joblib head-1 file (a pickle) only when `trusted`."""
        path = Path(path)
        if path.is_dir():
            raise ModelFileError(f"model file {str(path)!r} is a folder, not a head file; give the head written by "
                                 f"`python -m pipeline train --out NAME.head.npz`")
        if not path.is_file():
            raise ModelFileError(f"model file {str(path)!r} does not exist; train one with `python -m pipeline train`")
        ood_arrays = {}
        if headfile.is_head_file(path):
            header, head = headfile.read(path)
            head.arrays, ood_arrays = split_arrays(head.arrays)
            payload = {**header, "model": head}
        elif looks_like_pickle(path):
            payload = headfile.read_pickle(path, trusted)
        else:  # text, empty, an image...: say what the file is, not a guess
            raise ModelFileError(unreadable_model(path, None))
        params = payload.get("params")  # absent from files saved before FeatureHead: taken from the metrics
        clf = cls(payload["model"], payload["classes"], payload["spec"], payload.get("metrics"),
                  payload.get("versions"), params if isinstance(params, dict) else None)
        if getattr(clf.model, "n_features_in_", clf.n_features_in_) != clf.n_features_in_:
            raise ModelFileError(f"{path}: the head expects {clf.model.n_features_in_} features but its feature "
                                 f"spec says {clf.n_features_in_}")
        clf.train_hashes = list(payload.get("train_hashes", []))
        clf.ood_summary = _ood_summary(path, payload.get("ood"), ood_arrays, clf.n_features_in_)
        return clf

    def export(self, out, format: str = "saved_model", force: bool = False) -> Path:
        """Write this head with its backbone as one TensorFlow model (pipeline/export/exporter.py): a SavedModel
        folder (``format="saved_model"``) or a ``.tflite`` file (``format="tflite"``)."""
        from ..export.exporter import export

        return export(self, out, format, force=force)

    def __repr__(self):
        return f"<Classifier {self.metrics.get('head')} classes={list(self.classes_)} on {describe(self.spec)}>"


def _ood_summary(path, header, arrays: dict, dim: int) -> OODSummary | None:
    """The OOD summary a head file holds (None for a file saved before summaries); ModelFileError if damaged."""
    if header is None and not arrays:
        return None
    try:
        summary = OODSummary.from_file(header, arrays)
    except ValueError as e:
        raise ModelFileError(f"{path}: its out-of-distribution summary is unusable ({e}); retrain the head") from None
    if summary.n_features_in_ != dim:
        raise ModelFileError(f"{path}: its out-of-distribution summary has {summary.n_features_in_} features but its "
                             f"feature spec says {dim}; retrain the head")
    return summary


def _thresholds(model) -> np.ndarray | None:
    steps = getattr(model, "named_steps", None)
    return getattr(steps["clf"] if steps else model, "thresholds_", None)


def _params_from_metrics(metrics: dict) -> dict:
    """The FeatureHead parameters a head's metrics record: head, C ('auto' when it was chosen by CV), pca,
    class_weight; the rest take their defaults."""
    params = {k: metrics[k] for k in ("head", "pca", "class_weight") if k in metrics}
    if "C" in metrics:
        params["C"] = "auto" if "cv_scores" in metrics else metrics["C"]
    return params


def load(path, trusted: bool = False) -> Classifier:
    """Load a head saved with :meth:`Classifier.save` (a .head.npz file holds no code).

    trusted: also load an old joblib head-1 file, which is a pickle and can run code: only for
    files you trust.
    """
    return Classifier.load(path, trusted=trusted)


def convert(src, out, trusted: bool = False):
    """Load the head in `src` (an old joblib file needs `trusted`) and save it as a head-2 file `out`."""
    clf = load(src, trusted=trusted)
    if type(getattr(clf.model, "named_steps", {}).get("clf")).__name__ == "CalibratedClassifierCV":
        clf.metrics.setdefault("calibration", LEGACY_CALIBRATION)
    return clf, clf.save(out)


def label_sets(proba: np.ndarray, classes, thresholds) -> list[list[str]]:
    """The tags of each row whose probability reaches its threshold, in class order (multi-label heads)."""
    hits = np.asarray(proba) >= np.asarray(thresholds)[None, :]
    names = [str(c) for c in classes]
    return [[names[k] for k in np.flatnonzero(row)] for row in hits]
