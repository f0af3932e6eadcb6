"""What a label fix costs: featurize a labelled folder, then fix labels the two ways users do, and time each run.

    python bench/relabel.py [--data ../shared/data/catbreeds] [--work /tmp/relabel-bench] [--repeat 1]
                            [--engine local|ray] [--backbone mobilenet_v2 --weights random --decode process]

1. the first run: every image featurized (the bundled MobileNetV2, penultimate layer alone);
2. a corrected labels CSV (every label changed): each row takes its stored features, no file is read;
3. the same photos in class folders (hard links), featurized once, then every one moved to another class's
   folder (``--prune``): each file is read and hashed, none decoded or featurized.

Before this project copied the features of known content (git 8bc18d2), runs 2 and 3 featurized every
relabelled or moved image again, as run 1 does (so did the Ray engine before 222b18a: --engine ray runs all
four on a local Ray cluster, started by each run as the command line does). With a Keras backbone and
``--decode process`` the files are read and hashed in worker processes, which decoded every moved file too
until they were handed the store's contents (a TFLite backbone always reads in threads). Prints JSON: seconds
per run (best of --repeat), rows featurized and copied, and each fix's time as a fraction of the first run's.
"""
from __future__ import annotations

import argparse
import csv
import json
import os
import shutil
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))


def _labels(data: Path) -> dict[str, str]:
    with open(data / "labels.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    key = "breed" if "breed" in rows[0] else list(rows[0])[1]
    return {r["id"]: r[key].replace(" ", "_") for r in rows}


def _timed(run) -> tuple[float, object]:
    start = time.perf_counter()
    out = run()
    return time.perf_counter() - start, out


def measure(data: Path, work: Path, engine: str = "local", backbone: str = "mobilenet_v2_quant",
            weights: str | None = None, decode: str = "auto") -> dict:
    import pipeline
    from pipeline.engines.ray import RayCluster

    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    labels = _labels(data)
    first_csv, fixed_csv = work / "labels.csv", work / "fixed.csv"
    for path, mapping in ((first_csv, labels), (fixed_csv, {k: v + "_fixed" for k, v in labels.items()})):
        with open(path, "w", newline="") as f:
            csv.writer(f).writerows([("id", "label"), *mapping.items()])
    images, store = data / "images", work / "store"
    args = {"backbone": backbone, "weights": weights, "layer": "penultimate", "progress": False, "report": True,
            "engine": engine}
    if engine == "local":
        args["decode"] = decode
    if engine == "ray":
        args["cluster"] = RayCluster(loopback=True)
    t_first, first = _timed(lambda: pipeline.featurize(images, labels=first_csv, out=store, **args))
    t_csv, fixed = _timed(lambda: pipeline.featurize(images, labels=fixed_csv, out=store, **args))

    folders = work / "folders"  # the same photos in class folders (hard links), featurized once
    names = {n: n for n in os.listdir(images)} | {Path(n).stem: n for n in os.listdir(images)}  # ids with or
    classes = sorted(set(labels.values()))  # without their extension
    for key, label in labels.items():
        if key in names:
            (folders / label).mkdir(parents=True, exist_ok=True)
            os.link(images / names[key], folders / label / names[key])
    t_folders, _ = _timed(lambda: pipeline.featurize(folders, out=work / "folder-store", **args))
    for key, label in labels.items():  # every photo moved to the next class's folder
        if key in names:
            other = classes[(classes.index(label) + 1) % len(classes)]
            (folders / label / names[key]).rename(folders / other / names[key])
    t_moved, by_folder = _timed(lambda: pipeline.featurize(folders, out=work / "folder-store", prune=True, **args))
    return {"engine": engine, "backbone": backbone, "decode": decode if engine == "local" else None, "images": len(first.store), "first_s": round(t_first, 2), "csv_fix_s": round(t_csv, 2),
            "first_in_folders_s": round(t_folders, 2), "move_fix_s": round(t_moved, 2),
            "csv_fix": {"featurized": fixed.computed, "copied": len(getattr(fixed, "copied", []))},
            "move_fix": {"featurized": by_folder.computed, "copied": len(getattr(by_folder, "copied", [])),
                         "pruned": by_folder.pruned},
            "csv_fix_vs_first": round(t_csv / t_first, 4), "move_fix_vs_first": round(t_moved / t_folders, 4)}


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--data", default=os.environ.get("TFP_SHARED", str(REPO.parent / "shared")) + "/data/catbreeds")
    p.add_argument("--work", default="/tmp/relabel-bench")
    p.add_argument("--repeat", type=int, default=1)
    p.add_argument("--engine", choices=("local", "ray"), default="local")
    p.add_argument("--backbone", default="mobilenet_v2_quant")
    p.add_argument("--weights", default=None, help="a Keras application's weights: random runs offline")
    p.add_argument("--decode", choices=("auto", "thread", "process"), default="auto")
    a = p.parse_args()
    runs = [measure(Path(a.data), Path(a.work), a.engine, a.backbone, a.weights, a.decode) for _ in range(a.repeat)]
    best = min(runs, key=lambda r: r["first_s"])
    for key in ("first_s", "csv_fix_s", "first_in_folders_s", "move_fix_s"):
        best[key] = min(r[key] for r in runs)
    print(json.dumps(best, indent=1))


if __name__ == "__main__":
    main()
