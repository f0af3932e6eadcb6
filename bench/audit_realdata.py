"""Near-duplicates on real photos: the threshold of `audit`, and planted train/test leaks found.

1. Threshold study. For the test part of each real set in ../shared/data (catsdogs, cars,
   catbreeds) it writes copies of every image re-encoded at JPEG quality 50 and 95, resized to 0.5x
   and 2x, centre-cropped to 80% and mirrored, featurizes originals and copies with the bundled
   MobileNetV2 (penultimate, 1280 floats), and prints the cosine similarity of each copy to its
   original against that of distinct photos of the same class: for each threshold, the share of
   copies found (recall) and the share of distinct same-class pairs and of images flagged.
2. Planted leaks. Each set is split into train and test (stratified, seed 0); one copy of each
   test image in two (the kinds in turn) is put into train with the test image's label; then
   ``pipeline.audit.audit(train, test)`` runs with its default threshold and the script prints the
   share of planted copies found, the share of distinct train/test pairs flagged, and the accuracy
   of a head trained on train, on all of test and on test without the leaked images.
3. Index recall. The approximate index (forced) against the exact search on all these features:
   recall@10 and the share of near-duplicate pairs found, at 4 and 8 lists probed.

    .venv/bin/python bench/audit_realdata.py [--data ../shared/data] [--work /tmp/tfp-audit-realdata]

The features are cached in --work (a second run only analyses). Figures: BENCHMARKS.md, "Near-duplicates and leaks".
"""
from __future__ import annotations

import argparse
import csv
import json
import sys
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

VARIANTS = ("jpeg50", "jpeg95", "half", "double", "crop80", "mirror")
SETS = {"catsdogs": 0.2, "cars": 0.3, "catbreeds": 0.2}  # test fraction
THRESHOLDS = (0.78, 0.80, 0.82, 0.83, 0.84, 0.85, 0.86, 0.88, 0.90, 0.92, 0.95, 0.98)


def image_root(data: Path, name: str) -> Path:
    return data / name / ("images" if name == "catbreeds" else "train")


def labelled_images(data: Path, name: str) -> dict[str, str | None]:
    """{path relative to the featurized folder: label or None}, as featurize names them."""
    root = image_root(data, name)
    exts = {".jpg", ".jpeg", ".png", ".bmp"}
    if name == "catbreeds":
        with open(data / name / "labels.csv", newline="") as f:
            labels = {r["id"]: r["breed"] for r in csv.DictReader(f)}
        return {p.name: labels.get(p.name) for p in sorted(root.iterdir()) if p.suffix.lower() in exts}
    return {p.relative_to(root).as_posix(): p.relative_to(root).parts[0]
            for p in sorted(root.rglob("*")) if p.suffix.lower() in exts}


def variant(im, kind: str):
    """A copy of the PIL image `im`, and the JPEG quality to save it at."""
    from PIL import Image, ImageOps

    w, h = im.size
    if kind == "jpeg50":
        return im, 50
    if kind == "jpeg95":
        return im, 95
    if kind == "half":
        return im.resize((max(1, w // 2), max(1, h // 2)), Image.BICUBIC), 90
    if kind == "double":
        return im.resize((w * 2, h * 2), Image.BICUBIC), 90
    if kind == "crop80":
        dx, dy = round(w * 0.1), round(h * 0.1)
        return im.crop((dx, dy, w - dx, h - dy)), 90
    if kind == "mirror":
        return ImageOps.mirror(im), 90
    raise ValueError(kind)


def split(images: dict, test_fraction: float, seed: int = 0) -> tuple[list[str], list[str]]:
    """Labelled paths split into (train, test), stratified by label."""
    from sklearn.model_selection import train_test_split

    paths = sorted(p for p, label in images.items() if label is not None)
    train, test = train_test_split(paths, test_size=test_fraction, random_state=seed,
                                   stratify=[images[p] for p in paths])
    return sorted(train), sorted(test)


def make_variants(root: Path, paths: list[str], out: Path) -> None:
    from PIL import Image

    out.mkdir(parents=True, exist_ok=True)
    for rel in paths:
        with Image.open(root / rel) as im:
            im = im.convert("RGB")
            for kind in VARIANTS:
                target = out / f"{rel.replace('/', '__')}~{kind}.jpg"
                if not target.exists():
                    copy, quality = variant(im, kind)
                    copy.save(target, "JPEG", quality=quality)


def features(folder: Path, store: Path, labels: Path | None = None) -> dict[str, np.ndarray]:
    """{path: feature vector} of every image below `folder` (featurized once into `store`)."""
    import pipeline

    s = pipeline.featurize(folder, out=store, progress=False, labels=labels)
    return dict(zip(s.paths, s.features))


def featurize_all(data: Path, work: Path) -> dict:
    """{set: (images, train, test, original features, variant features)}."""
    out = {}
    for name, fraction in SETS.items():
        images = labelled_images(data, name)
        train, test = split(images, fraction)
        make_variants(image_root(data, name), test, work / "variants" / name)
        csv_labels = data / name / "labels.csv" if name == "catbreeds" else None
        orig = features(image_root(data, name), work / "stores" / name, csv_labels)
        var = features(work / "variants" / name, work / "stores" / f"{name}-variants")
        out[name] = (images, train, test, orig, var)
        print(f"{name}: {len(orig)} originals, {len(var)} copies featurized", flush=True)
    return out



def _unit(x: np.ndarray, centre: np.ndarray | None) -> np.ndarray:
    x = x - centre if centre is not None else x
    return x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)


def similarities(sets: dict, centred: bool) -> tuple[dict, np.ndarray, list]:
    """({variant: similarities of copies to their originals}, distinct same-class pair similarities,
    [(set, per-image highest similarity to a distinct same-class photo)])."""
    copies = {k: [] for k in VARIANTS}
    distinct, per_image = [], []
    for name, (images, train, test, orig, var) in sets.items():
        paths = [p for p in orig if images.get(p) is not None]
        X = np.stack([orig[p] for p in paths])
        centre = X.mean(axis=0) if centred else None
        U = _unit(X, centre)
        where = {p: i for i, p in enumerate(paths)}
        for vp, v in var.items():
            src, kind = vp.rsplit("~", 1)
            src = src.replace("__", "/")
            copies[kind.removesuffix(".jpg")].append(float(_unit(v[None], centre)[0] @ U[where[src]]))
        labels = np.array([images[p] for p in paths])
        best = np.full(len(paths), -1.0)
        for c in np.unique(labels):
            idx = np.flatnonzero(labels == c)
            S = U[idx] @ U[idx].T
            np.fill_diagonal(S, -1)
            distinct.append(S[np.triu_indices(len(idx), 1)])
            best[idx] = S.max(axis=1)
        per_image.append((name, best))
    return {k: np.array(v) for k, v in copies.items()}, np.concatenate(distinct), per_image


def threshold_table(sets: dict) -> dict:
    out = {}
    for centred in (False, True):
        copies, distinct, per_image = similarities(sets, centred)
        allc = np.concatenate(list(copies.values()))
        best = np.concatenate([b for _, b in per_image])
        rows = []
        for t in THRESHOLDS:
            rows.append({"threshold": t, "copies_found": float(np.mean(allc >= t)),
                         "worst_kind": min(VARIANTS, key=lambda k: np.mean(copies[k] >= t)),
                         "worst_kind_found": float(min(np.mean(copies[k] >= t) for k in VARIANTS)),
                         "distinct_pairs_flagged": float(np.mean(distinct >= t)),
                         "images_with_a_distinct_match": float(np.mean(best >= t)),
                         "per_set_images_with_a_distinct_match": {n: round(float(np.mean(b >= t)), 4)
                                                                  for n, b in per_image}})
        out["centred" if centred else "raw"] = {
            "copies": len(allc), "distinct_pairs": len(distinct),
            "copy_quantiles": {k: np.round(np.quantile(v, [0.01, 0.05, 0.5]), 4).tolist() for k, v in copies.items()},
            "distinct_quantiles": np.round(np.quantile(distinct, [0.5, 0.99, 0.999, 1.0]), 4).tolist(),
            "table": rows}
    return out


def planted(sets: dict, work: Path) -> dict:
    """Train/test stores with one copy of every other test image in train; audit(train, test)."""
    from pipeline.audit import audit
    from pipeline.options import HeadOptions
    from pipeline.store.exchange import import_features

    out = {}
    for name, (images, train, test, orig, var) in sets.items():
        plant = {}
        for i, p in enumerate(test[::2]):
            kind = VARIANTS[i % len(VARIANTS)]
            plant[f"planted/{p.replace('/', '__')}~{kind}.jpg"] = (p, var[f"{p.replace('/', '__')}~{kind}.jpg"])
        folder = work / "planted" / name
        folder.mkdir(parents=True, exist_ok=True)
        for part, rows in (("train", [(p, orig[p], images[p]) for p in train]
                            + [(k, v, images[p]) for k, (p, v) in plant.items()]),
                           ("test", [(p, orig[p], images[p]) for p in test])):
            np.savez(folder / f"{part}.npz", id=np.array([r[0] for r in rows]), features=np.stack([r[1] for r in rows]),
                     label=np.array([r[2] for r in rows]))
            if not (folder / part / "meta.json").exists():
                import_features(folder / f"{part}.npz", folder / part)
        r = audit(folder / "train", folder / "test", head=HeadOptions("logreg", C=0.1),
                  checks=("leak",))
        leaks = [(f.path, f.other_path) for f in r.findings if f.kind == "leak"]
        wanted = {(p, k) for k, (p, _) in plant.items()}
        distinct = [x for x in leaks if x not in wanted]
        per_kind = {kind: float(np.mean([(p, k) in set(leaks) for k, (p, _) in plant.items() if k.endswith(f"~{kind}.jpg")]))
                    for kind in VARIANTS}
        out[name] = {"train": len(train) + len(plant), "test": len(test), "planted": len(plant),
                     "planted_found": len(wanted & set(leaks)) / len(wanted), "per_kind": per_kind,
                     "distinct_pairs_flagged": len(distinct), "distinct_pairs": len(test) * len(train) + len(test) * len(plant) - len(plant),
                     "distinct_pair_rate": len(distinct) / (len(test) * (len(train) + len(plant)) - len(plant)),
                     "examples_of_distinct_flagged": distinct[:5], "accuracy": r.accuracy, "threshold": r.threshold}
    return out


def index_recall(sets: dict, threshold: float = 0.83) -> list[dict]:
    """The approximate index against the exact search on every real feature here (originals and copies)."""
    from pipeline.audit.neighbours import Lookup, search

    x = np.concatenate([np.stack(list(d.values())) for _, _, _, orig, var in sets.values() for d in (orig, var)])
    chunks = lambda: (x[s:s + 1024] for s in range(0, len(x), 1024))  # noqa: E731
    exact = search(chunks, chunks, 10, self_search=True, lookup=Lookup("exact"))

    def pairs(nb):
        return {(min(i, j), max(i, j)) for i, row in enumerate(nb.index.tolist())
                for j, v in zip(row, nb.similarity[i].tolist()) if v >= threshold}
    out = []
    for nprobe in (4, 8):
        approx = search(chunks, chunks, 10, self_search=True, lookup=Lookup("approximate", nprobe=nprobe))
        hits = sum(len(set(a) & set(b)) for a, b in zip(exact.index.tolist(), approx.index.tolist()))
        out.append({"rows": len(x), "method": approx.method, "recall_at_10": round(hits / exact.index.size, 4),
                    "near_duplicate_pairs": len(pairs(exact)),
                    "pair_recall": round(len(pairs(exact) & pairs(approx)) / max(len(pairs(exact)), 1), 4)})
    return out


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data", type=Path, default=REPO.parent / "shared" / "data")
    p.add_argument("--work", type=Path, default=Path("/tmp/tfp-audit-realdata"))
    p.add_argument("--featurize-only", action="store_true")
    p.add_argument("--skip-planted", action="store_true")
    a = p.parse_args(argv)
    if not a.data.is_dir():
        print(f"no {a.data}: the real sets live in ../shared/data", file=sys.stderr)
        return 2
    sets = featurize_all(a.data, a.work)
    if a.featurize_only:
        return 0
    print(json.dumps({"thresholds": threshold_table(sets)}, indent=1), flush=True)
    print(json.dumps({"index_recall": index_recall(sets)}, indent=1), flush=True)
    if not a.skip_planted:
        print(json.dumps({"planted": planted(sets, a.work)}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
