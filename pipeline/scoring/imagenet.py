"""ImageNet predictions with class names, offline (the label list ships with the package)."""
from __future__ import annotations

from dataclasses import replace

import numpy as np

from ..backbones import DATA_DIR, build_backbone, create_backbone
from ..decode.images import load_image
from ..errors import BackboneError, UsageError
from ..featurizer.mapper import map_in_batches
from ..options import BackboneOptions

LABELS_FILE = DATA_DIR / "imagenet_labels.txt"


def imagenet_labels(num_classes: int) -> list[str]:
    """Names for a 1001-way (index 0 = background) or 1000-way ImageNet output."""
    labels = LABELS_FILE.read_text(encoding="utf-8").splitlines()
    if num_classes == 1001:
        return labels
    if num_classes == 1000:
        return labels[1:]
    raise BackboneError(f"the backbone has {num_classes} outputs; ImageNet names exist for 1000 or 1001 classes")


def softmax(z: np.ndarray) -> np.ndarray:
    z = z - z.max(axis=1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=1, keepdims=True)


def predict_imagenet(images, backbone="mobilenet_v2_quant", top: int = 5, weights=None, classes=None, **options):
    """[(path, [(label, probability), ...top]), ...] for each image file.

    `classes`: ImageNet names (matched as in pipeline/training/zeroshot.py: case, ``_``/``-``/space, any
    synonym of a label line) to choose among: the softmax of their logits (the network's probabilities
    renormalised over them), labelled with the names as given; a UsageError names those that match no label.

    `backbone`: a name (with `weights` and BackboneOptions fields as keywords), a BackboneOptions
    (pipeline.options; its layer is ignored: the logits are read) or a ready Backbone."""
    if isinstance(backbone, BackboneOptions):
        bb = build_backbone(replace(backbone, **({"weights": weights} if weights else {}), **options), "logits")
    else:
        bb = create_backbone(backbone, "logits", weights, **options) if isinstance(backbone, str) else backbone
    bb.load()
    names = imagenet_labels(bb.num_classes or bb.dim)
    keep = _class_indices(classes, names) if classes else None
    images = list(images)
    if not images:
        return []
    logits = map_in_batches(bb, len(images), lambda a, b: np.stack([load_image(p, bb.preprocess) for p in images[a:b]]))
    if keep is not None:
        logits, names = logits[:, keep], list(classes)
    proba = softmax(logits)
    return [(str(path), [(names[i], float(row[i])) for i in np.argsort(-row)[:top]]) for path, row in zip(images, proba)]


def _class_indices(classes, names: list[str]) -> list[int]:
    """The label rows of `classes`; a UsageError naming the classes that match none (or the same one)."""
    from ..training.zeroshot import imagenet_indices, normalise

    found = imagenet_indices(classes, names)
    if found is None:
        lookup = {normalise(s) for line in names for s in line.split(",")}
        bad = [c for c in classes if normalise(c) not in lookup] or list(classes)
        raise UsageError(f"--classes: {', '.join(bad)} match no ImageNet label (or two classes name the same one); "
                         f"use names from pipeline/data/imagenet_labels.txt, e.g. 'golden retriever', 'tabby'")
    return found
