"""The paths a command is given, checked before any heavy import (TensorFlow, scikit-learn).

One rule for every command: a path that does not exist, or is the wrong kind (a file where a folder
is expected, a folder of images where a feature store is expected, an image where a head file is
expected), is bad usage (exit status 2), refused in well under a second; what goes wrong while
working (a damaged store, a file that exists but cannot be read as a head) is a failure (1).
`PATHS` declares, per command, which arguments are paths of which kind.
"""
from __future__ import annotations

import os
from pathlib import Path

from ..decode.formats import IMAGE_EXTENSIONS
from ..errors import UsageError

# command -> [(argument, kind)]; an argument may hold one path or a list of them
PATHS = {
    "featurize": [("data_dir", "images"), ("labels", "csv"), ("backbone", "backbone"), ("weights", "weights")],
    "predict-imagenet": [("images", "image"), ("backbone", "backbone"), ("weights", "weights")],
    "train": [("features_dir", "store"), ("groups", "csv")],
    "score": [("model", "head"), ("data_dir", "images_or_store")],
    "evaluate": [("model", "head"), ("features_dir", "store")],
    "compare": [("features_dirs", "store")],
    "split": [("features_dir", "store"), ("groups", "csv")],
    "suspects": [("features_dir", "store")],
    "convert": [("model", "head")],
    "export": [("model", "head")],
    "export-features": [("features_dir", "store")],
    "import-features": [("file", "file")],
    "verify": [("features_dir", "store")],
    "serve": [("model", "served")],
    "audit": [("features_dir", "store"), ("features_dir2", "store")],
}

_STORE_FILES = ("meta.json", "rows.jsonl", "segments", "parts")  # any of them: a store, maybe damaged


def check_paths(command: str, args) -> None:
    """Raise UsageError for the first path argument of `command` that is missing or of the wrong kind."""
    for name, kind in PATHS.get(command, ()):
        value = getattr(args, name, None)
        for path in (value if isinstance(value, list) else [value]):
            if path is not None:
                CHECKS[kind](str(path), command, args)


def _missing(path: str, what: str, fix: str = "") -> None:
    if not os.path.lexists(path):
        raise UsageError(f"{what} {path!r} does not exist" + (f"; {fix}" if fix else ""))
    if not os.path.exists(path):
        raise UsageError(f"{what} {path!r} is a symlink to {os.readlink(path)!r}, which does not exist")


def _is_image(path: str) -> bool:
    return os.path.splitext(path)[1].lower() in IMAGE_EXTENSIONS


def _images(path: str, command: str, args) -> None:
    from ..dataset.sources import is_uri

    if is_uri(path):
        return  # s3://, gs://, file://: listed by the engine
    _missing(path, "data folder")
    if not os.path.isdir(path):
        raise UsageError(f"{path} is a file, not a folder; {command} takes a folder of images")


def _images_or_store(path: str, command: str, args) -> None:
    from ..dataset.sources import is_uri

    if is_uri(path):
        return
    _missing(path, "data folder")
    if os.path.isdir(path):
        return
    what = "an image" if _is_image(path) else "a file"
    raise UsageError(f"{path} is {what}, not a folder; score takes a folder of images (or a feature store) and "
                     f"writes one CSV row per image: put the image in a folder, or for one image use "
                     f"`python -m pipeline serve {args.model}` (POST /predict), or `python -m pipeline "
                     f"predict-imagenet {path}` for the ImageNet classes")


def _store(path: str, command: str, args) -> None:
    _missing(path, "feature store", f"featurize a folder of images into it first (`python -m pipeline featurize "
                                    f"DATA_DIR --out {path}`)")
    root = Path(path)
    if not root.is_dir():
        hint = ""
        if path.endswith((".head.npz", ".joblib")):
            hint = "; it looks like a head file (train writes those from a store)"
        elif root.suffix in (".parquet", ".npz"):
            hint = (f"; a {root.suffix} file of features becomes a store with `python -m pipeline import-features "
                    f"{path} --out features/NAME`")
        raise UsageError(f"{path} is a file, not a feature store (a folder written by featurize){hint}")
    if any((root / name).exists() for name in _STORE_FILES):
        return  # a store, possibly damaged: opening it says what is wrong (a failure, 1)
    from ..store.reader import not_a_store

    raise UsageError(not_a_store(root))


def _head(path: str, command: str, args) -> None:
    _missing(path, "model file", "train one with `python -m pipeline train`")
    if os.path.isdir(path):
        hint = " (export writes it; `serve` runs it)" if os.path.isfile(os.path.join(path, "saved_model.pb")) else ""
        raise UsageError(f"{path} is a folder{hint}, not a head file; {command} takes the .head.npz file that "
                         f"`python -m pipeline train --out` wrote")
    if _is_image(path):
        raise UsageError(f"{path} is an image, not a head file; {command} takes the .head.npz file that "
                         f"`python -m pipeline train --out` wrote, then the images")


def _served(path: str, command: str, args) -> None:
    _missing(path, "model")
    if _is_image(path):
        raise UsageError(f"{path} is an image, not a model; serve takes a .head.npz head, or a SavedModel folder "
                         f"or .tflite file written by `python -m pipeline export`")


def _image(path: str, command: str, args) -> None:
    _missing(path, "image")
    if os.path.isdir(path):
        raise UsageError(f"{path} is a folder; {command} takes image files (e.g. {os.path.join(path, '*.jpg')})")


def _file(what: str):
    def check(path: str, command: str, args) -> None:
        _missing(path, what)
        if os.path.isdir(path):
            raise UsageError(f"{what} {path} is a folder, not a file")
    return check


def _backbone(value: str, command: str, args) -> None:
    """A --backbone that names a file (.tflite, .pb, a path): it must exist; registry names are checked later."""
    if value.startswith("hub:") or "://" in value:
        return
    if value.endswith((".tflite", ".pb", ".keras", ".h5")) or os.sep in value:
        _missing(value, "backbone")


def _weights(value: str, command: str, args) -> None:
    if value.endswith(".h5") or os.sep in value:
        _missing(value, "weights file")


CHECKS = {"images": _images, "images_or_store": _images_or_store, "store": _store, "head": _head,
          "served": _served, "image": _image, "csv": _file("CSV file"), "file": _file("file"),
          "backbone": _backbone, "weights": _weights}
