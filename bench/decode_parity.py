"""Pixels of the TensorFlow decoder (pipeline/decode/tfdecode.py, what ``predict_bytes`` runs) against the
project's Pillow decoder (pipeline/decode/images.py), over the awkward inputs of ../shared/docs/RELIABILITY.md A08-A14, A16.

    python bench/decode_parity.py [--sizes 37x29,300x220,900x660] [--out 32x32,48x56]
    python bench/decode_parity.py --time [OLD_TFDECODE.py] [--shared ../shared]

Every case of tests/awkward_images.py (fixed seeds) is built at each source size and decoded both
ways for every resampling filter the project offers (pipeline.preprocess.RESAMPLING) and each
output size (height x width; the second one with crop_fraction 0.875). Printed: one markdown row
per case, a cell per filter with the largest |difference| in levels and the share of uint8 values
that differ, over all sizes.

``--time`` instead times one warm decode to 224x224 (median of 15) of a photo of
../shared/data/catsdogs and of that photo as a 1200x900 PNG and GIF, interleaved with the same
decode by an older tfdecode.py when its path is given (e.g. ``git show REV:pipeline/decode/tfdecode.py``).
"""
from __future__ import annotations

import argparse
import importlib.util
import io
import os
import sys
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(REPO), str(REPO / "tests")]

from awkward_images import CASES  # noqa: E402

from pipeline.decode.images import decode  # noqa: E402
from pipeline.preprocess import RESAMPLING, Preprocess  # noqa: E402


def _size(text: str) -> tuple[int, int]:
    a, b = text.lower().split("x")
    return int(a), int(b)


def measure(sizes, outs):
    """{(case, filter): (max |diff|, differing values, values)} over all source and output sizes."""
    import tensorflow as tf

    from pipeline.decode.tfdecode import decode_image

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


def _timed_files(shared: Path) -> dict:
    from PIL import Image

    photo = sorted((shared / "data" / "catsdogs" / "train").glob("*/*.jpg"))[0]
    jpeg = photo.read_bytes()
    im = Image.open(io.BytesIO(jpeg)).convert("RGB")
    files = {f"JPEG {im.width}x{im.height}": jpeg}
    big = im.resize((1200, 900))
    for fmt, picture in (("PNG", big), ("GIF", big.convert("P"))):
        buf = io.BytesIO()
        picture.save(buf, fmt)
        files[f"{fmt} 1200x900"] = buf.getvalue()
    return files


def time_decoders(old_path: str | None, shared: Path) -> None:
    """Median ms of one warm decode per file and filter, the old module (if any) interleaved with this one."""
    import tensorflow as tf

    import pipeline.decode.tfdecode as new

    modules = {"this": new}
    if old_path:
        spec = importlib.util.spec_from_file_location("pipeline.decode._tfdecode_old", old_path)  # beside tfdecode
        modules["old"] = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(modules["old"])
    print("| filter | file | " + " | ".join(f"{k} (ms)" for k in modules) + " |")
    print("|---|---|" + "---|" * len(modules))
    for resample in ("bilinear", "nearest"):
        pre = Preprocess(size=(224, 224), resample=resample)
        fns = {k: tf.function(lambda d, m=m: m.decode_image(d, pre)) for k, m in modules.items()}
        for name, data in _timed_files(shared).items():
            times = {k: [] for k in fns}
            for _ in range(16):  # the first round warms up (traces) and is dropped
                for k, fn in fns.items():
                    start = time.perf_counter()
                    fn(tf.constant(data)).numpy()
                    times[k].append(time.perf_counter() - start)
            cells = " | ".join(f"{np.median(t[1:]) * 1000:.1f}" for t in times.values())
            print(f"| {resample} | {name} ({len(data) // 1024} KiB) | {cells} |")


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--sizes", default="37x29,300x220,900x660", help="source images, width x height")
    p.add_argument("--out", default="32x32,48x56", help="network input sizes, height x width")
    p.add_argument("--time", nargs="?", const="", metavar="OLD_TFDECODE", help="time decoding instead")
    p.add_argument("--shared", default=os.environ.get("TFP_SHARED", str(REPO.parent / "shared")))
    a = p.parse_args()
    if a.time is not None:
        return time_decoders(a.time or None, Path(a.shared))
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
