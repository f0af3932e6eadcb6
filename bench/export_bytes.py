"""How much TensorFlow's decoding (the ``predict_bytes`` signature of an export) changes predictions.

    python bench/export_bytes.py [--shared ../shared (or $TFP_SHARED)] [--backbone mobilenet_v2_quant]
                                 [--weights random] [--limit N]

On ../shared/data/catsdogs/train: every image is decoded twice, by the project's Pillow decoder
(pipeline/decode/images.py) and by pipeline/decode/tfdecode.py (the ops ``predict_bytes`` runs). A calibrated
linear SVM (C=0.01) is trained on the Pillow features of one half of the images and scores the
other half, both ways round (2 folds). Printed: the pixel difference, max and mean |delta p|,
and the share of images whose predicted class is the same.

With a TensorFlow backbone (a Keras application, e.g. ``--backbone mobilenet_v2 --weights random``
offline) the head is exported as a SavedModel and the TF side is the real ``predict_bytes``
signature run on the files' bytes; with the bundled TFLite backbone (which exports to TFLite only)
the TF-decoded pixels go through the same quantized network as the Pillow ones.
"""
from __future__ import annotations

import argparse
import os
import sys
import tempfile
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from pipeline.backbones import create_backbone  # noqa: E402
from pipeline.dataset.listing import list_images  # noqa: E402
from pipeline.decode.images import decode  # noqa: E402
from pipeline.heads.arrayhead import export as to_arrays  # noqa: E402
from pipeline.heads.classifier import Classifier  # noqa: E402
from pipeline.training.selection import make_head  # noqa: E402


def tf_pixels(blobs, pre):
    import tensorflow as tf

    from pipeline.decode.tfdecode import decode_image

    fn = tf.function(lambda d: decode_image(d, pre))
    return np.stack([fn(tf.constant(b)).numpy() for b in blobs])


def batched(fn, items, size=32):
    return np.concatenate([fn(items[i:i + size]) for i in range(0, len(items), size)])


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--shared", default=os.environ.get("TFP_SHARED", str(REPO.parent / "shared")))
    p.add_argument("--backbone", default="mobilenet_v2_quant")
    p.add_argument("--weights", default=None)
    p.add_argument("--limit", type=int, default=0, help="use every k-th image so that about N are used")
    a = p.parse_args()
    listing = list_images(Path(a.shared) / "data" / "catsdogs" / "train")
    records = listing.records
    if a.limit and a.limit < len(records):
        records = records[::len(records) // a.limit]
    blobs = [r.path.read_bytes() for r in records]
    labels = np.asarray([r.label for r in records])
    bb = create_backbone(a.backbone, "penultimate", weights=a.weights)
    pil = np.stack([decode(b, bb.preprocess) for b in blobs])
    tfp = tf_pixels(blobs, bb.preprocess)
    diff = np.abs(pil.astype(int) - tfp)
    print(f"{len(blobs)} images, {bb.name}: pixels differ by at most {diff.max()} "
          f"({(diff > 0).mean():.1%} of values differ, mean {diff.mean():.3f})")
    X = batched(bb, pil)
    p_pil, p_tf = np.zeros((len(X), 2)), np.zeros((len(X), 2))
    idx = np.arange(len(X))
    with tempfile.TemporaryDirectory() as tmp:
        for fold, (tr, te) in enumerate(((idx % 2 == 0, idx % 2 == 1), (idx % 2 == 1, idx % 2 == 0))):
            model = make_head("linear_svm", C=0.01, calibrate=True).fit(X[tr], labels[tr])
            clf = Classifier(to_arrays(model), model.classes_, bb.spec())
            p_pil[te] = clf.predict_proba(X[te])
            p_tf[te] = tf_side(clf, bb, [b for b, t in zip(blobs, te) if t], tfp[te], Path(tmp) / f"m{fold}")
    dp = np.abs(p_pil - p_tf)
    same = (p_pil.argmax(1) == p_tf.argmax(1)).mean()
    acc = (np.asarray(clf.classes_)[p_pil.argmax(1)] == labels).mean()
    print(f"held-out accuracy (Pillow) {acc:.1%}; max |dp| {dp.max():.2e}, mean |dp| {dp.mean():.2e}; "
          f"same prediction for {same:.2%} ({int(round((1 - same) * len(X)))} of {len(X)} differ)")
    for i in np.flatnonzero(p_pil.argmax(1) != p_tf.argmax(1)):
        print(f"  differs: {records[i].relpath}: p({clf.classes_[1]}) "
              f"{p_pil[i, 1]:.3f} (Pillow) vs {p_tf[i, 1]:.3f} (TF)")


def tf_side(clf, bb, blobs, pixels, out):
    """Probabilities the TensorFlow path gives: predict_bytes of a SavedModel, or TF pixels through bb."""
    if bb.kind == "tflite":
        return clf.predict_proba(batched(bb, pixels))
    import tensorflow as tf

    sig = tf.saved_model.load(str(clf.export(out))).signatures["predict_bytes"]
    return batched(lambda b: sig(images=tf.constant(b))["probabilities"].numpy(), blobs)


if __name__ == "__main__":
    main()
