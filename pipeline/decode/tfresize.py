"""Pillow's resize written as TensorFlow ops, for :mod:`pipeline.decode.tfdecode`: the box mapped onto the
output as ``Image.resize(size, filter, box=...)`` maps it, Pillow's own fixed-point arithmetic for
bilinear, bicubic and Lanczos (libImaging/Resample.c, step by step) and its choice of source pixels
for nearest, so the pixels are Pillow's (tests/decode/test_tfdecode.py, tests/export/test_export.py)."""
from __future__ import annotations

import numpy as np
import PIL

from ..preprocess import Preprocess


def _tf():
    import tensorflow as tf  # imported when an export is built, never by featurize

    return tf


def resize_box(image, box, pre: Preprocess):
    """Pillow's resize(size, filter, box=...): the box is mapped onto the output, and the filter reads
    pixels outside the box where the image has them (a crop-then-resize would not). Bilinear, bicubic
    and Lanczos follow Pillow's own arithmetic (:func:`_pillow_pass`), nearest its choice of source
    pixels (:func:`_pillow_nearest`), so the pixels are Pillow's."""
    tf = _tf()
    h, w = pre.size
    if pre.resample in _FILTERS:
        left, top, bw, bh = box
        image = tf.cast(image, tf.int32)
        x = lambda im: _pillow_pass(im, 1, left, left + bw, w, pre.resample)  # noqa: E731
        y = lambda im: _pillow_pass(im, 0, top, top + bh, h, pre.resample)  # noqa: E731
        in_h, in_w = tf.shape(image)[0], tf.shape(image)[1]
        # Pillow 13 (python-pillow/Pillow#9549) runs the vertical pass first when the height is reduced
        # by more than twice what the width is; older Pillows horizontal first. A uint8 image in between.
        vertical_first = (h < in_h) & (in_h - h > 2 * (in_w - w)) & _PILLOW_13
        image = tf.cond(vertical_first, lambda: x(y(image)), lambda: y(x(image)))
        return tf.ensure_shape(tf.cast(image, tf.uint8), [h, w, 3])
    return tf.ensure_shape(_pillow_nearest(image, box, pre.size), [h, w, 3])


def _nearest_index(in0, in_len, out_size: int):
    """The source pixel of each output pixel in Pillow's NEAREST resize of the box [in0, in0 + in_len):
    ImagingScaleAffine steps a double from in0 + step / 2 by step = in_len / out_size and truncates it
    (a running sum, as its C loop does: cumsum adds in order)."""
    tf = _tf()
    step = tf.cast(in_len, tf.float64) / out_size
    start = tf.cast(in0, tf.float64) + step * 0.5
    return tf.cast(tf.math.cumsum(tf.concat([start[None], tf.fill([out_size - 1], step)], 0)), tf.int32)


def _pillow_nearest(image, box, size):
    """Pillow's resize(size, NEAREST, box=...): whole source pixels picked by _nearest_index."""
    tf = _tf()
    left, top, bw, bh = box
    rows = tf.gather(image, _nearest_index(top, bh, size[0]), axis=0)
    return tf.gather(rows, _nearest_index(left, bw, size[1]), axis=1)


# ---- Pillow's resampling (libImaging/Resample.c), step by step ------------------------------------
_PRECISION_BITS = 32 - 8 - 2
_PILLOW_13 = int(PIL.__version__.split(".")[0]) >= 13  # the pass order of the Pillow featurize uses


def _bilinear(x):
    x = _tf().abs(x)
    return _tf().where(x < 1.0, 1.0 - x, 0.0)


def _bicubic(x, a=-0.5):
    tf = _tf()
    x = tf.abs(x)
    return tf.where(x < 1.0, ((a + 2.0) * x - (a + 3.0)) * x * x + 1,
                    tf.where(x < 2.0, (((x - 5) * x + 8) * x - 4) * a, 0.0))


def _lanczos(x):
    tf = _tf()

    def sinc(v):
        safe = tf.where(tf.equal(v, 0.0), tf.ones_like(v), v) * np.pi
        return tf.where(tf.equal(v, 0.0), tf.ones_like(v), tf.sin(safe) / safe)

    return tf.where((x >= -3.0) & (x < 3.0), sinc(x) * sinc(x / 3.0), 0.0)


_FILTERS = {"bilinear": (1.0, _bilinear), "bicubic": (2.0, _bicubic), "lanczos": (3.0, _lanczos)}


def _coefficients(in_size, in0, in1, out_size: int, resample: str):
    """Pillow's precompute_coeffs + normalize_coeffs_8bpc: per output pixel, the first input pixel of
    each tap (clamped) and its weight in fixed point (22 fractional bits; 0 past the window)."""
    tf = _tf()
    support, fn = _FILTERS[resample]
    in_size = tf.cast(in_size, tf.int64)
    in0, in1 = tf.cast(in0, tf.float64), tf.cast(in1, tf.float64)
    scale = (in1 - in0) / out_size
    filterscale = tf.maximum(scale, 1.0)
    support = support * filterscale
    ksize = tf.cast(tf.math.ceil(support), tf.int64) * 2 + 1
    center = in0 + (tf.range(out_size, dtype=tf.float64) + 0.5) * scale
    xmin = tf.maximum(tf.cast(tf.floor(center - support + 0.5), tf.int64), 0)
    count = tf.minimum(tf.cast(tf.floor(center + support + 0.5), tf.int64), in_size) - xmin
    taps = tf.range(ksize, dtype=tf.int64)[None]
    x = taps + xmin[:, None]
    k = tf.where(taps < count[:, None], fn((tf.cast(x, tf.float64) - center[:, None] + 0.5) * (1.0 / filterscale)),
                 tf.constant(0.0, tf.float64))
    total = tf.math.cumsum(k, axis=1)[:, -1:]  # summed left to right, as the C loop does
    k = tf.where(tf.not_equal(total, 0.0), k / tf.where(tf.not_equal(total, 0.0), total, 1.0), k)
    fixed = tf.sign(k) * tf.floor(tf.abs(k) * (1 << _PRECISION_BITS) + 0.5)
    return tf.minimum(x, in_size - 1), tf.cast(fixed, tf.int32)


def _pillow_pass(image, axis: int, in0, in1, out_size: int, resample: str):
    """One axis of Pillow's two-pass resize on an int32 (H, W, 3) image holding uint8 values: int32
    sums of pixel x fixed-point weight, rounded and clipped to 0..255 (ImagingResampleHorizontal/Vertical)."""
    tf = _tf()
    index, weight = _coefficients(tf.shape(image)[axis], in0, in1, out_size, resample)
    shape = [-1, 1, 1] if axis == 0 else [1, -1, 1]

    def add(k, acc):
        taps = tf.gather(image, index[:, k], axis=axis)
        return k + 1, acc + taps * tf.reshape(weight[:, k], shape)

    out_shape = tf.tensor_scatter_nd_update(tf.shape(image), [[axis]], [out_size])
    acc0 = tf.fill(out_shape, tf.constant(1 << (_PRECISION_BITS - 1), tf.int32))
    _, acc = tf.while_loop(lambda k, acc: k < tf.shape(index, out_type=tf.int64)[1], add,
                           (tf.constant(0, tf.int64), acc0))
    return tf.clip_by_value(tf.bitwise.right_shift(acc, _PRECISION_BITS), 0, 255)
