"""pipeline/decode/images.py ``decode`` written as TensorFlow ops, for the ``predict_bytes`` signature of an export.

The same steps as Pillow's path, giving Pillow's pixels (bench/decode_parity.py, tests/decode/test_tfdecode.py):

* JPEG: DCT-domain downscaling when the crop is at least twice the target (libjpeg's ``ratio``,
  chosen exactly as Pillow's ``draft`` chooses it), libjpeg's ISLOW IDCT as Pillow runs it, and
  the EXIF orientation (read from the APP1 segment with byte ops, applied as ``exif_transpose``).
* PNG: alpha and palette transparency (tRNS) composited on white (Pillow's rounding), a tRNS
  colour key of a grey or RGB PNG ignored as Pillow's L/RGB modes ignore it, 16-bit grey scaled
  by x * 255 // 65535 (16-bit colour keeps the high byte, as in Pillow), 1/2/4-bit images
  expanded without libpng's bogus alpha, and the EXIF orientation of an eXIf chunk.
* GIF: the first frame on its logical screen, a transparent index white; BMP: 8-bit palettes
  looked up in the file's colour table (1/4-bit and RLE BMPs are refused by name).
* The same centre crop box (``crop_box``, with the same half-to-even rounding) and the resize
  (:mod:`pipeline.decode.tfresize`):
  for bilinear, bicubic and Lanczos, Pillow's own arithmetic (its filter weights in 22-bit fixed
  point, int32 sums, the two passes with a uint8 image in between, in the order the installed
  Pillow picks: 13 may run the vertical pass first, older ones never); for nearest, the source
  pixels Pillow picks.

One known difference: a CMYK JPEG. TensorFlow's ``decode_jpeg`` converts CMYK to RGB itself as
C * K // 255 where Pillow rounds, and gives no access to the CMYK samples, so about half the values
are one level lower before the resize (at most 1-3 levels after it, bench/decode_parity.py).
Images over :data:`pipeline.decode.images.MAX_PIXELS` are refused before decoding.
"""
from __future__ import annotations

from ..preprocess import Preprocess
from .formats import MAX_PIXELS
from .tfresize import _pillow_nearest, _tf, resize_box  # noqa: F401 - _pillow_nearest: tests

_HEAD_BYTES = 1 << 17  # where the EXIF segment and the size fields are looked for


class _Bytes:
    """The first bytes of a file as int64 values; reads past the end give 0. Few ops per read: every
    export builds the decoder's graph op by op (its trace is most of an export's time)."""

    def __init__(self, data):
        tf = _tf()
        n = tf.minimum(tf.strings.length(data), _HEAD_BYTES)
        raw = tf.io.decode_raw(tf.strings.substr(data, 0, n), tf.uint8)
        self.n = tf.cast(n, tf.int64)
        self.b = tf.concat([tf.cast(raw, tf.int64), tf.zeros([16], tf.int64)], axis=0)
        self.last = self.n + 15  # the last index of self.b

    def at(self, i):
        tf = _tf()
        return tf.gather(self.b, tf.clip_by_value(tf.cast(i, tf.int64), 0, self.last))

    def u16(self, i, little=False):
        return self._word(i, 2, little)

    def u32(self, i, little=False):
        return self._word(i, 4, little)

    def _word(self, i, size, little):
        """The `size`-byte unsigned word at i (a scalar or a vector of offsets), big- or little-endian:
        its bytes read in one gather and weighted by 256 ** k in the byte order asked for."""
        tf = _tf()
        parts = self.at(tf.expand_dims(tf.cast(i, tf.int64), -1) + tf.range(size, dtype=tf.int64))
        big = tf.constant([256 ** (size - 1 - k) for k in range(size)], tf.int64)
        weights = (big[::-1] if little else big) if isinstance(little, bool) else tf.where(little, big[::-1], big)
        return tf.reduce_sum(parts * weights, axis=-1)


def _exif_start(b: _Bytes):
    """Offset of the TIFF header inside the first APP1 'Exif\\0\\0' segment of a JPEG, or -1."""
    tf = _tf()
    exif = tf.constant([69, 120, 105, 102, 0, 0], tf.int64)  # b"Exif\0\0"

    def more(offset, found):
        marker = b.at(offset + 1)
        return ((offset + 4 < b.n) & (found < 0) & tf.equal(b.at(offset), 255)
                & tf.not_equal(marker, 0xDA) & tf.not_equal(marker, 0xD9))

    def step(offset, found):
        label = b.at(offset + 4 + tf.range(6, dtype=tf.int64))
        is_exif = tf.equal(b.at(offset + 1), 0xE1) & tf.reduce_all(tf.equal(label, exif))
        return offset + 2 + b.u16(offset + 2), tf.where(is_exif, offset + 10, found)

    _, found = tf.while_loop(more, step, (tf.constant(2, tf.int64), tf.constant(-1, tf.int64)), maximum_iterations=512)
    return found


def jpeg_orientation(data):
    """The EXIF orientation tag (0x0112) of a JPEG, 1 when absent or out of range."""
    b = _Bytes(data)
    return _tiff_orientation(b, _exif_start(b))


def _tiff_orientation(b: _Bytes, t):
    """The orientation tag in the first IFD of the TIFF block (EXIF) at t; 1 if t < 0, absent or out of range."""
    tf = _tf()
    little = tf.equal(b.at(t), 0x49)  # "II": little-endian TIFF
    ifd = t + b.u32(t + 4, little)
    count = tf.clip_by_value(b.u16(ifd, little), 0, 512)
    entries = ifd + 2 + 12 * tf.range(count, dtype=tf.int64)
    tags = b.u16(entries, little)
    values = b.u16(entries + 8, little)
    hit = tf.equal(tags, 0x0112)
    value = tf.reduce_max(tf.where(hit, values, tf.zeros_like(values)))
    ok = (t >= 0) & tf.reduce_any(hit) & (value >= 1) & (value <= 8)
    return tf.cast(tf.where(ok, value, 1), tf.int32)


def crop_box(width, height, pre: Preprocess):
    """pipeline.decode.images.crop_box in TensorFlow: (left, top, box width, box height), int32."""
    tf = _tf()
    th, tw = pre.size
    w, h = tf.cast(width, tf.float64), tf.cast(height, tf.float64)
    scale = tf.minimum(w / tw, h / th) * pre.crop_fraction
    bw = tf.maximum(1, tf.minimum(width, tf.cast(tf.round(tw * scale), tf.int32)))
    bh = tf.maximum(1, tf.minimum(height, tf.cast(tf.round(th * scale), tf.int32)))
    return (width - bw) // 2, (height - bh) // 2, bw, bh


def _draft_ratio(data, orientation, pre: Preprocess):
    """The DCT scale 1, 2, 4 or 8 Pillow's draft() picks for this JPEG (pipeline.decode.images._draft)."""
    tf = _tf()
    shape = tf.image.extract_jpeg_shape(data)
    H, W = shape[0], shape[1]
    rotated = orientation >= 5
    w, h = tf.where(rotated, H, W), tf.where(rotated, W, H)
    _, _, bw, bh = crop_box(w, h, pre)
    need = tf.maximum(pre.size[1] / tf.cast(bw, tf.float64), pre.size[0] / tf.cast(bh, tf.float64))
    rw = tf.cast(tf.math.ceil(tf.cast(W, tf.float64) * need), tf.int32)
    rh = tf.cast(tf.math.ceil(tf.cast(H, tf.float64) * need), tf.int32)
    scale = tf.minimum(W // tf.maximum(rw, 1), H // tf.maximum(rh, 1))
    ratio = tf.where(scale >= 8, 8, tf.where(scale >= 4, 4, tf.where(scale >= 2, 2, 1)))
    return tf.where(need < 0.5, ratio, 1), tf.cast(H, tf.int64) * tf.cast(W, tf.int64)


def _decode_jpeg(data, pre):
    """A JPEG and its EXIF orientation (which the DCT scale depends on)."""
    tf = _tf()
    orientation = jpeg_orientation(data)
    ratio, pixels = _draft_ratio(data, orientation, pre)
    with tf.control_dependencies([_pixel_check(pixels)]):
        index = tf.cast(tf.math.log(tf.cast(ratio, tf.float32)) / tf.math.log(2.0) + 0.5, tf.int32)
    # INTEGER_ACCURATE (libjpeg's ISLOW) is Pillow's IDCT: the decoded pixels are bit-identical
    image = tf.switch_case(index, [lambda r=r: tf.io.decode_jpeg(data, channels=3, ratio=r, dct_method="INTEGER_ACCURATE")
                                   for r in (1, 2, 4, 8)])
    return image, orientation


def _pixel_check(pixels):
    tf = _tf()
    return tf.debugging.assert_less_equal(pixels, tf.constant(MAX_PIXELS, tf.int64),
                                          message=f"image has too many pixels (limit {MAX_PIXELS})")


def _decode_png(data):
    """A PNG as pipeline.decode.images sees it, and its EXIF orientation (an eXIf chunk, as Pillow reads it).

    As _to_rgb: 16-bit grey scaled (x * 255 // 65535, not the high byte), alpha and palette
    transparency composited on white, and a tRNS colour key of a grey or RGB PNG ignored (Pillow's
    modes L, I;16 and RGB carry no alpha). libpng's own conversions do the rest: 16-bit colour
    keeps the high byte (Pillow's RGB;16B), 1/2/4-bit grey is scaled up."""
    tf = _tf()
    b = _Bytes(data)
    pixels = b.u32(16) * b.u32(20)  # IHDR width x height
    depth, colour = b.at(24), b.at(25)
    trns, exif = _png_chunks(data)
    alpha = tf.equal(colour, 4) | tf.equal(colour, 6) | (tf.equal(colour, 3) & trns)
    grey16 = tf.equal(colour, 0) & tf.equal(depth, 16)
    with tf.control_dependencies([_pixel_check(pixels)]):
        # channels=4 only where there is alpha: libpng fills a missing alpha of a 1/2/4-bit PNG
        # with 1, 3 or 15 instead of 255 (TensorFlow 2.21), which would blend the image into white
        image = tf.case([(alpha, lambda: _on_white(tf.io.decode_png(data, channels=4))),
                         (grey16, lambda: _scale16(tf.io.decode_png(data, channels=1, dtype=tf.uint16)))],
                        default=lambda: tf.io.decode_png(data, channels=3))
    block = tf.strings.substr(data, tf.maximum(exif, 0), _HEAD_BYTES)
    prefixed = tf.equal(tf.strings.substr(block, 0, 6), b"Exif\0\0")  # not in the PNG spec; Pillow skips it
    start = tf.where(exif < 0, tf.constant(-1, tf.int64), tf.where(prefixed, tf.constant(6, tf.int64), 0))
    return image, _tiff_orientation(_Bytes(block), start)


def _png_chunks(data):
    """A walk over the chunk headers up to IEND: whether a tRNS chunk comes before the first IDAT,
    and the offset of the last eXIf chunk's data (-1 if none; Pillow reads one after IDAT too)."""
    tf = _tf()
    size = tf.cast(tf.strings.length(data), tf.int64)
    eight = tf.constant(8, tf.int64)

    def header(offset):
        offset = tf.minimum(offset, size)  # Substr refuses a start past the end
        raw = tf.io.decode_raw(tf.strings.join([tf.strings.substr(data, offset, eight), b"\0" * 8]), tf.uint8)[:8]
        length = tf.reduce_sum(tf.cast(raw[:4], tf.int64) * tf.constant([1 << 24, 1 << 16, 1 << 8, 1], tf.int64))
        return length, tf.strings.substr(data, tf.minimum(offset + 4, size), tf.constant(4, tf.int64))

    def more(offset, idat, trns, exif):
        return (offset + 8 <= size) & tf.not_equal(header(offset)[1], b"IEND")

    def step(offset, idat, trns, exif):
        length, kind = header(offset)
        return (offset + 12 + length, idat | tf.equal(kind, b"IDAT"), trns | (~idat & tf.equal(kind, b"tRNS")),
                tf.where(tf.equal(kind, b"eXIf"), offset + 8, exif))

    state = (eight, tf.constant(False), tf.constant(False), tf.constant(-1, tf.int64))
    _, _, trns, exif = tf.while_loop(more, step, state, maximum_iterations=1 << 16)
    return trns, exif


def _on_white(rgba):
    """Pillow's alpha_composite onto opaque white, then RGB. Its integer arithmetic (7 extra bits,
    divisions by 255 rounded) equals round((c * a + 255 * (255 - a)) / 255) for every c and a
    (tests/decode/test_tfdecode.py checks all 65,536 pairs), which this computes in float32."""
    tf = _tf()
    rgba = tf.cast(rgba, tf.float32)
    alpha = rgba[..., 3:] / 255.0
    rgb = rgba[..., :3] * alpha + 255.0 * (1.0 - alpha)
    return tf.cast(tf.clip_by_value(tf.round(rgb), 0, 255), tf.uint8)


def _scale16(grey):
    """pipeline.decode.images._to_rgb for I;16: x * 255 // 65535 (libpng's 8-bit output keeps the high byte)."""
    tf = _tf()
    level = tf.cast(grey, tf.int32) * 255 // 65535
    return tf.cast(tf.tile(level, [1, 1, 3]), tf.uint8)


def _gif_blocks(b: _Bytes):
    """Offsets of the first image descriptor of a GIF (-1 if not found) and of the last graphic control
    extension before it (-1 if none), walking the blocks after the header and global colour table."""
    tf = _tf()
    packed = b.at(10)
    start = 13 + tf.where(packed >= 128, 3 * tf.bitwise.left_shift(tf.constant(2, tf.int64), packed % 8), 0)

    def skip_sub_blocks(p):  # data sub-blocks: a length byte, that many bytes, ..., a 0 byte
        return tf.while_loop(lambda q: (q < b.n) & tf.not_equal(b.at(q), 0), lambda q: (q + 1 + b.at(q),), (p,),
                             maximum_iterations=1 << 16)[0] + 1

    def more(offset, gce):
        return (offset < b.n) & tf.equal(b.at(offset), 0x21)

    def step(offset, gce):
        gce = tf.where(tf.equal(b.at(offset + 1), 0xF9) & tf.equal(b.at(offset + 2), 4), offset, gce)
        return skip_sub_blocks(offset + 2), gce

    offset, gce = tf.while_loop(more, step, (start, tf.constant(-1, tf.int64)), maximum_iterations=1 << 12)
    return tf.where((offset < b.n) & tf.equal(b.at(offset), 0x2C), offset, -1), gce


def _put(text, at, value, n: int):
    """text with the n bytes at `at` replaced by `value` (n bytes)."""
    tf = _tf()
    at = tf.cast(at, tf.int32)
    return tf.strings.join([tf.strings.substr(text, 0, at), value,
                            tf.strings.substr(text, at + n, tf.strings.length(text))])


def _decode_gif(data):
    """The first frame of a GIF as Pillow gives it, on its canvas: the logical screen (grown to hold the
    frame), the part the frame does not cover in colour 0 of the frame's palette, and a transparent
    colour index white, as compositing on white makes it (the canvas too then: Pillow fills it with
    that index). TensorFlow's decoder paints transparent pixels black and returns the frame's own
    rectangle, so the bytes are rewritten first (the index made opaque white, the frame moved to the
    origin) and the canvas is added after."""
    tf = _tf()
    b = _Bytes(data)
    image, gce = _gif_blocks(b)  # image < 0: not within the first _HEAD_BYTES; decoded as TensorFlow does
    found = image >= 0
    local = found & (b.at(image + 9) >= 128)
    table = tf.where(local, image + 10, tf.where(b.at(10) >= 128, tf.constant(13, tf.int64), -1))
    entries = tf.bitwise.left_shift(tf.constant(2, tf.int64), tf.where(local, b.at(image + 9), b.at(10)) % 8)
    flags, index = b.at(gce + 3), b.at(gce + 6)
    transparent = found & (gce >= 0) & tf.equal(flags % 2, 1) & (table >= 0) & (index < entries)
    fill = tf.where(transparent, tf.constant([255, 255, 255], tf.int64),
                    tf.where(table >= 0, b.at(table + tf.range(3, dtype=tf.int64)), tf.zeros([3], tf.int64)))

    def opaque_white(text):
        cleared = tf.gather(tf.constant([bytes([v]) for v in range(256)]), flags - 1)  # flag bit 0 off
        return _put(_put(text, table + 3 * index, b"\xff\xff\xff", 3), gce + 3, cleared, 1)

    left, top, fw, fh = (tf.where(found, b.u16(image + k, True), 0) for k in (1, 3, 5, 7))
    canvas = tf.maximum(b.u16(6, True), left + fw) * tf.maximum(b.u16(8, True), top + fh)
    data = tf.cond(left + top > 0, lambda: _put(data, image + 1, b"\0" * 4, 4), lambda: data)  # to (0, 0)
    data = tf.cond(transparent, lambda: opaque_white(data), lambda: data)
    with tf.control_dependencies([_pixel_check(canvas)]):  # as Pillow's limit, on the screen's size
        frame = tf.io.decode_gif(data)[0]
    left, top = tf.cast(left, tf.int32), tf.cast(top, tf.int32)
    fh, fw = tf.shape(frame)[0], tf.shape(frame)[1]
    h = tf.maximum(tf.cast(b.u16(8, True), tf.int32), top + fh)
    w = tf.maximum(tf.cast(b.u16(6, True), tf.int32), left + fw)
    pad = [[top, h - top - fh], [left, w - left - fw]]
    fill = tf.cast(fill, tf.uint8)

    def on_canvas():
        return tf.stack([tf.pad(frame[..., c], pad, constant_values=fill[c]) for c in range(3)], -1)

    return tf.cond(tf.equal(h * w, fh * fw), lambda: frame, on_canvas)


def _decode_bmp(data):
    """A BMP as Pillow gives it: TensorFlow's decoder returns the indices of an 8-bit palette BMP as
    grey levels, so they are looked up in the file's colour table (BGR0 entries after the header).
    1- and 4-bit and run-length-encoded BMPs, which TensorFlow cannot decode, are refused by name."""
    tf = _tf()
    b = _Bytes(data)
    bits, compression = b.u16(28, True), b.u32(30, True)
    width, height = b.u32(18, True), b.u32(22, True)
    height = tf.where(height >= 1 << 31, (1 << 32) - height, height)  # negative: rows stored top-down
    ok = tf.debugging.Assert((bits >= 8) & (compression != 1) & (compression != 2), [
        "predict_bytes cannot decode 1- or 4-bit or run-length-encoded BMP files; convert the image "
        "to PNG or decode it with the project's decoder (pipeline.decode.images) and use serving_default"])
    with tf.control_dependencies([ok, _pixel_check(width * height)]):
        palette8 = tf.equal(bits, 8)

    def through_palette():
        count = b.u32(46, True)
        count = tf.where((count == 0) | (count > 256), tf.constant(256, tf.int64), count)
        entry = 14 + b.u32(14, True) + 4 * tf.range(256, dtype=tf.int64)
        table = b.at(entry[:, None] + tf.constant([2, 1, 0], tf.int64))  # BGR0 -> RGB
        table = tf.where(tf.range(256, dtype=tf.int64)[:, None] < count, table, tf.zeros_like(table))
        return tf.gather(tf.cast(table, tf.uint8), tf.cast(tf.io.decode_bmp(data, channels=0)[..., 0], tf.int32))

    return tf.cond(palette8, through_palette, lambda: tf.io.decode_bmp(data, channels=3))


def _decode_other(data):
    """GIF (first frame, as _decode_gif) and BMP (as _decode_bmp)."""
    tf = _tf()
    is_gif = tf.equal(tf.strings.substr(data, 0, 3), b"GIF")
    is_bmp = tf.equal(tf.strings.substr(data, 0, 2), b"BM")
    return tf.cond(is_gif, lambda: _decode_gif(data),
                   lambda: tf.cond(is_bmp, lambda: _decode_bmp(data),
                                   lambda: tf.io.decode_image(data, channels=3, expand_animations=False)))


def orient(image, orientation):
    """Pillow's exif_transpose for orientations 1..8."""
    tf = _tf()
    t = lambda im: tf.transpose(im, [1, 0, 2])  # noqa: E731
    branches = [lambda: image, lambda: image[:, ::-1], lambda: image[::-1, ::-1], lambda: image[::-1],
                lambda: t(image), lambda: tf.image.rot90(image, 3), lambda: t(image)[::-1, ::-1],
                lambda: tf.image.rot90(image, 1)]
    return tf.switch_case(orientation - 1, branches)


def decode_image(data, pre: Preprocess):
    """One encoded image (a scalar string) -> uint8 (H, W, 3) of pre.size, as pipeline.decode.images.decode."""
    tf = _tf()
    is_jpeg = tf.equal(tf.strings.substr(data, 0, 2), b"\xff\xd8")
    is_png = tf.equal(tf.strings.substr(data, 0, 8), b"\x89PNG\r\n\x1a\n")
    image, orientation = tf.cond(is_jpeg, lambda: _decode_jpeg(data, pre),
                                 lambda: tf.cond(is_png, lambda: _decode_png(data),
                                                 lambda: (_decode_other(data), tf.constant(1))))
    image = orient(image, orientation)
    shape = tf.shape(image)
    return resize_box(image, crop_box(shape[1], shape[0], pre), pre)
