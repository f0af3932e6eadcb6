"""Read image files and decode them into network-sized uint8 RGB arrays (listing: pipeline/dataset/listing.py).

Decoding is by content (never by extension) through an allowlist of Pillow formats, with
EXIF orientation applied, transparency composited on white, 16-bit images scaled (not
clipped), and JPEGs decoded at reduced scale (DCT scaling) when much larger than needed.
Every failure is an :class:`ImageError` naming the file and a reason code.
"""
from __future__ import annotations

import hashlib
import io
import logging
import math
import os
import stat
import threading
import warnings

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError
from PIL import BmpImagePlugin, GifImagePlugin, JpegImagePlugin, PngImagePlugin, TiffImagePlugin, WebPImagePlugin  # noqa: F401

from ..errors import ImageError
from ..preprocess import Preprocess
from .formats import ALLOWED_FORMATS, IMAGE_EXTENSIONS, MAX_FILE_BYTES, MAX_PIXELS  # noqa: F401 (this API)

log = logging.getLogger(__name__)
# The plugins of ALLOWED_FORMATS are registered by the import above, and only they: Image.init() would import
# all ~40 of Pillow's plugins (EPS, PDF, DDS...), a cost every cold run paid for formats that are never opened.
Image.preinit()

MAX_PIXELS_IN_FLIGHT = 2 * MAX_PIXELS  # decoded pixels held at once by all decoders of a process
ALPHA_BACKGROUND = (255, 255, 255)
_RESAMPLE = {"bilinear": Image.BILINEAR, "bicubic": Image.BICUBIC,
             "nearest": Image.NEAREST, "lanczos": Image.LANCZOS}
_TURNED = range(2, 9)  # EXIF orientations that ImageOps.exif_transpose turns or flips
_DECODE_ERRORS = (OSError, ValueError, SyntaxError, EOFError, IndexError, TypeError,
                  ZeroDivisionError, MemoryError, Image.DecompressionBombError)


def read_bytes(path) -> tuple[bytes, str]:
    """The file's bytes and their sha256 (hex); files over MAX_FILE_BYTES are refused unread.

    Only a regular file is read: the open itself never blocks (O_NONBLOCK, so a file swapped for
    a FIFO cannot hang the run) and what was opened is checked before reading.
    """
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | getattr(os, "O_CLOEXEC", 0))
        with os.fdopen(fd, "rb") as f:
            st = os.fstat(f.fileno())
            if not stat.S_ISREG(st.st_mode):
                raise ImageError(path, "not_a_file", "not a regular file (a pipe, device or socket); it is not read")
            size = st.st_size
            if size > MAX_FILE_BYTES:
                raise ImageError(path, "file_too_large", f"{size} bytes exceeds the limit of {MAX_FILE_BYTES}")
            data = f.read()
    except OSError as e:
        raise ImageError(path, f"io_error:{type(e).__name__}", e.strerror or str(e)) from e
    return data, hashlib.sha256(data).hexdigest()


def crop_box(width: int, height: int, pre: Preprocess) -> tuple[int, int, int, int]:
    """Centre box (whole pixels) of the target aspect ratio covering `crop_fraction` of the largest that fits."""
    th, tw = pre.size
    scale = min(width / tw, height / th) * pre.crop_fraction
    bw, bh = max(1, min(width, round(tw * scale))), max(1, min(height, round(th * scale)))
    left, top = (width - bw) // 2, (height - bh) // 2
    return left, top, left + bw, top + bh


def _open(data: bytes, path) -> Image.Image:
    if not data:
        raise ImageError(path, "empty_file", "0 bytes")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            im = Image.open(io.BytesIO(data), formats=ALLOWED_FORMATS)
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as e:
        raise ImageError(path, "too_many_pixels", str(e)) from e
    except UnidentifiedImageError as e:
        raise ImageError(path, "not_an_image", f"unrecognised content starting with {data[:8].hex()}") from e
    except _DECODE_ERRORS as e:
        raise ImageError(path, "unreadable", f"{type(e).__name__}: {e}") from e
    w, h = im.size
    if w < 1 or h < 1:
        raise ImageError(path, "empty_image", f"{w}x{h} pixels")
    if w * h > MAX_PIXELS:
        raise ImageError(path, "too_many_pixels", f"{w}x{h} pixels exceeds the limit of {MAX_PIXELS}")
    return im


class PixelBudget:
    """Caps the pixels being decoded at once across threads (a run's decode memory, not one image's).

    A decode waits until its pixels fit; one image larger than the whole budget still runs, alone.
    """

    def __init__(self, limit: int):
        self.limit = int(limit)
        self.in_flight = 0
        self._cond = threading.Condition()

    def acquire(self, pixels: int) -> None:
        with self._cond:
            self._cond.wait_for(lambda: self.in_flight == 0 or self.in_flight + pixels <= self.limit)
            self.in_flight += pixels

    def release(self, pixels: int) -> None:
        with self._cond:
            self.in_flight -= pixels
            self._cond.notify_all()


DECODE_BUDGET = PixelBudget(MAX_PIXELS_IN_FLIGHT)


def _orientation(im: Image.Image) -> int:
    """The EXIF orientation tag (1 when absent or unreadable)."""
    try:
        return int(im.getexif().get(0x0112, 1))
    except Exception:  # noqa: BLE001 - a damaged EXIF block is handled (and noted) by _exif_transpose
        return 1


def _draft(im: Image.Image, pre: Preprocess) -> None:
    """Let libjpeg decode at 1/2, 1/4 or 1/8 scale when that still covers the crop."""
    if im.format not in ("JPEG", "MPO"):
        return
    w, h = im.size
    if _orientation(im) in (5, 6, 7, 8):
        w, h = h, w
    left, top, right, bottom = crop_box(w, h, pre)
    need = max(pre.size[1] / (right - left), pre.size[0] / (bottom - top))
    if need < 0.5:
        im.draft("RGB", (math.ceil(im.size[0] * need), math.ceil(im.size[1] * need)))


def _to_rgb(im: Image.Image) -> Image.Image:
    if im.mode in ("I;16", "I;16B", "I;16L", "I;16N", "I"):
        arr = np.asarray(im)
        if arr.size and (arr.min() < 0 or arr.max() > 65535):  # 32-bit values: no defined range to scale
            raise ImageError("", "unsupported_mode", f"32-bit integer pixels from {arr.min()} to {arr.max()} "
                             "have no defined range (0 to 65535 is scaled); save the image as 8 or 16 bits")
        arr = arr.astype(np.uint32)
        top = 65535 if im.mode.startswith("I;16") or arr.max() > 255 else 255
        im = Image.fromarray((arr * 255 // top).astype(np.uint8), "L")
    elif im.mode == "F":
        raise ImageError("", "unsupported_mode", "floating-point images have no defined pixel range")
    if im.mode in ("RGBA", "LA", "PA") or (im.mode == "P" and "transparency" in im.info):
        im = im.convert("RGBA")
        background = Image.new("RGBA", im.size, ALPHA_BACKGROUND + (255,))
        return Image.alpha_composite(background, im).convert("RGB")
    return im if im.mode == "RGB" else im.convert("RGB")  # convert() to the same mode would copy


def _exif_transpose(im: Image.Image, notes: list | None) -> Image.Image:
    """Apply the EXIF orientation; a damaged EXIF block means no rotation, and a note. An upright
    image is returned as it is (ImageOps.exif_transpose would copy it: a full-size copy per image)."""
    try:
        if im.getexif().get(0x0112, 1) not in _TURNED:
            return im
        return ImageOps.exif_transpose(im)
    except Exception as e:  # noqa: BLE001 - any EXIF parsing failure leaves the pixels usable
        if notes is not None:
            notes.append(f"exif_ignored: {type(e).__name__}: {e}")
        return im


def decode(data: bytes, pre: Preprocess, path="<bytes>", notes: list | None = None) -> np.ndarray:
    """Encoded image bytes -> uint8 (H, W, 3) RGB array of the size `pre` asks for.

    Problems that leave the image usable (a damaged EXIF block) are appended to `notes`.
    """
    im = _open(data, path)
    pixels = 0
    try:
        _draft(im, pre)
        pixels = im.width * im.height
        DECODE_BUDGET.acquire(pixels)
        im.load()  # force the decode here, inside the per-file error boundary
        im = _exif_transpose(im, notes)
        im = _to_rgb(im)
        box = crop_box(im.width, im.height, pre)
        im = im.resize((pre.size[1], pre.size[0]), _RESAMPLE[pre.resample], box=box)
    except ImageError as e:
        raise ImageError(path, e.reason, e.detail) from e
    except _DECODE_ERRORS as e:
        msg = str(e)
        reason = ("truncated" if "truncated" in msg else
                  "metadata_too_large" if "Decompressed data too large" in msg else "corrupt")
        raise ImageError(path, reason, f"{type(e).__name__}: {msg}") from e
    finally:
        if pixels:
            DECODE_BUDGET.release(pixels)
    arr = np.asarray(im, dtype=np.uint8)
    return arr


def load_image(path, pre: Preprocess) -> np.ndarray:
    """A file -> uint8 (H, W, 3) RGB array ready for the backbone."""
    data, _ = read_bytes(path)
    return decode(data, pre, path)
