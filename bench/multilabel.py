"""Multi-label on real photos: ../shared/data/catbreeds with tags = breed + a coarse group.

    python bench/multilabel.py [--shared ../shared (or $TFP_SHARED)] [--work /tmp/multilabel-bench]

Writes a tags CSV (``abyssinian non_american``, ``american_curl american``, ...), featurizes the
photos with the bundled MobileNetV2's logits (``featurize --multi-label``, cached in --work), holds
out 30% by the stable hash split of ``train --holdout 0.3``, and prints the held-out micro-F1 of
  - a plain StandardScaler + one-vs-rest LogisticRegression(C) at threshold 0.5, and at the single
    threshold that is best on the held-out images themselves (an oracle no user has),
  - this project's multi-label heads (logreg and linear_svm, C auto; per-tag thresholds tuned by 5-fold CV
    on the training part), with the seconds each took to train (C auto fits 5 C x 5 folds x 7 tags).
"""
from __future__ import annotations

import argparse
import csv
import json
import os
import sys
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

GROUP = {"Abyssinian": "non_american"}  # the four others are American breeds
THRESHOLDS = np.round(np.arange(0.02, 0.981, 0.02), 2)


def write_tags(catbreeds: Path, out: Path) -> Path:
    with open(catbreeds / "labels.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    with open(out, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["id", "tags"])
        for r in rows:
            w.writerow([r["id"], f"{r['breed'].lower().replace(' ', '_')} {GROUP.get(r['breed'], 'american')}"])
    return out


def plain_ovr(X, Y, train, valid, C: float) -> dict:
    """StandardScaler + OneVsRestClassifier(LogisticRegression(C)): micro-F1 at 0.5 and at the held-out-best threshold."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.metrics import f1_score
    from sklearn.multiclass import OneVsRestClassifier
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    model = make_pipeline(StandardScaler(), OneVsRestClassifier(LogisticRegression(C=C, max_iter=5000)))
    P = model.fit(X[train], Y[train]).predict_proba(X[valid])
    f1 = {float(t): f1_score(Y[valid], P >= t, average="micro", zero_division=0) for t in THRESHOLDS}
    best = max(f1, key=f1.get)
    return {"C": C, "at_0.5": float(f1_score(Y[valid], P >= 0.5, average="micro")), "best_single": float(f1[best]),
            "best_threshold": best}


def measure(catbreeds, work, heads=(("logreg", "auto"), ("linear_svm", "auto")), reuse_from=None) -> dict:
    """Featurize (cached in `work`; `reuse_from`: a store of the same logits to take them from), split, and
    return the held-out micro-F1 figures."""
    import pipeline
    from pipeline.dataset.splits import validation_mask
    from pipeline.training.multilabel import tag_matrix, tags_of

    catbreeds, work = Path(catbreeds), Path(work)
    work.mkdir(parents=True, exist_ok=True)
    tags = write_tags(catbreeds, work / "tags.csv")
    store = pipeline.featurize(catbreeds / "images", "mobilenet_v2_quant", "logits", out=work / "features",
                               labels=tags, label_column="tags", multi_label=True, progress=False,
                               reuse_from=reuse_from)
    X, y, rows = store.labelled(with_rows=True)
    classes = tags_of(y)
    Y = tag_matrix(y, classes)
    valid = validation_mask(rows, y, 0.3, "hash", None, None, 0)
    train = ~valid
    out = {"n_train": int(train.sum()), "n_valid": int(valid.sum()), "tags": classes}
    for C in (0.1, 1.0):
        out[f"plain_C{C:g}"] = plain_ovr(X, Y, train, valid, C)
    out["plain_0.5"] = max(out[f"plain_C{C:g}"]["at_0.5"] for C in (0.1, 1.0))
    out["single_oracle"] = max(out[f"plain_C{C:g}"]["best_single"] for C in (0.1, 1.0))
    for head, C in heads:
        start = time.perf_counter()
        clf = pipeline.train(store, head=head, C=C, holdout=0.3)
        v = clf.metrics["validation"]
        out[f"{head}_C{C}"] = {"train_s": round(time.perf_counter() - start, 1), "C": clf.metrics["C"], "micro_f1": v["micro_f1"], "macro_f1": v["macro_f1"],
                     "micro_f1_at_0.5": v["micro_f1_at_0.5"], "mean_average_precision": v["mean_average_precision"],
                     "thresholds": clf.metrics["thresholds"]}
    out["tuned"] = max(out[f"{h}_C{C}"]["micro_f1"] for h, C in heads)
    return out


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--shared", default=os.environ.get("TFP_SHARED", str(REPO.parent / "shared")))
    p.add_argument("--work", default=str(REPO / "features" / "bench-multilabel"))
    a = p.parse_args()
    print(json.dumps(measure(Path(a.shared) / "data" / "catbreeds", a.work), indent=1))


if __name__ == "__main__":
    main()
