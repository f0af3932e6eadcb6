"""ImageNet predictions with class names, offline (the label list ships with the package)."""
from __future__ import annotations

from dataclasses import replace

import numpy as np

from ..backbones import DATA_DIR, build_backbone, create_backbone
from ..decode.images import load_image
from ..errors import BackboneError
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


def predict_imagenet(images, backbone="mobilenet_v2_quant", top: int = 5, weights=None, **options):
    """[(path, [(label, probability), ...top]), ...] for each image file.

    `backbone`: a name (with `weights` and BackboneOptions fields as keywords), a BackboneOptions
    (pipeline.options; its layer is ignored: the logits are read) or a ready Backbone."""
    if isinstance(backbone, BackboneOptions):
        bb = build_backbone(replace(backbone, **({"weights": weights} if weights else {}), **options), "logits")
    else:
        bb = create_backbone(backbone, "logits", weights, **options) if isinstance(backbone, str) else backbone
    bb.load()
    names = imagenet_labels(bb.num_classes or bb.dim)
    images = list(images)
    if not images:
        return []
    proba = softmax(map_in_batches(bb, len(images),
                                   lambda a, b: np.stack([load_image(p, bb.preprocess) for p in images[a:b]])))
    return [(str(path), [(names[i], float(row[i])) for i in np.argsort(-row)[:top]]) for path, row in zip(images, proba)]
