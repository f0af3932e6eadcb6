"""Pixels of the TensorFlow decoder (pipeline/tfdecode.py, what ``predict_bytes`` runs) against the
project's Pillow decoder (pipeline/images.py), over the awkward inputs of RELIABILITY.md A08-A14, A16.

    python bench/decode_parity.py [--sizes 37x29,300x220,900x660] [--out 32x32,48x56]

Every case of tests/awkward_images.py (fixed seeds) is built at each source size and decoded both
ways for every resampling filter the project offers (pipeline.preprocess.RESAMPLING) and each
output size (height x width; the second one with crop_fraction 0.875). Printed: one markdown row per case and filter, with the
largest |difference| in levels and the share of uint8 values that differ, over all sizes.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(REPO), str(REPO / "tests")]

from awkward_images import CASES  # noqa: E402
from pipeline.images import decode  # noqa: E402
from pipeline.preprocess import RESAMPLING, Preprocess  # noqa: E402


def _size(text: str) -> tuple[int, int]:
    a, b = text.lower().split("x")
    return int(a), int(b)


def measure(sizes, outs):
    """{(case, filter): (max |diff|, differing values, values)} over all source and output sizes."""
    import tensorflow as tf

    from pipeline.tfdecode import decode_image

    rows = {}
    for resample in RESAMPLING:
        for k, out in enumerate(outs):
            pre = Preprocess(size=out, crop_fraction=0.875 if k else 1.0, resample=resample)
            fn = tf.function(lambda d, pre=pre: decode_image(d, pre))
            for name, make in CASES.items():
                for seed, (w, h) in enumerate(sizes):
                    data = make(w, h, seed)
                    diff = np.abs(decode(data, pre).astype(int) - fn(tf.constant(data)).numpy())
                    worst, n, total = rows.get((name, resample), (0, 0, 0))
                    rows[name, resample] = (max(worst, int(diff.max())), n + int((diff > 0).sum()), total + diff.size)
    return rows


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--sizes", default="37x29,300x220,900x660", help="source images, width x height")
    p.add_argument("--out", default="32x32,48x56", help="network input sizes, height x width")
    a = p.parse_args()
    rows = measure([_size(s) for s in a.sizes.split(",")], [_size(s) for s in a.out.split(",")])
    print("| case | " + " | ".join(RESAMPLING) + " |")
    print("|---|" + "---|" * len(RESAMPLING))
    for name in CASES:
        cells = []
        for resample in RESAMPLING:
            worst, n, total = rows[name, resample]
            cells.append("0" if worst == 0 else f"{worst} ({n / total:.2%})")
        print(f"| {name} | " + " | ".join(cells) + " |")
    print("cells: max |Pillow - TF| in levels (share of uint8 values that differ); 0: identical")


if __name__ == "__main__":
    main()
