"""Batch scoring: every image below a folder -> a CSV of predictions and class probabilities."""
from __future__ import annotations

import csv
import os
import re
from pathlib import Path

import numpy as np

from .backbones import backbone_from_spec
from .classifier import Classifier, load
from .runner import default_store_path, featurize


def score(model, data_dir, out, *, cache=None, kaggle: str | None = None, clip: float | None = None,
          progress: bool = True, workers: int | None = None, trusted: bool = False):
    """Featurize `data_dir` (all sub-folders, reusing the cache) with the head's backbone and write `out`.

    Default CSV: ``path,prediction,<one probability column per class>``. With `kaggle`=CLASS:
    ``id,label`` where label is the probability of CLASS clipped to [clip, 1 - clip] and id comes
    from the file name (the Dogs vs Cats Redux submission format). Returns the RunReport.
    trusted: also load an old pickle-based head file (see pipeline.load).
    """
    clf = model if isinstance(model, Classifier) else load(model, trusted=trusted)
    bb = backbone_from_spec(clf.spec)
    cache = Path(cache) if cache else default_store_path(data_dir, bb)
    run = featurize(data_dir, bb, out=cache, labelled=False, progress=progress, workers=workers, report=True)
    store = run.store
    clf.check_spec(store.spec, str(store.root))
    wanted = set(run.listed)  # the store may also hold rows of images since removed
    keep = [i for i, p in enumerate(store.paths) if p in wanted]
    paths = [store.paths[i] for i in keep]
    proba = clf.predict_proba(store.features[keep]) if keep else np.zeros((0, len(clf.classes_)))
    if kaggle is not None:
        _write_kaggle(out, paths, proba, clf.classes_, kaggle, clip)
    else:
        _write_predictions(out, paths, proba, clf.classes_)
    return run


def _write_predictions(out, paths, proba, classes):
    Path(out).parent.mkdir(parents=True, exist_ok=True)
    with open(out, "w", newline="", encoding="utf-8") as f:
        w = csv.writer(f)
        w.writerow(["path", "prediction", *classes])
        for p, row in zip(paths, proba):
            w.writerow([p, classes[int(np.argmax(row))], *(f"{v:.6f}" for v in row)])


def kaggle_id(path: str) -> str:
    """'test/1234.jpg' -> '1234'."""
    return os.path.splitext(path.rsplit("/", 1)[-1])[0]


def _write_kaggle(out, paths, proba, classes, column, clip):
    classes = [str(c) for c in classes]
    if column not in classes:
        raise ValueError(f"--kaggle {column!r} is not a class of this head; classes: {', '.join(classes)}")
    p = proba[:, classes.index(column)]
    if clip:
        p = np.clip(p, clip, 1.0 - clip)
    ids = [kaggle_id(x) for x in paths]
    order = sorted(range(len(ids)), key=lambda i: (int(ids[i]) if re.fullmatch(r"\d+", ids[i]) else float("inf"), ids[i]))
    Path(out).parent.mkdir(parents=True, exist_ok=True)
    with open(out, "w", newline="", encoding="utf-8") as f:
        w = csv.writer(f)
        w.writerow(["id", "label"])
        for i in order:
            w.writerow([ids[i], f"{p[i]:.6f}"])
