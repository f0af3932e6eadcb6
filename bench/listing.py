"""Listing speed: pipeline's list_images over N hard links in two class folders (median of 3 runs).

    python bench/listing.py [--n 16384] [--images .gpu/imgs]

Run it from two checkouts to compare versions side by side (each imports the pipeline/ beside it).
"""
from __future__ import annotations

import argparse
import os
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--n", type=int, default=16384)
    p.add_argument("--images", type=Path, default=REPO.parent / "shared" / "data" / "catsdogs" / "train" / "cats")
    a = p.parse_args(argv)
    try:
        from pipeline.dataset.listing import list_images
    except ImportError:  # versions before the package was laid out by stage
        try:
            from pipeline.listing import list_images
        except ImportError:  # versions before listing.py
            from pipeline.images import list_images
    sources = sorted(f for f in a.images.iterdir() if f.suffix.lower() in (".jpg", ".jpeg"))
    work = Path(tempfile.mkdtemp(prefix="tfp-listing-"))
    try:
        for c in ("cat", "dog"):
            (work / c).mkdir()
        for i in range(a.n):
            os.link(sources[i % len(sources)], work / ("cat" if i % 2 else "dog") / f"{i:06d}.jpg")
        times = []
        for _ in range(3):
            t = time.perf_counter()
            found = len(list_images(work).records)
            times.append(time.perf_counter() - t)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    print(f"{REPO.name}: list_images of {found} files: median {statistics.median(times):.3f} s "
          f"({', '.join(f'{t:.3f}' for t in times)})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
