"""Encoded images -> an exported .tflite with real ImageNet weights: TensorFlow decoding vs Pillow's.

    python bench/export_tflite_bytes.py [--shared ../shared (or $TFP_SHARED)]
        [--backbones mobilenet_v2_quant,tf2_mobilenet_v2_1.0_224_ptq.tflite,mobilenet_v1_1.0_224_quant_embedding_extractor.tflite]
        [--test-fraction 0.5] [--head linear_svm|logreg]

What a TFLite export can be measured on. A TFLite backbone cannot go into a SavedModel (so it has
no ``predict_bytes`` signature), and a ``.tflite`` file cannot decode images itself: TFLite's
built-in operators have no JPEG/PNG decoding or string ops (TensorFlow's would have to ride along
as "select TF ops", which plain LiteRT runtimes and phones without the Flex library cannot run).
Whoever deploys it decodes first. This script measures the two ways they can: the project's
Pillow decoder (what ``serve`` does) and TensorFlow's (pipeline/decode/tfdecode.py: the very ops
``predict_bytes`` runs in a SavedModel export), each feeding the exported file's
``serving_default`` signature, run by LiteRT's interpreter.

catsdogs (../shared/data/catsdogs/train: the only folder it has) is split by the project's own
stratified hash split (pipeline/dataset/splits.py, seed 0) into a training and a test part. For each
bundled real-weights backbone (penultimate layer), a calibrated head is trained on the Pillow
features of the training part, exported with ``Classifier.export(format="tflite")`` (the backbone
stays quantized), and the test part is scored three ways: predict_proba on Pillow pixels (the
reference), the .tflite on the same Pillow pixels (export equality), and the .tflite on
TensorFlow-decoded pixels (the bytes path). Printed: accuracy, max |delta p| of both, mean
|delta p| and the share of same predictions of the bytes path, and each image whose prediction changes.
"""
from __future__ import annotations

import argparse
import hashlib
import os
import sys
import tempfile
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from pipeline.backbones import create_backbone  # noqa: E402
from pipeline.dataset.listing import list_images  # noqa: E402
from pipeline.dataset.splits import validation_mask  # noqa: E402
from pipeline.decode.images import decode  # noqa: E402
from pipeline.heads.arrayhead import export as to_arrays  # noqa: E402
from pipeline.heads.classifier import Classifier  # noqa: E402
from pipeline.training.selection import make_head  # noqa: E402

BACKBONES = ("mobilenet_v2_quant", "tf2_mobilenet_v2_1.0_224_ptq.tflite",
             "mobilenet_v1_1.0_224_quant_embedding_extractor.tflite")


def split(root: Path, fraction: float):
    """(records, blobs, labels, test mask): the project's stratified hash split of the labelled folder."""
    records = list_images(root).records
    blobs = [r.path.read_bytes() for r in records]
    labels = np.asarray([r.label for r in records])
    rows = [{"path": r.relpath, "sha256": hashlib.sha256(b).hexdigest()} for r, b in zip(records, blobs)]
    return records, blobs, labels, validation_mask(rows, labels, fraction, "stratified", seed=0)


def tf_pixels(blobs, pre):
    import tensorflow as tf

    from pipeline.decode.tfdecode import decode_image

    fn = tf.function(lambda d: decode_image(d, pre))
    return np.stack([fn(tf.constant(b)).numpy() for b in blobs])


def run_tflite(path: Path, pixels: np.ndarray):
    """Probabilities and class names from the exported file's serving_default, one image at a time."""
    from ai_edge_litert.interpreter import Interpreter

    runner = Interpreter(model_path=str(path), num_threads=os.cpu_count()).get_signature_runner("serving_default")
    out = [runner(images=p[None]) for p in pixels]
    return np.concatenate([o["probabilities"] for o in out]), [c.decode() for c in out[0]["classes"][0]]


def batched(fn, items, size=32):
    return np.concatenate([fn(items[i:i + size]) for i in range(0, len(items), size)])


def measure(name: str, models: Path, data, head: str, decoded: dict, tmp: Path) -> None:
    records, blobs, labels, test = data
    bb = create_backbone(name if name in BACKBONES[:1] else str(models / name), "penultimate")
    key = repr(bb.preprocess)
    if key not in decoded:  # the bundled backbones share one preprocessing: decode once
        pil = np.stack([decode(b, bb.preprocess) for b in blobs])
        decoded[key] = pil, tf_pixels([b for b, t in zip(blobs, test) if t], bb.preprocess)
    pil, tfp = decoded[key]
    X = batched(bb, pil)
    model = make_head(head, C=0.01, calibrate=True).fit(X[~test], labels[~test])
    clf = Classifier(to_arrays(model), model.classes_, bb.spec(), {"head": head})
    out = clf.export(tmp / f"{Path(name).stem}.tflite", format="tflite")
    ref = clf.predict_proba(X[test])
    p_pil, classes = run_tflite(out, pil[test])
    p_tf, _ = run_tflite(out, tfp)
    assert classes == list(clf.classes_), (classes, clf.classes_)
    dp, same = np.abs(p_tf - ref), (p_tf.argmax(1) == ref.argmax(1))
    acc = (clf.classes_[ref.argmax(1)] == labels[test]).mean()
    acc_tf = (clf.classes_[p_tf.argmax(1)] == labels[test]).mean()
    print(f"{Path(name).stem} ({bb.dim}-d, {out.stat().st_size / 1e6:.1f} MB export), {head}, trained on "
          f"{int((~test).sum())}, tested on {int(test.sum())}: accuracy {acc:.1%} (Pillow) / {acc_tf:.1%} (TF decode)")
    print(f"  .tflite on Pillow pixels vs predict_proba: max |dp| {np.abs(p_pil - ref).max():.2e}")
    print(f"  .tflite on TF-decoded pixels vs predict_proba: max |dp| {dp.max():.2e}, mean |dp| {dp.mean():.2e}; "
          f"same prediction for {same.mean():.2%} ({int((~same).sum())} of {len(same)} differ)")
    for i in np.flatnonzero(~same):
        print(f"    differs: {records[np.flatnonzero(test)[i]].relpath}: p({clf.classes_[1]}) "
              f"{ref[i, 1]:.3f} (Pillow) vs {p_tf[i, 1]:.3f} (TF)")


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--shared", default=os.environ.get("TFP_SHARED", str(REPO.parent / "shared")))
    p.add_argument("--backbones", default=",".join(BACKBONES), help="comma-separated: names or files in shared/models")
    p.add_argument("--test-fraction", type=float, default=0.5)
    p.add_argument("--head", default="linear_svm", choices=["linear_svm", "logreg"])
    a = p.parse_args()
    shared = Path(a.shared)
    data = split(shared / "data" / "catsdogs" / "train", a.test_fraction)
    diff = None
    decoded: dict = {}
    with tempfile.TemporaryDirectory() as tmp:
        for name in a.backbones.split(","):
            measure(name.strip(), shared / "models", data, a.head, decoded, Path(tmp))
            if diff is None:
                pil, tfp = next(iter(decoded.values()))
                diff = np.abs(pil[data[3]].astype(int) - tfp)
                print(f"  pixels of the {int(data[3].sum())} test images decoded both ways: differ by at most "
                      f"{diff.max()}, {(diff > 0).mean():.1%} of values differ, mean {diff.mean():.3f}")


if __name__ == "__main__":
    main()
