"""Pillow's resize in JAX, batched, for ``--decode gpu``: the same pixels as :mod:`pipeline.decode.images`.

What :mod:`pipeline.decode.tfresize` does in TensorFlow ops, split where it is cheapest: the per-image
plan (which source pixels each output pixel reads and their fixed-point weights, Pillow's
``precompute_coeffs`` + ``normalize_coeffs_8bpc`` in float64) is computed on the host in numpy, a few
kilobytes per image; the passes themselves (int32 sums of pixel x weight, rounded, clipped to 0..255,
as libImaging/Resample.c) run on the device in one jit-compiled call over a batch of images of
different sizes. Images are padded to a size bucket so a folder of photos of many sizes compiles a
few programs, not one per size; the plan never reads the padding.

Pillow 13 runs the vertical pass first when the height shrinks by more than twice the width does
(python-pillow/Pillow#9549), older Pillows always horizontal first: each image follows the order the
installed Pillow would take (tests/decode/test_jaxresize.py checks every filter against Pillow).
"""
from __future__ import annotations

import functools
import math
from dataclasses import dataclass

import numpy as np
import PIL

from ..preprocess import Preprocess

PRECISION_BITS = 32 - 8 - 2
PILLOW_13 = int(PIL.__version__.split(".")[0]) >= 13
BUCKET = 64  # padded sizes: multiples of 64 up to 512 pixels, then 4 steps per doubling (at most 25% padding)


def _bilinear(x):
    x = np.abs(x)
    return np.where(x < 1.0, 1.0 - x, 0.0)


def _bicubic(x, a=-0.5):
    x = np.abs(x)
    return np.where(x < 1.0, ((a + 2.0) * x - (a + 3.0)) * x * x + 1,
                    np.where(x < 2.0, (((x - 5) * x + 8) * x - 4) * a, 0.0))


def _sinc(v):
    safe = np.where(v == 0.0, 1.0, v) * np.pi
    return np.where(v == 0.0, 1.0, np.sin(safe) / safe)


def _lanczos(x):
    return np.where((x >= -3.0) & (x < 3.0), _sinc(x) * _sinc(x / 3.0), 0.0)


FILTERS = {"bilinear": (1.0, _bilinear), "bicubic": (2.0, _bicubic), "lanczos": (3.0, _lanczos)}


def coefficients(in_size: int, in0: float, in1: float, out_size: int, resample: str):
    """Pillow's precompute_coeffs + normalize_coeffs_8bpc for one axis: (index, weight), both
    (out_size, taps) int32: the source pixel of each tap (clamped) and its fixed-point weight (0 past
    the filter's window)."""
    support, fn = FILTERS[resample]
    scale = (in1 - in0) / out_size
    filterscale = max(scale, 1.0)
    support = support * filterscale
    ksize = int(math.ceil(support)) * 2 + 1
    center = in0 + (np.arange(out_size, dtype=np.float64) + 0.5) * scale
    xmin = np.maximum(np.floor(center - support + 0.5).astype(np.int64), 0)
    count = np.minimum(np.floor(center + support + 0.5).astype(np.int64), in_size) - xmin
    taps = np.arange(ksize, dtype=np.int64)[None]
    x = taps + xmin[:, None]
    k = np.where(taps < count[:, None], fn((x.astype(np.float64) - center[:, None] + 0.5) * (1.0 / filterscale)), 0.0)
    total = np.cumsum(k, axis=1)[:, -1:]  # summed left to right, as the C loop does
    k = np.where(total != 0.0, k / np.where(total != 0.0, total, 1.0), k)
    fixed = np.sign(k) * np.floor(np.abs(k) * (1 << PRECISION_BITS) + 0.5)
    return np.minimum(x, in_size - 1).astype(np.int32), fixed.astype(np.int32)


def nearest_index(in0: int, in_len: int, out_size: int) -> np.ndarray:
    """Pillow's NEAREST source pixels of the box [in0, in0 + in_len): a double stepped from in0 + step/2 by
    step = in_len / out_size and truncated (a running sum, as ImagingScaleAffine's C loop does)."""
    step = in_len / out_size
    return np.cumsum(np.concatenate([[in0 + step * 0.5], np.full(out_size - 1, step)])).astype(np.int32)


# EXIF orientation (ImageOps.exif_transpose) as (transposed, flip rows, flip cols) of the decoded array: the
# upright image is the decoded one, transposed first where the tag says so, then mirrored along those axes
ORIENTATIONS = {1: (False, False, False), 2: (False, False, True), 3: (False, True, True), 4: (False, True, False),
                5: (True, False, False), 6: (True, False, True), 7: (True, True, True), 8: (True, True, False)}


def upright_size(height: int, width: int, orientation: int = 1) -> tuple[int, int]:
    """(height, width) of a decoded (height, width) image once its EXIF orientation is applied."""
    return (width, height) if ORIENTATIONS.get(orientation, ORIENTATIONS[1])[0] else (height, width)


@dataclass(frozen=True)
class Plan:
    """One image's resize: for each axis of the upright image the source index and weight of every tap, whether
    the decoded array is transposed first (EXIF orientation 5-8), and the pass order."""

    rows: tuple[np.ndarray, np.ndarray]  # (out_h, taps) index and weight
    cols: tuple[np.ndarray, np.ndarray]  # (out_w, taps)
    vertical_first: bool
    transposed: bool = False


def plan(height: int, width: int, box: tuple[int, int, int, int], pre: Preprocess, orientation: int = 1) -> Plan:
    """The resize to ``pre.size`` of `box` (left, top, right, bottom, in upright coordinates) of a decoded
    (height, width) image whose EXIF `orientation` is applied first (mirrors fold into the tap indices)."""
    transposed, flip_rows, flip_cols = ORIENTATIONS.get(orientation, ORIENTATIONS[1])
    height, width = upright_size(height, width, orientation)
    out_h, out_w = pre.size
    left, top, right, bottom = box
    if pre.resample == "nearest":
        one = lambda idx: (idx[:, None], np.full((len(idx), 1), 1 << PRECISION_BITS, np.int32))  # noqa: E731
        rows, cols = one(nearest_index(top, bottom - top, out_h)), one(nearest_index(left, right - left, out_w))
        vertical_first = False
    else:
        rows = coefficients(height, top, bottom, out_h, pre.resample)
        cols = coefficients(width, left, right, out_w, pre.resample)
        vertical_first = PILLOW_13 and out_h < height and height - out_h > 2 * (width - out_w)
    if flip_rows:
        rows = (height - 1 - rows[0], rows[1])
    if flip_cols:
        cols = (width - 1 - cols[0], cols[1])
    return Plan(rows, cols, vertical_first, transposed)


def _bucket(n: int, step: int = BUCKET) -> int:
    """`n` rounded up to its size bucket: a folder of photos of many sizes compiles a few programs."""
    step = max(step, 1 << max(0, n.bit_length() - 3))
    return max(step, -(-n // step) * step)


def pad_stack(images, height: int, width: int):
    """The (N, height, width, 3) uint8 JAX batch of `images` (each (h, w, 3)), zero-padded at the bottom and
    right. Padding runs where no program is compiled per image size: numpy arrays on the host (one transfer),
    torch tensors (torchvision's decoder) and CUDA arrays (nvImageCodec's, through torch when it is
    installed) with torch on the device, one zero-copy DLPack hand-over per batch. Other device arrays fall
    back to ``jnp.pad``, which compiles once per distinct image size."""
    import jax
    import jax.numpy as jnp

    if all(isinstance(im, np.ndarray) for im in images):
        out = np.zeros((len(images), height, width, 3), np.uint8)
        for i, im in enumerate(images):
            out[i, :im.shape[0], :im.shape[1]] = im
        return jnp.asarray(out)
    torch = _torch()
    if torch is not None and all(isinstance(im, torch.Tensor) or hasattr(im, "__cuda_array_interface__")
                                 for im in images):
        tensors = [im if isinstance(im, torch.Tensor) else torch.as_tensor(im, device="cuda") for im in images]
        out = torch.zeros((len(images), height, width, 3), dtype=torch.uint8, device=tensors[0].device)
        for i, t in enumerate(tensors):
            out[i, :t.shape[0], :t.shape[1]] = t
        return jax.dlpack.from_dlpack(out)
    return jnp.stack([jnp.pad(jnp.asarray(im), ((0, height - im.shape[0]), (0, width - im.shape[1]), (0, 0)))
                      for im in images])


def _torch():
    try:
        import torch
    except ImportError:
        return None
    return torch


def _pad_taps(pairs, taps: int):
    """Stack (index, weight) pairs of one axis, padded with weight-0 taps to `taps`."""
    idx = np.stack([np.pad(i, ((0, 0), (0, taps - i.shape[1]))) for i, _ in pairs])
    wt = np.stack([np.pad(w, ((0, 0), (0, taps - w.shape[1]))) for _, w in pairs])
    return idx, wt


@functools.lru_cache(maxsize=None)
def _program(vertical_first: bool, transposed: bool = False):
    """The jit-compiled batch resize: (B, H, W, 3) uint8 + per-image taps -> (B, out_h, out_w, 3) uint8."""
    import jax
    import jax.numpy as jnp

    half = 1 << (PRECISION_BITS - 1)

    def one_pass(image, idx, wt, axis):  # image (H, W, 3) int32; idx, wt (out, taps)
        acc = jnp.zeros(image.shape[:axis] + (idx.shape[0],) + image.shape[axis + 1:], jnp.int32)
        shape = (-1, 1, 1) if axis == 0 else (1, -1, 1)
        for k in range(idx.shape[1]):  # unrolled: XLA fuses the taps into one kernel
            acc = acc + jnp.take(image, idx[:, k], axis=axis) * wt[:, k].reshape(shape)
        return jnp.clip((acc + half) >> PRECISION_BITS, 0, 255)  # nearest: one tap of weight 1.0, exact

    def resize(image, ri, rw, ci, cw):
        image = image.astype(jnp.int32)
        if transposed:
            image = jnp.swapaxes(image, 0, 1)
        if vertical_first:
            image = one_pass(one_pass(image, ri, rw, 0), ci, cw, 1)
        else:
            image = one_pass(one_pass(image, ci, cw, 1), ri, rw, 0)
        return image.astype(jnp.uint8)

    return jax.jit(jax.vmap(resize))


def resize_batch(images, boxes, pre: Preprocess, orientations=None):
    """Pillow's ``exif_transpose`` then ``resize(pre.size, pre.resample, box=box)`` of each image: a list of
    (H, W, 3) uint8 arrays (numpy or JAX, any sizes), their boxes (left, top, right, bottom, in upright
    coordinates) and EXIF orientations (None: all upright) -> one (N, h, w, 3) uint8 JAX array, pixel for
    pixel what Pillow gives. Images may be numpy arrays, torch CUDA tensors or CUDA arrays (:func:`pad_stack`)."""
    import jax.numpy as jnp

    n = len(images)
    if n == 0:
        return jnp.zeros((0, *pre.size, 3), jnp.uint8)
    orientations = orientations or [1] * n
    plans = [plan(int(im.shape[0]), int(im.shape[1]), box, pre, o) for im, box, o in zip(images, boxes, orientations)]
    keys = sorted({(p.vertical_first, p.transposed) for p in plans})
    if len(keys) == 1:  # the common case: one program, the batch in order
        return _resize_group(images, plans, pre, *keys[0])
    parts, order = [], []
    for key in keys:
        members = [i for i, p in enumerate(plans) if (p.vertical_first, p.transposed) == key]
        parts.append(_resize_group([images[i] for i in members], [plans[i] for i in members], pre, *key))
        order += members
    return jnp.concatenate(parts)[np.argsort(order)]


def _resize_group(images, plans: list[Plan], pre: Preprocess, vertical_first: bool, transposed: bool):
    import jax.numpy as jnp

    H = _bucket(max(int(im.shape[0]) for im in images))
    W = _bucket(max(int(im.shape[1]) for im in images))
    padded = pad_stack(images, H, W)
    taps_r = _bucket(max(p.rows[0].shape[1] for p in plans), 4) if pre.resample != "nearest" else 1
    taps_c = _bucket(max(p.cols[0].shape[1] for p in plans), 4) if pre.resample != "nearest" else 1
    ri, rw = _pad_taps([p.rows for p in plans], taps_r)
    ci, cw = _pad_taps([p.cols for p in plans], taps_c)
    program = _program(vertical_first, transposed)
    return program(padded, jnp.asarray(ri), jnp.asarray(rw), jnp.asarray(ci), jnp.asarray(cw))
