"""Out-of-distribution flags on real photos: how often a head flags images unlike its training images.

    python bench/ood.py [--shared ../shared (or $TFP_SHARED)] [--features features/bench-ood] [--seeds 5]

Featurizes (once, cached in --features) ../shared/data/catsdogs/train, the bundled cars photos
(pipeline/data/cars: 7 test and 20 training photos, the same as ../shared/data/cars) and
../shared/data/catbreeds with the bundled mobilenet_v2_quant (penultimate). Then, for each seed, trains
heads the way ``train --holdout 0.2 --split stratified --seed S`` does (logreg, C=0.1) and prints the
share of images each head's OOD summary flags (pipeline/heads/ood.py):

* a cats/dogs head: its held-out cats and dogs (in distribution), the car photos (out of distribution),
  and the catbreeds cats (another set of cat photos: in distribution, a sanity check);
* a catbreeds head (five cat breeds): its held-out cats, the catsdogs dogs (near out of distribution:
  the same kind of photo, another animal) and the catsdogs cats.

It also prints the head file's size with and without the summary. ``--compare`` also prints, on the same
splits, the held-out and out-of-distribution shares of other choices calibrated the same way (k = 1 and 10,
and the cosine distance to one centroid per class). Figures: BENCHMARKS.md (accuracy).
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

import pipeline  # noqa: E402
from pipeline.dataset.splits import validation_mask  # noqa: E402
from pipeline.heads.ood import FOLDS, QUANTILE, l2_normalise, summarize  # noqa: E402


def stores(shared: Path, root: Path) -> dict:
    sets = {"catsdogs": (shared / "data" / "catsdogs" / "train", {}),
            "cars": (REPO / "pipeline" / "data" / "cars", {"labelled": False}),
            "catbreeds": (shared / "data" / "catbreeds" / "images",
                          {"labels": shared / "data" / "catbreeds" / "labels.csv"})}
    return {name: pipeline.featurize(folder, "mobilenet_v2_quant", "penultimate", out=root / name, progress=False,
                                     **kw) for name, (folder, kw) in sets.items()}


def held_out(store, seed: int):
    """(head trained as `train --holdout 0.2 --split stratified --seed S`, its held-out features)."""
    clf = pipeline.train(store, head="logreg", C=0.1, holdout=0.2, split="stratified", seed=seed)
    X, y, rows = store.labelled(with_rows=True)
    return clf, X[validation_mask(rows, y, 0.2, "stratified", seed=seed)]


def flagged(clf, X) -> tuple[int, int]:
    return int(clf.ood(X).flagged.sum()), len(X)


def rate(counts) -> str:
    k, n = map(sum, zip(*counts))
    return f"{k}/{n} ({k / n:.1%})"


def centroid_distance(X, y, Q) -> np.ndarray:
    """Cosine distance of each row of Q to the nearest class centroid of the L2-normalised X."""
    Z = l2_normalise(X)
    mu = l2_normalise(np.stack([Z[y == c].mean(0) for c in np.unique(y)]))
    return 1 - (l2_normalise(Q) @ mu.T).max(1)


def centroid_flags(X, y, seed: int):
    """A flagger: centroids of X, threshold calibrated on held-out folds as summarize() does."""
    from sklearn.model_selection import KFold

    held = np.concatenate([centroid_distance(X[a], y[a], X[b])
                           for a, b in KFold(FOLDS, shuffle=True, random_state=seed).split(X)])
    t = np.quantile(held, QUANTILE)
    return lambda Q: centroid_distance(X, y, Q) > t


def compare(store, others: dict, seeds: int) -> None:
    """Held-out and other sets' flagged shares of k = 1, 5, 10 and of class centroids, on the bench's splits."""
    X, y, rows = store.labelled(with_rows=True)
    counts = {}
    for seed in range(seeds):
        valid = validation_mask(rows, y, 0.2, "stratified", seed=seed)
        flaggers = {f"knn k={k}": (lambda Q, s=summarize(X[~valid], y[~valid], seed=seed, k=k): s.score(Q).flagged)
                    for k in (1, 5, 10)}
        flaggers["class centroids"] = centroid_flags(X[~valid], y[~valid], seed)
        for name, flag in flaggers.items():
            for key, Q in {"held-out": X[valid], **others}.items():
                counts.setdefault(name, {}).setdefault(key, []).append((int(flag(Q).sum()), len(Q)))
    for name, c in counts.items():
        print(f"  {name:<16}" + "; ".join(f"{key} {rate(v)}" for key, v in c.items()))


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--shared", default=os.environ.get("TFP_SHARED", str(REPO.parent / "shared")))
    p.add_argument("--features", default=str(REPO / "features" / "bench-ood"))
    p.add_argument("--seeds", type=int, default=5)
    p.add_argument("--compare", action="store_true", help="also compare k = 1, 10 and class centroids")
    a = p.parse_args()
    shared = Path(a.shared)
    if not (shared / "data" / "catsdogs").is_dir():
        sys.exit(f"{shared / 'data'} is absent: this benchmark needs ../shared")
    s = stores(shared, Path(a.features))
    cars = s["cars"]
    test = np.array([q.startswith("test/") for q in cars.paths])
    cd_X, cd_y = s["catsdogs"].labelled()
    breeds_X = s["catbreeds"].labelled()[0]
    out = {k: [] for k in ("cd_heldout", "cars_test", "cars_train", "breeds", "cb_heldout", "dogs", "cats")}
    for seed in range(a.seeds):
        clf, held = held_out(s["catsdogs"], seed)
        for key, X in (("cd_heldout", held), ("cars_test", cars.features[test]), ("cars_train", cars.features[~test]),
                       ("breeds", breeds_X)):
            out[key].append(flagged(clf, X))
        clf_b, held_b = held_out(s["catbreeds"], seed)
        for key, X in (("cb_heldout", held_b), ("dogs", cd_X[cd_y == "dogs"]), ("cats", cd_X[cd_y == "cats"])):
            out[key].append(flagged(clf_b, X))
        print(f"seed {seed}: cats/dogs head threshold {clf.ood_summary.threshold:.4f}, car test photos flagged "
              f"{out['cars_test'][-1][0]}/7, held-out cats/dogs {out['cd_heldout'][-1][0]}/{len(held)}", flush=True)
    print(f"\nmobilenet_v2_quant penultimate, logreg C=0.1, holdout 0.2 stratified, seeds 0-{a.seeds - 1} (summed):")
    print(f"cats/dogs head:  held-out cats/dogs flagged {rate(out['cd_heldout'])}; car test photos {rate(out['cars_test'])}; "
          f"car training photos {rate(out['cars_train'])}; catbreeds cats {rate(out['breeds'])}")
    print(f"catbreeds head:  held-out catbreeds flagged {rate(out['cb_heldout'])}; catsdogs dogs {rate(out['dogs'])}; "
          f"catsdogs cats {rate(out['cats'])}")
    with tempfile.TemporaryDirectory() as tmp:
        with_summary = clf.save(Path(tmp) / "a.head.npz").stat().st_size
        clf.ood_summary = None
        without = clf.save(Path(tmp) / "b.head.npz").stat().st_size
    print(f"head file: {with_summary / 1e6:.2f} MB with the OOD summary, {without / 1e6:.3f} MB without")
    if a.compare:
        print("\ncats/dogs heads, other choices (same splits, summed over the seeds):")
        compare(s["catsdogs"], {"car test photos": cars.features[test], "catbreeds cats": breeds_X}, a.seeds)
        print("catbreeds heads:")
        compare(s["catbreeds"], {"catsdogs dogs": cd_X[cd_y == "dogs"], "catsdogs cats": cd_X[cd_y == "cats"]},
                a.seeds)


if __name__ == "__main__":
    main()
