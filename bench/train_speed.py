"""Training time of `train`'s default head, today's code against main's, side by side in one run.

    python bench/train_speed.py [--base main|none] [--only single,multi,layers] [--n 700] [--classes 119]

Synthetic features shaped like the bundled MobileNetV2's penultimate layer on a 119-breed dog set:
700 training images x 1280 non-negative features, 119 classes (each at least once, the rest drawn at
random: a long tail of one-image classes), plus 300 held-out images of the same classes. Each side
runs in its own process: the base (``git archive BASE pipeline`` into a temporary folder) and this
worktree. Timed, per side:

- single: the default single-label train on the 700 images, C selection included (base: a linear SVM,
  C auto, GridSearchCV; here: head='auto', every candidate on one set of folds);
- multi: ``--multi-label`` logreg with C auto and per-tag thresholds on the same images, tags = the
  class + one of 12 groups (class index mod 12);
- layers: the default train on a store of the default featurize pass: three feature sets (the 1280
  penultimate features, 1001 synthetic class probabilities, their join) instead of one
  (``--base none --only single,layers``: this worktree only, both cases in one process).

It prints seconds (multi: wall and CPU), the chosen head and C, the held-out accuracy (micro-F1 for
multi-label) and the 1-minute load average before and after each side.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tarfile
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]


def synthetic(n=700, held=300, d=1280, k=119, seed=0):
    """(X_train, y_train, X_held, y_held): ReLU-like features, class centres plus noise."""
    rng = np.random.default_rng(seed)
    centres = rng.gamma(0.6, 1.0, size=(k, d))
    y = np.concatenate([np.arange(k), rng.integers(0, k, n + held - k)])
    X = np.maximum(0.45 * centres[y] + 1.5 * rng.gamma(0.6, 1.0, size=(len(y), d)) - 0.3, 0).astype(np.float32)
    names = np.array([f"breed_{i:03d}" for i in y])
    order = rng.permutation(len(y) - k) + k  # every class in the training part at least once
    train, test = np.concatenate([np.arange(k), order[: n - k]]), order[n - k:]
    return X[train], names[train], X[test], names[test]


def tags(names):
    return np.array([f"{c} group_{int(c.split('_')[1]) % 12:02d}" for c in names])


def run_single(X, y, Xt, yt) -> dict:
    t = time.perf_counter()
    try:
        from pipeline.training.train import fit_single
        from pipeline.options import HeadOptions

        est = fit_single(HeadOptions(), {"penultimate": X}, y)
    except ImportError:  # the base: today's default, FeatureHead() = linear SVM, C auto
        from pipeline.training.estimator import FeatureHead

        est = FeatureHead().fit(X, y)
    secs = time.perf_counter() - t
    m = est.metrics_
    return {"seconds": secs, "head": m["head"], "C": m["C"], "cv_accuracy": m.get("cv_accuracy"),
            "held_out_accuracy": float(np.mean(est.predict(Xt) == yt))}


def class_scores(names, k: int, width: int = 1001, seed: int = 1) -> np.ndarray:
    """Softmax 'predictions' of a network that half knows the classes: a class profile plus noise."""
    rng = np.random.default_rng(seed)
    profile = rng.normal(0, 1.5, size=(k, width))
    logits = profile[[int(c.split("_")[1]) for c in names]] + rng.normal(0, 2.0, size=(len(names), width))
    e = np.exp(logits - logits.max(axis=1, keepdims=True))
    return (e / e.sum(axis=1, keepdims=True)).astype(np.float32)


def run_layers(X, y, Xt, yt, k: int = 119) -> dict:
    from pipeline.options import HeadOptions
    from pipeline.training.train import fit_single

    P, Pt = class_scores(y, k), class_scores(yt, k, seed=2)
    sets = {"penultimate": X, "predictions": P, "penultimate+predictions": np.hstack([X, P])}
    held = {"penultimate": Xt, "predictions": Pt, "penultimate+predictions": np.hstack([Xt, Pt])}
    t = time.perf_counter()
    est = fit_single(HeadOptions(), sets, y)
    secs = time.perf_counter() - t
    m = est.metrics_
    return {"seconds": secs, "feature_set": m["feature_set"], "head": m["head"], "C": m["C"],
            "cv_accuracy": m.get("cv_accuracy"),
            "held_out_accuracy": float(np.mean(est.predict(held[m["feature_set"]]) == yt))}


def run_multi(X, y, Xt, yt) -> dict:
    try:
        from pipeline.training.multilabel import fit_multilabel, micro_f1, tag_matrix
    except ImportError:  # a base from before pipeline/training/ (heads/ held the training code)
        from pipeline.heads.multilabel import fit_multilabel, micro_f1, tag_matrix

    t, cpu = time.perf_counter(), time.process_time()
    model, m = fit_multilabel("logreg", X, tags(y), C="auto")
    secs, cpu = time.perf_counter() - t, time.process_time() - cpu
    Y = tag_matrix(tags(yt), [str(c) for c in model.classes_])
    clf = model.named_steps["clf"]
    return {"seconds": secs, "cpu_seconds": cpu, "C": m["C"], "cv_mean_ap": m["cv_scores"][str(m["C"])],
            "held_out_micro_f1": micro_f1(Y, model.predict_proba(Xt), clf.thresholds_),
            "held_out_micro_f1_at_0.5": micro_f1(Y, model.predict_proba(Xt), np.full(len(clf.thresholds_), 0.5))}


def side(which: str, a) -> None:
    X, y, Xt, yt = synthetic(a.n, a.held, a.dim, a.classes)
    out = {"side": which}
    for job in a.only.split(","):
        load = os.getloadavg()[0]
        out[job] = {"single": run_single, "multi": run_multi, "layers": run_layers}[job](X, y, Xt, yt)
        out[job]["load_average"] = [round(load, 1), round(os.getloadavg()[0], 1)]  # 1-min, before and after
        print(json.dumps({"side": which, job: out[job]}), flush=True)


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--base", default="main", help="the git revision to compare with (default main; none: no base)")
    p.add_argument("--only", default="single,multi")
    p.add_argument("--n", type=int, default=700)
    p.add_argument("--held", type=int, default=300)
    p.add_argument("--dim", type=int, default=1280)
    p.add_argument("--classes", type=int, default=119)
    p.add_argument("--side", help=argparse.SUPPRESS)
    a = p.parse_args()
    if a.side:
        return side(a.side, a)
    if a.base == "none":  # this worktree only
        return side("this worktree", a)
    with tempfile.TemporaryDirectory() as tmp:
        archive = Path(tmp) / "base.tar"
        subprocess.run(["git", "-C", str(REPO), "archive", "-o", str(archive), a.base, "pipeline"], check=True)
        with tarfile.open(archive) as t:
            t.extractall(Path(tmp) / "base", filter="data")
        print(f"{a.n} x {a.dim} features, {a.classes} classes ({a.held} held out); {os.cpu_count()} cores")
        for name, root in ((f"base ({a.base})", Path(tmp) / "base"), ("this worktree", REPO)):
            env = {**os.environ, "PYTHONPATH": str(root)}
            args = [sys.executable, __file__, "--side", name, "--only", a.only, "--n", str(a.n), "--held",
                    str(a.held), "--dim", str(a.dim), "--classes", str(a.classes)]
            subprocess.run(args, env=env, check=True, cwd=tmp)


if __name__ == "__main__":
    main()
