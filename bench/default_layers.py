"""Which class-score layer the default featurize pass should keep: held-out accuracy of `train`'s default
selection offered penultimate only (the old default), + predictions, or + logits, on catbreeds and catsdogs.

    python bench/default_layers.py [--shared ../shared (or $TFP_SHARED)] [--seeds 0,1,2] [--head auto|logreg]
                                   [--work /tmp/tfp-layers]

One three-layer featurize run per set (``--layer penultimate,logits,predictions``, one forward pass of the
bundled ``mobilenet_v2_quant``; kept in --work and reused), then per seed a stratified 30% holdout
(train's own split) and train's default selection (head auto, C auto: ``fit_single``, what ``train STORE``
runs; ``--head logreg`` pins the kind, minutes instead of an hour on a busy 2-core machine) offered one of
three menus of feature sets:

- ``penultimate``: the old default store;
- ``+ predictions``: penultimate, predictions, penultimate+predictions (the new default pass);
- ``+ logits``: penultimate, logits, penultimate+logits.

It prints one line per set, menu and seed (the chosen set, head and C, CV and held-out accuracy) and the
mean held-out accuracy per set and menu.
"""
from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

MENUS = {"penultimate": ("penultimate",), "+ predictions": ("penultimate", "predictions"),
         "+ logits": ("penultimate", "logits")}


def stores(shared: Path, work: Path) -> dict:
    """{set name: the penultimate FeatureStore of its three-layer run} (featurized once, then reused)."""
    from pipeline import featurize
    from pipeline.store import FeatureStore

    data = shared / "data"
    sets = {"catbreeds": (data / "catbreeds" / "images", data / "catbreeds" / "labels.csv"),
            "catsdogs": (data / "catsdogs" / "train", None)}
    out = {}
    for name, (folder, labels) in sets.items():
        first = work / f"{name}-penultimate"
        if not (first / "meta.json").is_file():
            featurize(folder, layer="penultimate,logits,predictions", out=work / f"{name}-{{layer}}",
                      labels=labels, progress=False)
        out[name] = FeatureStore.open(first)
    return out


def menu_sets(store, layers) -> dict:
    """{feature set name: features of the labelled rows}: the layers of `layers` and their join."""
    from pipeline.heads.featuresets import feature_sets

    keep, _, _ = store.labelled_rows()
    by = {s.name: s.features[keep] for s in feature_sets(store)}
    sets = {layer: by[layer] for layer in layers}
    if len(layers) == 2:
        sets[f"penultimate+{layers[1]}"] = np.hstack([by["penultimate"], by[layers[1]]])
    return sets


def one(store, layers, seed: int, head: str = "auto") -> dict:
    from pipeline.options import HeadOptions, SplitOptions
    from pipeline.training.train import _split_rows, fit_single

    _, y, rows = store.labelled_rows()
    sets = menu_sets(store, layers)
    train_idx, valid = _split_rows(rows, y, SplitOptions(holdout=0.3, split="stratified", seed=seed), None, seed)
    est = fit_single(HeadOptions(head, seed=seed), {k: v[train_idx] for k, v in sets.items()}, y[train_idx])
    m = est.metrics_
    held = float(np.mean(est.predict(sets[m["feature_set"]][valid]) == y[valid]))
    return {"chosen": m["feature_set"], "head": m["head"], "C": m["C"], "cv": m.get("cv_accuracy"), "held": held}


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--shared", default=os.environ.get("TFP_SHARED", REPO.parent / "shared"), type=Path)
    ap.add_argument("--seeds", default="0,1,2")
    ap.add_argument("--work", default="/tmp/tfp-layers", type=Path)
    ap.add_argument("--head", default="auto", help="auto (train's default) or one head kind")
    a = ap.parse_args(argv)
    seeds = [int(s) for s in a.seeds.split(",")]
    for name, store in stores(a.shared, a.work).items():
        for menu, layers in MENUS.items():
            held = []
            for seed in seeds:
                r = one(store, layers, seed, a.head)
                held.append(r["held"])
                print(f"{name:9} {menu:14} seed {seed}: {r['chosen']:24} {r['head']:10} C={r['C']!s:8} "
                      f"cv {r['cv']:.3f} held-out {r['held']:.3f}", flush=True)
            print(f"{name:9} {menu:14} mean held-out {np.mean(held):.4f} over {len(seeds)} seeds", flush=True)


if __name__ == "__main__":
    main()
