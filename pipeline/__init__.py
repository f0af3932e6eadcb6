"""tf-feature-pipeline: frozen ImageNet CNN features -> bcolz cache -> scikit-learn heads.

    import pipeline
    store = pipeline.featurize("data/train", backbone="mobilenet_v2_quant", layer="penultimate",
                               out="features/train")
    clf = pipeline.train(store, head="linear_svm")
    clf.save("models/cars.head.npz")
    pipeline.load("models/cars.head.npz").predict(["photo.jpg"])

Names are imported on first use, so a fully cached featurize run never imports
scikit-learn or TensorFlow.
"""
import importlib as _importlib
import os as _os

_os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
_os.environ.setdefault("KERAS_BACKEND", "tensorflow")

_EXPORTS = {
    "featurize": "engines", "train": "training.train", "load": "heads.classifier", "Classifier": "heads.classifier",
    "score": "scoring.batch", "evaluate": "training.evaluation", "compare": "training.evaluation", "predict_imagenet": "scoring.imagenet",
    "create_backbone": "backbones", "list_backbones": "backbones", "FeatureStore": "store",
    "Preprocess": "preprocess", "PipelineError": "errors", "UsageError": "errors", "BackboneError": "errors",
    "StoreError": "errors", "SpecMismatchError": "errors", "ModelFileError": "errors", "ImageError": "errors",
    "export_features": "store.exchange", "import_features": "store.exchange", "FeatureSpec": "spec",
    "BackboneOptions": "options", "FeaturizeOptions": "options", "HeadOptions": "options", "SplitOptions": "options",
    "ScoreOptions": "options",
    "near_duplicates": "audit", "leaks": "audit", "label_issues": "audit", "outliers": "audit",
}

__version__ = "0.1.0"
__all__ = list(_EXPORTS)


def __getattr__(name):
    if name in _EXPORTS:
        value = getattr(_importlib.import_module(f".{_EXPORTS[name]}", __name__), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'pipeline' has no attribute {name!r}")


def __dir__():
    return sorted(list(globals()) + __all__)
