"""Images wherever they are -> the uint8 network input featurize would make of them.

:func:`decode_images` takes file paths, encoded bytes, PIL images or uint8 RGB arrays (one
(H, W, 3) image or an (N, H, W, 3) stack), alone or in a list, and returns the backbone-sized
uint8 batch (N, h, w, 3). Files and bytes go through :func:`pipeline.decode.images.decode`, the very
function featurize uses; a PIL image or array goes through the same steps after the decoder
(JPEG draft scaling while still undecoded, EXIF orientation, centre crop, resize), so the same
picture gives the same pixels, hence the same features, whichever way it arrives. Anything that
is not uint8 RGB (a float or BGR-ordered array, a grey or CMYK PIL image) is refused rather than
guessed at. Every failure is an :class:`ImageError` naming the input and a reason code.
"""
from __future__ import annotations

import io
import os
import warnings

import numpy as np
from PIL import Image

from ..errors import ImageError
from ..preprocess import Preprocess
from .images import (
    _DECODE_ERRORS,
    _RESAMPLE,
    ALLOWED_FORMATS,
    MAX_PIXELS,
    _draft,
    _exif_transpose,
    crop_box,
    decode,
    read_bytes,
)

_BYTES = (bytes, bytearray, memoryview)


def is_image_input(X) -> bool:
    """True when X holds images (paths, bytes, PIL images, uint8 (H, W, 3) / (N, H, W, 3) arrays), not features.

    A 2-D array is a feature matrix; in a list, any array of two or more dimensions is an image.
    """
    if isinstance(X, np.ndarray):
        return X.ndim in (3, 4)
    if isinstance(X, (list, tuple)):
        first = X[0] if X else None
        return not X or (isinstance(first, np.ndarray) and first.ndim >= 2) or _single(first)
    return _single(X)


def _single(x) -> bool:
    return isinstance(x, (str, os.PathLike, Image.Image, *_BYTES))


def as_list(X) -> list:
    """X (one image, a list of them, or an (N, H, W, 3) array) as a flat list of single images."""
    if isinstance(X, np.ndarray) and X.ndim == 4:
        return list(X)
    if isinstance(X, (list, tuple)):
        return list(X)
    return [X]


def name_of(item, index: int) -> str:
    """How error messages name an input: the path of a file, else its kind and position."""
    if isinstance(item, (str, os.PathLike)):
        return os.fspath(item)
    kind = "bytes" if isinstance(item, _BYTES) else "image" if isinstance(item, Image.Image) else "array"
    return f"<{kind} #{index}>"


def check_pixels(data: bytes, max_pixels: int, name: str) -> None:
    """Refuse encoded bytes whose header declares more than `max_pixels` pixels, before any decoding.

    The same guard (reason ``too_many_pixels``) featurize applies at :data:`pipeline.decode.images.MAX_PIXELS`;
    this lets a caller such as the HTTP server set a lower limit. Other problems are left to decode.
    """
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            w, h = Image.open(io.BytesIO(data), formats=ALLOWED_FORMATS).size
    except Image.DecompressionBombError as e:
        raise ImageError(name, "too_many_pixels", str(e)) from e
    except Exception:  # noqa: BLE001 - decode() reports unreadable bytes with its own reason codes
        return
    if w * h > max_pixels:
        raise ImageError(name, "too_many_pixels", f"{w}x{h} pixels exceeds the limit of {max_pixels}")


def decode_bytes(data, pre: Preprocess, name: str = "<bytes>", max_pixels: int | None = None,
                 notes: list | None = None) -> np.ndarray:
    """Encoded image bytes -> the (h, w, 3) uint8 network input, exactly as featurize decodes a file."""
    data = bytes(data)
    if max_pixels is not None and max_pixels < MAX_PIXELS and data:
        check_pixels(data, max_pixels, name)
    return decode(data, pre, name, notes)


def _rgb_array(arr: np.ndarray, name: str) -> np.ndarray:
    if arr.dtype != np.uint8 or arr.ndim != 3 or arr.shape[2] != 3:
        raise ImageError(name, "unsupported_array",
                         f"got {arr.dtype} {arr.shape}; pass uint8 RGB pixels of shape (H, W, 3) or "
                         f"(N, H, W, 3), in RGB order (convert BGR from OpenCV with arr[..., ::-1]), "
                         f"or pass the file path or its bytes")
    if arr.shape[0] < 1 or arr.shape[1] < 1:
        raise ImageError(name, "empty_image", f"{arr.shape[1]}x{arr.shape[0]} pixels")
    return arr


def decode_pil(im: Image.Image, pre: Preprocess, name: str = "<image>", max_pixels: int = MAX_PIXELS,
               notes: list | None = None) -> np.ndarray:
    """An RGB PIL image -> the network input, by the steps :func:`pipeline.decode.images.decode` takes after opening.

    An image straight from ``Image.open`` (not yet loaded) is decoded exactly as featurize decodes its file:
    like ``Image.thumbnail``, this loads it, at reduced scale when it is a JPEG much larger than needed.
    """
    if im.mode != "RGB":
        raise ImageError(name, "unsupported_mode",
                         f"PIL image of mode {im.mode!r}; convert it with image.convert('RGB'), or pass the "
                         f"file path or its bytes to have it decoded as featurize does")
    w, h = im.size
    if w < 1 or h < 1:
        raise ImageError(name, "empty_image", f"{w}x{h} pixels")
    if w * h > max_pixels:
        raise ImageError(name, "too_many_pixels", f"{w}x{h} pixels exceeds the limit of {max_pixels}")
    try:  # the same steps, in the same order, as pipeline.decode.images.decode
        _draft(im, pre)
        im.load()
        im = _exif_transpose(im, notes)
        box = crop_box(im.width, im.height, pre)
        im = im.resize((pre.size[1], pre.size[0]), _RESAMPLE[pre.resample], box=box)
    except _DECODE_ERRORS as e:
        reason = "truncated" if "truncated" in str(e) else "corrupt"
        raise ImageError(name, reason, f"{type(e).__name__}: {e}") from e
    return np.asarray(im, dtype=np.uint8)


def decode_one(item, pre: Preprocess, name: str, max_pixels: int = MAX_PIXELS) -> np.ndarray:
    """One input of any supported kind -> the (h, w, 3) uint8 network input."""
    if isinstance(item, (str, os.PathLike)):
        data, _ = read_bytes(item)
        return decode_bytes(data, pre, name, max_pixels)
    if isinstance(item, _BYTES):
        return decode_bytes(item, pre, name, max_pixels)
    if isinstance(item, Image.Image):
        return decode_pil(item, pre, name, max_pixels)
    if isinstance(item, np.ndarray):
        arr = _rgb_array(item, name)
        if arr.shape[:2] == tuple(pre.size):
            return arr  # already network-sized: resizing to its own size is the identity
        return decode_pil(Image.fromarray(np.ascontiguousarray(arr), "RGB"), pre, name, max_pixels)
    raise ImageError(name, "unsupported_input",
                     f"got {type(item).__name__}; pass file paths, encoded bytes, PIL images or uint8 RGB arrays")


def decode_images(X, pre: Preprocess, max_pixels: int = MAX_PIXELS, start: int = 0) -> np.ndarray:
    """Images of any supported kind (one, a list, or an (N, H, W, 3) array) -> uint8 batch (N, h, w, 3).

    start: the position of the first image in the caller's list, for error messages.
    """
    items = as_list(X)
    out = np.empty((len(items), *pre.size, 3), np.uint8)
    for i, item in enumerate(items):
        out[i] = decode_one(item, pre, name_of(item, start + i), max_pixels)
    return out
