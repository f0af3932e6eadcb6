"""Log loss of each head's cross-validated probabilities on ../shared/data/catsdogs (penultimate features).

    python bench/calibration.py [--shared ../shared (or $TFP_SHARED)] [--features features/bench-catsdogs-penultimate]

Featurizes catsdogs/train with the bundled MobileNetV2 once (cached in --features), then prints,
per head at the reference protocol's C, the 5-fold cross-validated accuracy and log loss of the
calibrated probabilities (the same figures `train --report` shows).
"""
from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import pipeline  # noqa: E402
from pipeline.training.evaluation import cross_validated  # noqa: E402

HEADS = (("linear_svm", 0.01), ("svm", 1.0), ("logreg", 0.1))


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--shared", default=os.environ.get("TFP_SHARED", str(REPO.parent / "shared")))
    p.add_argument("--features", default=str(REPO / "features" / "bench-catsdogs-penultimate"))
    a = p.parse_args()
    data = Path(a.shared) / "data" / "catsdogs" / "train"
    if not data.is_dir():
        sys.exit(f"{data} is absent: this benchmark needs ../shared")
    store = pipeline.featurize(data, "mobilenet_v2_quant", "penultimate", out=a.features, progress=False)
    print(f"catsdogs/train: {len(store)} images, penultimate features of mobilenet_v2_quant, 5-fold CV, seed 0")
    for head, C in HEADS:
        m = cross_validated(store, head, C, folds=5, seed=0)[0]
        print(f"{head:<11} C={C:<5g} accuracy {m['accuracy']:.4f}  log loss {m['log_loss']:.4f}")


if __name__ == "__main__":
    main()
