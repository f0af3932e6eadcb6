"""Pixels of the TensorFlow decoder (pipeline/tfdecode.py, what ``predict_bytes`` runs) against the
project's Pillow decoder (pipeline/images.py), over the awkward inputs of RELIABILITY.md A08-A14, A16.

    python bench/decode_parity.py [--sizes 37x29,300x220,900x660] [--out 32x32,48x56]

Every case is built here (fixed seeds) at each source size, decoded both ways for every resampling
filter the project offers (pipeline.preprocess.RESAMPLING) and each output size (height x width;
the second one with crop_fraction 0.875). Printed: one markdown row per case and filter, with the
largest |difference| in levels and the share of uint8 values that differ, over all sizes.
"""
from __future__ import annotations

import argparse
import io
import struct
import sys
import zlib
from pathlib import Path

import numpy as np
from PIL import Image

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from pipeline.images import decode  # noqa: E402
from pipeline.preprocess import RESAMPLING, Preprocess  # noqa: E402


def _noise(w, h, channels, seed):
    return np.random.default_rng(seed).integers(0, 256, (h, w, channels)).astype(np.uint8)


def _alpha(w, h, seed):
    """Alpha with fully transparent, fully opaque and partial values."""
    a = np.random.default_rng(seed + 1).integers(0, 256, (h, w)).astype(np.uint8)
    a[: h // 4] = 0
    a[-(h // 4):] = 255
    return a


def _save(im: Image.Image, fmt: str, **kw) -> bytes:
    buf = io.BytesIO()
    im.save(buf, fmt, **kw)
    return buf.getvalue()


def png_chunk(kind: bytes, body: bytes) -> bytes:
    return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))


def png_raw(arr: np.ndarray, colour_type: int, before: bytes = b"", after: bytes = b"") -> bytes:
    """A PNG written by hand (Pillow cannot write 16-bit colour): uint8 or big-endian uint16 samples,
    with extra chunks before and after the image data."""
    depth = 16 if arr.dtype == np.uint16 else 8
    h, w = arr.shape[:2]
    rows = arr.astype(">u2" if depth == 16 else np.uint8).reshape(h, -1).view(np.uint8)
    raw = b"".join(b"\0" + rows[i].tobytes() for i in range(h))
    ihdr = struct.pack(">IIBBBBB", w, h, depth, colour_type, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + png_chunk(b"IHDR", ihdr) + before + png_chunk(b"IDAT", zlib.compress(raw))
            + after + png_chunk(b"IEND", b""))


def exif_block(orientation: int) -> bytes:
    ex = Image.Exif()
    ex[0x0112] = orientation
    return ex.tobytes()


def _palette(w, h, seed, colours=16):
    p = Image.fromarray((_noise(w, h, 1, seed)[..., 0] % colours), "P")
    p.putpalette(_noise(colours, 1, 3, seed + 2).ravel().tolist())
    return p


def _exif_jpeg(w, h, seed, orientation):
    im = Image.fromarray(_noise(w, h, 3, seed))
    ex = im.getexif()
    ex[0x0112] = orientation
    return _save(im, "JPEG", exif=ex, quality=92)


CASES = {
    "RGB JPEG": lambda w, h, s: _save(Image.fromarray(_noise(w, h, 3, s)), "JPEG", quality=92),
    "A08 RGBA PNG, partial alpha": lambda w, h, s: _save(
        Image.fromarray(np.dstack([_noise(w, h, 3, s), _alpha(w, h, s)]), "RGBA"), "PNG"),
    "A09 L JPEG": lambda w, h, s: _save(Image.fromarray(_noise(w, h, 1, s)[..., 0], "L"), "JPEG", quality=92),
    "A09 L PNG": lambda w, h, s: _save(Image.fromarray(_noise(w, h, 1, s)[..., 0], "L"), "PNG"),
    "A10 LA PNG": lambda w, h, s: _save(
        Image.fromarray(np.dstack([_noise(w, h, 1, s), _alpha(w, h, s)]), "LA"), "PNG"),
    "A11 P PNG": lambda w, h, s: _save(_palette(w, h, s), "PNG"),
    "A11 P PNG + tRNS": lambda w, h, s: _save(_palette(w, h, s), "PNG", transparency=3),
    "A11 P PNG + partial tRNS": lambda w, h, s: _save(_palette(w, h, s), "PNG", transparency=bytes(range(0, 256, 16))),
    "A11 P GIF": lambda w, h, s: _save(_palette(w, h, s), "GIF"),
    "A11 P GIF + transparency": lambda w, h, s: _save(_palette(w, h, s), "GIF", transparency=3),
    "L PNG + tRNS": lambda w, h, s: _save(Image.fromarray(_noise(w, h, 1, s)[..., 0] & 0xF0, "L"), "PNG",
                                          transparency=0x30),
    "RGB PNG + tRNS": lambda w, h, s: _save(Image.fromarray(_noise(w, h, 3, s) & 0x80), "PNG",
                                            transparency=(0x80, 0, 0x80)),
    "A12 1-bit PNG": lambda w, h, s: _save(Image.fromarray(_noise(w, h, 1, s)[..., 0] > 127), "PNG"),
    "A13 CMYK JPEG": lambda w, h, s: _save(Image.fromarray(_noise(w, h, 4, s), "CMYK"), "JPEG", quality=92),
    "A14 16-bit L PNG": lambda w, h, s: _save(
        Image.fromarray(np.random.default_rng(s).integers(0, 65536, (h, w)).astype(np.uint16)), "PNG"),
    "A14 16-bit RGB PNG": lambda w, h, s: png_raw(
        np.random.default_rng(s).integers(0, 65536, (h, w, 3)).astype(np.uint16), 2),
    "A14 16-bit LA PNG": lambda w, h, s: png_raw(np.dstack(
        [np.random.default_rng(s).integers(0, 65536, (h, w)), _alpha(w, h, s).astype(int) * 257]
    ).astype(np.uint16), 4),
    "A14 16-bit RGBA PNG": lambda w, h, s: png_raw(np.dstack(
        [np.random.default_rng(s).integers(0, 65536, (h, w, 3)), _alpha(w, h, s).astype(int) * 257]
    ).astype(np.uint16), 6),
    "A16 EXIF orientation 6 JPEG": lambda w, h, s: _exif_jpeg(w, h, s, 6),
    "A16 EXIF orientation 8 JPEG": lambda w, h, s: _exif_jpeg(w, h, s, 8),
    "A16 EXIF orientation 6 PNG": lambda w, h, s: _save(Image.fromarray(_noise(w, h, 3, s)), "PNG", exif=exif_block(6)),
    "A16 EXIF orientation 5 PNG, eXIf after IDAT, Exif prefix": lambda w, h, s: png_raw(
        _noise(w, h, 3, s), 2, after=png_chunk(b"eXIf", exif_block(5))),
}


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
