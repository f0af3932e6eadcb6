"""Settings, one small frozen dataclass per concept: which backbone (`BackboneOptions`), how a folder
is featurized (`FeaturizeOptions`), which head (`HeadOptions`), which validation split (`SplitOptions`).

Library functions take these objects (``featurize(data, BackboneOptions("resnet50"),
options=FeaturizeOptions(workers=4))``); their old keyword arguments build them
(:func:`featurize_settings`). Each field's metadata declares its command-line flag once
(pipeline/cli/arguments.py builds every argparse group from it). Bad values are refused when an object
is made, naming the parameter (``batch_size=0 must be ...``); the CLI rewrites ``name=`` to the flag.
"""
from __future__ import annotations

import os
from dataclasses import dataclass, field, fields, replace

from .errors import UsageError

DEFAULT_BACKBONE = "mobilenet_v2_quant"  # the same name as backbones.DEFAULT_BACKBONE, without importing them


def _flag(default=None, help: str | None = None, **argparse_kw):
    """A settings field with its command-line flag: argparse keywords (flag, type name, choices, help...)."""
    return field(default=default, metadata={"help": help, **argparse_kw})


def _positive(name: str, value, *, integer: bool = True) -> None:
    if value is None:
        return
    ok = (isinstance(value, int) and not isinstance(value, bool) and value >= 1) if integer \
        else (isinstance(value, (int, float)) and not isinstance(value, bool) and value > 0)
    if not ok:
        raise UsageError(f"{name}={value!r} must be {'an integer >= 1' if integer else 'a positive number'}")


def _store_path(value):
    """A --reuse-from value as a path: a folder, or a FeatureStore's root (None for anything else)."""
    if isinstance(value, (str, os.PathLike)):
        return value
    return value.root if hasattr(value, "meta") and hasattr(value, "root") else None


def _one_of(name: str, value, choices) -> None:
    if value not in choices:
        raise UsageError(f"{name}={value!r} is not one of {', '.join(map(repr, choices))}")


@dataclass(frozen=True)
class BackboneOptions:
    """Which network gives the features, read at which layer, with which input settings."""

    backbone: str = _flag(DEFAULT_BACKBONE, "registry name, .tflite/.pb file, SavedModel folder or hub:HANDLE "
                          "(default: %(default)s)")
    layer: str | None = _flag(None, "penultimate, logits, predictions (the class probabilities) or a layer/tensor "
                              "name; several separated by commas (one forward pass, one store each: --out must "
                              "contain {layer}). Default: penultimate at --out and, where the network has a "
                              "classifier, its predictions from the same pass beside it (OUT-predictions), so "
                              "train chooses among both")
    weights: str | None = _flag(None, "Keras application weights: imagenet (default), a local .weights.h5/.h5 "
                                "file, or random")
    batch_size: int | None = _flag(None, "images per network call", type="positive_int")
    input_size: int | None = _flag(None, "override the backbone's input size (square)", type="positive_int")
    scaling: str | None = _flag(None, "override the pixel scaling: caffe, tf, torch, unit, raw, ...")
    crop_fraction: float | None = _flag(None, "centre crop fraction (1.0: largest centre square)", type="float")
    resample: str | None = None  # library only: the resize filter
    input_tensor: str | None = _flag(None, "input tensor name of a frozen GraphDef without a preset")
    precision: str | None = _flag(None, "compute precision of Keras applications (default float32; bfloat16 on "
                                  "CPUs with AVX-512 BF16/AMX, float16 on GPUs)",
                                  choices=("float32", "bfloat16", "float16"))
    keras_backend: str | None = _flag(None, "Keras 3 backend running Keras applications (default: $KERAS_BACKEND, "
                                      "else tensorflow); jax and torch never import TensorFlow",
                                      choices=("tensorflow", "jax", "torch"))
    jit_compile: bool = _flag(False, "XLA-compile a Keras application on TensorFlow", action="store_true")
    tta: str | None = _flag(None, "test-time augmentation: flip averages the features of each image and its "
                            "mirror (score follows the head's choice)", choices=("flip",))

    def __post_init__(self):
        _positive("batch_size", self.batch_size)


DECODE_CHOICES = ("auto", "thread", "process", "gpu")
ENGINES = ("local", "ray")  # the names of pipeline.engines.REGISTRY, without importing the engines


@dataclass(frozen=True)
class FeaturizeOptions:
    """How a folder becomes a feature store: which images and labels, how many workers, where it runs.

    `engine`: a name of the engine registry (pipeline.engines.REGISTRY), which checks the settings it
    cannot honour when a run starts (e.g. ``workers=`` on Ray); `cluster`: that engine's cluster, e.g. a
    pipeline.engines.ray.RayCluster for engine="ray" (default: a local one).
    """

    labelled: bool | None = _flag(None, "ignore sub-folders as classes", flag="--unlabelled",
                                  action="store_const", const=False)
    labels: object = _flag(None, "labels from a CSV (id,label) instead of sub-folders", metavar="CSV")
    id_column: str | None = _flag(None, "the CSV column of image ids (default: 'id', else the first)")
    label_column: str | None = _flag(None, "the CSV column of labels (default: 'label', else the second)")
    multi_label: bool = _flag(False, "each label cell holds several labels separated by spaces or '|' (e.g. "
                              "Planet's tags); train then fits one-vs-rest heads with a threshold per label",
                              action="store_true")
    prune: bool = _flag(False, "drop the rows of files no longer in DATA_DIR", action="store_true")
    sample: int | float | None = _flag(None, "featurize only N images per class (or a fraction), for a quick try",
                                       type="sample")
    follow_links: bool = _flag(True, "do not read symlinks leading outside DATA_DIR (for folders you do not "
                               "trust)", flag="--no-follow-links", action="store_false")
    reuse_from: tuple = _flag(None, "take the features of any image whose content STORE holds (a store of the same "
                              "backbone, weights, layer and preprocessing: the same photos under other labels, "
                              "in another folder...) instead of featurizing it again; repeatable",
                              flag="--reuse-from", action="append", metavar="STORE")
    overwrite: bool = _flag(False, "replace a store made with other settings", action="store_true")
    strict: bool = _flag(False, "fail if any image had to be skipped", action="store_true")
    progress: bool = _flag(True, "no progress bar or progress lines on stderr", flag="--no-progress", action="store_false")
    workers: int | None = _flag(None, "decoding threads or processes (default: the usable cores)",
                                type="positive_int")
    decode: str = _flag("auto", "decode in a thread pool, in worker processes, or JPEGs on the GPU (gpu: a Keras "
                        "backbone on JAX with a CUDA GPU and nvImageCodec or torchvision; auto: gpu where all "
                        "of that is present, else processes from 8 cores on)",
                        choices=DECODE_CHOICES)
    engine: str = _flag("local", "local: this process (default); ray: a Ray cluster (DATA_DIR may be s3://, "
                        "gs:// or file://)", choices=ENGINES)
    cluster: object = None

    def __post_init__(self):
        _positive("workers", self.workers)
        _one_of("decode", self.decode, DECODE_CHOICES)
        reuse = self.reuse_from
        single = isinstance(reuse, (str, os.PathLike)) or hasattr(reuse, "meta")  # a path, or a FeatureStore
        paths = [_store_path(r) for r in ([reuse] if single else reuse if isinstance(reuse, (list, tuple)) else [0])]
        if reuse is not None and None in paths:
            raise UsageError(f"reuse_from={self.reuse_from!r} must be a feature store (or its folder), or a list "
                             f"of them")
        reuse = paths if reuse is not None else ()
        object.__setattr__(self, "reuse_from", tuple(reuse or ()))
        _one_of("engine", self.engine, ENGINES)
        if self.sample is not None:
            _positive("sample", self.sample, integer=False)
        if self.multi_label and self.labels is None:
            raise UsageError("multi_label=True reads several labels per image from a CSV: give labels=FILE.csv "
                             "(and label_column=, e.g. tags)")


HEADS = ("linear_svm", "svm", "logreg")  # the names of heads.kinds.KINDS, without importing scikit-learn


@dataclass(frozen=True)
class HeadOptions:
    """Which head is fitted on the features, and how C is chosen."""

    head: str = _flag("auto", "auto (default: chosen by CV among the kinds that fit the data size) or one of "
                      + ", ".join(HEADS), choices=("auto",) + HEADS)
    C: float | str | dict = _flag("auto", "'auto' (cross-validated, default) or a number", type="C")
    folds: int | str = _flag(5, "CV folds for --C auto, or 'loo' (default 5)", type="folds")
    seed: int = _flag(0, "random seed of the folds, samples and splits (default 0)", type="int")
    pca: int | None = _flag(None, "reduce the standardised features to N principal components first",
                            type="positive_int")
    class_weight: str | None = _flag(None, "balanced: weigh classes inversely to their image counts (imbalanced "
                                     "folders)", choices=("balanced",))

    def __post_init__(self):
        for c in (self.C.values() if isinstance(self.C, dict) else [self.C]):
            if c != "auto":
                _positive("C", c, integer=False)
        if self.folds != "loo" and not (isinstance(self.folds, int) and self.folds >= 2):
            raise UsageError(f"folds={self.folds!r} must be 'loo' or an integer >= 2")
        _positive("pca", self.pca)


SPLITS = ("hash", "stratified")


@dataclass(frozen=True)
class SplitOptions:
    """Which labelled images are held out for validation."""

    holdout: float = _flag(0.0, "fraction held out for validation, e.g. 0.2", type="float")
    split: str = _flag("hash", "hash: stable as files are added; stratified: exact class proportions",
                       choices=SPLITS)
    group_by: str | None = _flag(None, "keep images whose file names share this match together", metavar="REGEX")
    groups: object = _flag(None, "a CSV giving each image a group (with --group-column)", metavar="CSV")
    group_column: str | None = _flag(None, "the --groups CSV column holding the group")
    seed: int = _flag(0, "random seed of the folds, samples and splits (default 0)", type="int")

    def __post_init__(self):
        if not 0 <= self.holdout < 1:
            raise UsageError(f"holdout={self.holdout!r} must be a fraction in [0, 1), e.g. 0.2")
        _one_of("split", self.split, SPLITS)


@dataclass(frozen=True)
class ScoreOptions:
    """What `score` writes and where it keeps the features it computes."""

    cache: object = _flag(None, "feature store to reuse/extend (default: features/score-cache/<folder>-"
                          "<backbone>-<layer>-<hash of the folder's path and the backbone>)")
    no_cache: bool = _flag(False, "featurize into a temporary store, removed afterwards", action="store_true")
    force: bool = _flag(False, "replace --out even if it is not a CSV this tool wrote", action="store_true")
    kaggle: str | None = _flag(None, "write id,label with the probability of CLASS", metavar="CLASS")
    clip: float | None = _flag(None, "clip Kaggle probabilities to [CLIP, 1-CLIP], e.g. 0.02", type="float")
    reject_below: float | None = _flag(None, "write 'unknown' as the prediction when the top probability is below "
                                       "P (pick P from the coverage plot of an evaluate/train --report)",
                                       type="float", metavar="P")
    reject_ood: bool = _flag(False, "write 'unknown' as the prediction of images the head flags out-of-distribution "
                             "(the ood column: unlike its training images)", action="store_true")

    def __post_init__(self):
        if self.clip is not None and not 0 <= self.clip < 0.5:
            raise UsageError(f"clip={self.clip!r} must be in [0, 0.5), e.g. 0.02")
        if self.cache is not None and self.no_cache:
            raise UsageError("cache= and no_cache=True exclude each other; give one")


SCORE_FEATURIZE = ("progress", "workers", "follow_links", "strict", "engine", "cluster")  # what score takes of featurize's


def names(cls) -> set[str]:
    return {f.name for f in fields(cls)}


def split_keywords(where: str, keywords: dict, *classes) -> list[dict]:
    """`keywords` sorted into one dict per settings class; a name no class has is a TypeError, as in Python."""
    out = [{k: v for k, v in keywords.items() if k in names(cls)} for cls in classes]
    unknown = set(keywords) - set().union(*(names(cls) for cls in classes))
    if unknown:
        raise TypeError(f"{where}() got an unexpected keyword argument {sorted(unknown)[0]!r}")
    return out


def featurize_settings(backbone, layer, weights, options: FeaturizeOptions | None, keywords: dict):
    """(BackboneOptions or None for a ready Backbone, FeaturizeOptions) from featurize's arguments:
    settings objects, the old keyword arguments (which override the objects' fields), or both."""
    bb_kw, run_kw = split_keywords("featurize", keywords, BackboneOptions, FeaturizeOptions)
    options = replace(options, **run_kw) if options is not None else FeaturizeOptions(**run_kw)
    given = {k: v for k, v in (("layer", layer), ("weights", weights)) if v is not None}
    if isinstance(backbone, BackboneOptions):
        return replace(backbone, **given, **bb_kw), options
    if backbone is None or isinstance(backbone, str):
        return BackboneOptions(backbone or DEFAULT_BACKBONE, **given, **bb_kw), options
    return None, options  # a Backbone object: it carries its own settings
