"""predict_bytes' TensorFlow decoder (pipeline/decode/tfdecode.py) gives the Pillow decoder's pixels
(pipeline/decode/images.py) on the awkward inputs of ../shared/docs/RELIABILITY.md A08-A14 and A16, for every filter."""
from __future__ import annotations

import functools
import io

import numpy as np
import pytest
from awkward_images import CASES
from PIL import Image

from pipeline.decode.images import _RESAMPLE, decode
from pipeline.preprocess import RESAMPLING, Preprocess

tf = pytest.importorskip("tensorflow")

# CMYK JPEGs are the one known gap (see test_cmyk_jpeg_is_off_by_at_most_one_level_before_resizing)
EXACT = [name for name in CASES if "CMYK" not in name]
AS_IS = Preprocess(size=(16, 24), resample="nearest")  # 24x16 images keep their pixels


@functools.lru_cache(maxsize=None)
def _tf_decoder(pre: Preprocess):
    from pipeline.decode.tfdecode import decode_image

    return tf.function(lambda data: decode_image(data, pre), autograph=False)  # as export traces it


def _both(data: bytes, pre: Preprocess) -> tuple[np.ndarray, np.ndarray]:
    return decode(data, pre), _tf_decoder(pre)(tf.constant(data)).numpy()


@pytest.mark.slow
@pytest.mark.parametrize("resample", RESAMPLING)
@pytest.mark.parametrize("case", EXACT)
def test_tf_decode_gives_pillows_pixels(case, resample):
    # down- and upscaled, through a centre crop: every uint8 value the same as training's decoder
    for seed, (w, h) in enumerate([(37, 29), (9, 14)]):
        data = CASES[case](w, h, seed)
        pillow, ours = _both(data, Preprocess(size=(12, 10), crop_fraction=0.875, resample=resample))
        assert (pillow == ours).all(), f"{case}, {resample}, {w}x{h}: {int((pillow != ours).sum())} values differ"


def test_transparency_is_composited_as_pillow_does_for_every_value_and_alpha():
    # all 65,536 (value, alpha) pairs of an RGBA PNG, on white: Pillow's integer arithmetic, exactly
    from pipeline.decode.tfdecode import _on_white

    v, a = np.meshgrid(np.arange(256, dtype=np.uint8), np.arange(256, dtype=np.uint8))
    buf = io.BytesIO()
    Image.fromarray(np.dstack([v, 255 - v, v // 2, a]), "RGBA").save(buf, "PNG")
    ours = _on_white(tf.io.decode_png(buf.getvalue(), channels=4)).numpy()
    assert (ours == decode(buf.getvalue(), Preprocess(size=(256, 256)))).all()


@pytest.mark.parametrize("seed", range(4))
def test_nearest_picks_pillows_source_pixels(seed):
    # Pillow's NEAREST with a box, down- and upscaling, odd ratios: the same source pixels
    from pipeline.decode.tfdecode import _pillow_nearest

    rng = np.random.default_rng(seed)
    for _ in range(10):
        W, H = (int(v) for v in rng.integers(1, 300, 2))
        w, h = (int(v) for v in rng.integers(1, 120, 2))
        left, top = int(rng.integers(0, W)), int(rng.integers(0, H))
        bw, bh = int(rng.integers(1, W - left + 1)), int(rng.integers(1, H - top + 1))
        image = rng.integers(0, 256, (H, W, 3)).astype(np.uint8)
        box = (left, top, left + bw, top + bh)
        want = np.asarray(Image.fromarray(image).resize((w, h), _RESAMPLE["nearest"], box=box))
        got = _pillow_nearest(tf.constant(image), (left, top, bw, bh), (h, w)).numpy()
        assert (got == want).all(), (W, H, w, h, left, top, bw, bh)


@pytest.mark.slow
def test_gif_transparency_turns_white_in_both_decoders():
    # TensorFlow's GIF decoder paints a transparent index black; predict_bytes must see white
    p = Image.new("P", (24, 16), 1)
    p.putpalette([10, 20, 30, 200, 0, 0] + [0] * 762)
    p.putpixel((0, 0), 0)
    buf = io.BytesIO()
    p.save(buf, "GIF", transparency=1)
    pillow, ours = _both(buf.getvalue(), AS_IS)
    assert ours[0, 0].tolist() == [10, 20, 30] and ours[4, 4].tolist() == [255, 255, 255]
    assert (pillow == ours).all()


@pytest.mark.slow
def test_cmyk_jpeg_is_off_by_at_most_one_level_before_resizing():
    # the documented gap: TensorFlow's decode_jpeg converts CMYK to RGB itself, truncating C*K/255
    # where Pillow rounds, and exposes no raw CMYK; at the image's own size the values differ by <= 1
    data = CASES["A13 CMYK JPEG"](24, 16, 0)
    pillow, ours = _both(data, AS_IS)
    diff = pillow.astype(int) - ours
    assert diff.min() >= 0 and diff.max() == 1


@pytest.mark.slow
def test_decoder_survives_a_saved_model_round_trip(tmp_path):
    # the ops predict_bytes runs (chunk walks, GIF rewrite, tf.case) saved and reloaded, on a mixed batch
    from pipeline.decode.tfdecode import decode_image

    pre = Preprocess(size=(12, 10), crop_fraction=0.875, resample="nearest")
    module = tf.Module()
    module.decode = tf.function(
        lambda images: tf.map_fn(lambda d: decode_image(d, pre), images,
                                 fn_output_signature=tf.TensorSpec([12, 10, 3], tf.uint8)),
        input_signature=[tf.TensorSpec([None], tf.string)], autograph=False)
    tf.saved_model.save(module, str(tmp_path / "m"))
    blobs = [CASES[name](37, 29, 0) for name in EXACT]
    got = tf.saved_model.load(str(tmp_path / "m")).decode(tf.constant(blobs)).numpy()
    assert (got == np.stack([decode(b, pre) for b in blobs])).all()


@pytest.mark.slow
def test_bmp_tensorflow_cannot_decode_is_refused_by_name():
    # a 1-bit BMP: TensorFlow has no decoder for it; the error says what to do instead
    buf = io.BytesIO()
    Image.fromarray(np.eye(8, dtype=bool)).save(buf, "BMP")
    with pytest.raises(tf.errors.InvalidArgumentError, match="cannot decode 1- or 4-bit"):
        _tf_decoder(AS_IS)(tf.constant(buf.getvalue()))


def test_gif_claiming_a_huge_screen_is_refused_before_decoding():
    # the canvas predict_bytes builds for a GIF is the logical screen: Pillow's pixel limit holds for it
    import struct

    buf = io.BytesIO()
    Image.new("P", (8, 8)).save(buf, "GIF")
    data = bytearray(buf.getvalue())
    data[6:10] = struct.pack("<HH", 60000, 60000)
    with pytest.raises(tf.errors.InvalidArgumentError, match="too many pixels"):
        _tf_decoder(AS_IS)(tf.constant(bytes(data)))
