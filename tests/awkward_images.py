"""Awkward images for the decoder (../shared/docs/RELIABILITY.md A08-A14, A16), built from fixed seeds.

Each entry of :data:`CASES` maps a name to ``make(width, height, seed) -> encoded bytes``. Used by
tests/decode/test_tfdecode.py and bench/decode_parity.py (TensorFlow's decoding against Pillow's).
"""
from __future__ import annotations

import io
import struct
import zlib

import numpy as np
from PIL import Image


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


def gif_in_larger_screen(w, h, seed, **save) -> bytes:
    """A GIF whose only frame sits at (2, 1) on a logical screen 5 and 3 pixels larger."""
    buf = io.BytesIO()
    _palette(w, h, seed).save(buf, "GIF", **save)
    data = bytearray(buf.getvalue())
    data[6:10] = struct.pack("<HH", w + 5, h + 3)
    at = data.index(b"\x2c", 13 + 3 * 16)  # the image descriptor, after the 16-colour table
    data[at + 1:at + 5] = struct.pack("<HH", 2, 1)
    return bytes(data)


CASES["A11 P GIF, frame inside a larger screen"] = gif_in_larger_screen
CASES["A11 P GIF + transparency, frame inside a larger screen"] = lambda w, h, s: gif_in_larger_screen(
    w, h, s, transparency=3)
CASES["A11 P BMP, 8-bit palette"] = lambda w, h, s: _save(_palette(w, h, s), "BMP")
CASES["A09 L BMP"] = lambda w, h, s: _save(Image.fromarray(_noise(w, h, 1, s)[..., 0], "L"), "BMP")


def gif_local_table(w, h, seed, **save) -> bytes:
    """The GIF Pillow writes, its global colour table moved into the first frame's (local) table."""
    buf = io.BytesIO()
    _palette(w, h, seed).save(buf, "GIF", **save)
    data = bytearray(buf.getvalue())
    packed = data[10]
    size = 3 * (2 << (packed & 7))
    table = bytes(data[13:13 + size])
    data[10] = packed & 0x78  # no global table
    del data[13:13 + size]
    at = data.index(b"\x2c", 13)
    data[at + 9] = (data[at + 9] & 0x40) | 0x80 | (packed & 7)  # a local table of the same size
    data[at + 10:at + 10] = table
    return bytes(data)


CASES["A11 P GIF + transparency, local colour table"] = lambda w, h, s: gif_local_table(w, h, s, transparency=3)
