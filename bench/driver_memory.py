"""Memory the driver of a run holds per image: the listing, the store's row log, and what the
engine knows of the store on a rerun (docs/scaling.md, "What breaks first").

It builds N empty image files in 100 class folders and a store of N rows shaped like a featurize
run's (path, label, sha256, 4-int stat; features of width 8, since feature arrays live on disk, not
in the driver), then, in fresh processes, measures the resident memory each structure adds:

    .venv/bin/python bench/driver_memory.py --n 200000

Figures are bytes per image: (RSS after - RSS before) / N, read from /proc/self/statm.
"""
from __future__ import annotations

import argparse
import hashlib
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

REQUEST = {"backbone": "bench", "kind": "keras", "model": "bench", "weights": None, "layer": "penultimate",
           "preprocess": {"size": [2, 2]}, "source": {}}


def rss() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def build(work: Path, n: int) -> tuple[Path, Path]:
    """n empty .jpg files in 100 class folders, and a store of n rows whose paths are theirs."""
    import numpy as np

    from pipeline.store import open_writer

    data, store = work / "data", work / "store"
    rows = []
    for i in range(n):
        label = f"class{i % 100:03d}"
        rel = f"{label}/image_{i:09d}.jpg"
        if i < 100:
            (data / label).mkdir(parents=True, exist_ok=True)
        (data / rel).touch()
        rows.append({"path": rel, "label": label, "sha256": hashlib.sha256(rel.encode()).hexdigest(),
                     "stat": [40_000 + i, 1_795_632_070_351_198_519 + i, 1_795_633_625_493_823_942 + i, 5_000_000 + i]})
    w = open_writer(store, REQUEST)
    w.set_spec(dict(REQUEST, tensor="t", dim=8))
    for s in range(0, n, 65536):
        chunk = rows[s:s + 65536]
        w.append(np.zeros((len(chunk), 8), np.float32), chunk)
    w.close()
    return data, store


def measure(data: str, store: str) -> dict:
    """In this (fresh) process: bytes added by the listing, the writer's row log, and known_files."""
    from pipeline.dataset.listing import list_images
    from pipeline.featurizer.prepare import known_files
    from pipeline.store import open_writer

    out, before = {}, rss()
    listing = list_images(Path(data))
    out["listing"], mark = rss() - before, rss()
    writer = open_writer(Path(store), REQUEST)
    out["row_log"], mark = rss() - mark, rss()
    known = known_files(writer)
    out["known_files"] = rss() - mark
    out["total"] = rss() - before
    out["n"] = len(listing.records)
    assert len(writer.rows) == out["n"] and len(known["rows"]) == out["n"]
    writer.abort()
    return out


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--n", type=int, default=200_000)
    p.add_argument("--child", nargs=2, help=argparse.SUPPRESS)
    a = p.parse_args()
    if a.child:
        print(json.dumps(measure(*a.child)))
        return 0
    with tempfile.TemporaryDirectory(prefix="tfp-drivermem-") as tmp:
        t = time.perf_counter()
        data, store = build(Path(tmp), a.n)
        print(f"built {a.n} files and a store of {a.n} rows in {time.perf_counter() - t:.0f} s")
        runs = [json.loads(subprocess.run([sys.executable, __file__, "--child", str(data), str(store)],
                                          check=True, capture_output=True, text=True).stdout.splitlines()[-1])
                for _ in range(3)]
    n = runs[0]["n"]
    print(f"driver memory per image, {n} images, 3 fresh processes (bytes per image: min-max)")
    for key in ("listing", "row_log", "known_files", "total"):
        vals = sorted(r[key] / n for r in runs)
        print(f"  {key:12s} {vals[0]:7.0f} - {vals[-1]:7.0f}")
    total = max(r["total"] for r in runs) / n
    print(f"  => {total * 1e7 / 2**30:.1f} GiB for 10 M images, {total * 1e8 / 2**30:.0f} GiB for 100 M")
    return 0


if __name__ == "__main__":
    sys.exit(main())
