"""tf-feature-pipeline: frozen ImageNet CNN features -> bcolz cache -> scikit-learn heads.

    import pipeline
    store = pipeline.featurize("data/train", backbone="mobilenet_v2_quant", layer="penultimate",
                               out="features/train")
    clf = pipeline.train(store, head="linear_svm")
    clf.save("models/cars.joblib")
    pipeline.load("models/cars.joblib").predict(["photo.jpg"])
"""
import os as _os

_os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
_os.environ.setdefault("KERAS_BACKEND", "tensorflow")

from .backbones import create_backbone, list_backbones  # noqa: E402
from .classifier import Classifier, load  # noqa: E402
from .errors import (BackboneError, ImageError, ModelFileError, PipelineError, SpecMismatchError,  # noqa: E402
                     StoreError, UsageError)
from .evaluation import evaluate  # noqa: E402
from .imagenet import predict_imagenet  # noqa: E402
from .preprocess import Preprocess  # noqa: E402
from .runner import featurize  # noqa: E402
from .scoring import score  # noqa: E402
from .store import FeatureStore  # noqa: E402
from .training import train  # noqa: E402

__version__ = "0.1.0"
__all__ = ["featurize", "train", "load", "score", "evaluate", "predict_imagenet", "create_backbone",
           "list_backbones", "FeatureStore", "Classifier", "Preprocess", "PipelineError", "UsageError",
           "BackboneError", "StoreError", "SpecMismatchError", "ModelFileError", "ImageError"]
