"""JAX's batched resize for ``--decode gpu`` (pipeline/decode/jaxresize.py) gives Pillow's pixels exactly, for
every filter the presets use, on images of different sizes in one batch, through crop boxes, down and up."""
from __future__ import annotations

import importlib.util

import numpy as np
import pytest
from PIL import Image

# jaxresize imports JAX inside its functions: collecting this file (every test worker does) imports no JAX
from pipeline.decode import jaxresize
from pipeline.decode.images import _RESAMPLE, crop_box
from pipeline.preprocess import RESAMPLING, Preprocess

pytestmark = pytest.mark.skipif(importlib.util.find_spec("jax") is None, reason="JAX is not installed")


def _pillow(image: np.ndarray, box, pre: Preprocess) -> np.ndarray:
    return np.asarray(Image.fromarray(image).resize((pre.size[1], pre.size[0]), _RESAMPLE[pre.resample], box=box))


def _images(rng, sizes):
    return [rng.integers(0, 256, (h, w, 3)).astype(np.uint8) for h, w in sizes]


@pytest.mark.slow
@pytest.mark.parametrize("resample", RESAMPLING)
def test_a_batch_of_mixed_sizes_gets_pillows_pixels(resample):
    rng = np.random.default_rng(0)
    # wide, tall (Pillow 13 runs the vertical pass first), tiny (upscaled), odd sizes, one exactly the output
    sizes = [(75, 100), (301, 97), (9, 14), (224, 224), (37, 29), (500, 375)]
    pre = Preprocess(size=(24, 20), crop_fraction=0.875, resample=resample)
    images = _images(rng, sizes)
    boxes = [crop_box(im.shape[1], im.shape[0], pre) for im in images]
    got = np.asarray(jaxresize.resize_batch(images, boxes, pre))
    assert got.shape == (len(images), 24, 20, 3) and got.dtype == np.uint8
    for i, (im, box) in enumerate(zip(images, boxes)):
        want = _pillow(im, box, pre)
        assert (got[i] == want).all(), f"{resample}, {im.shape}: {int((got[i] != want).sum())} values differ"


@pytest.mark.slow
@pytest.mark.parametrize("seed", range(3))
def test_random_boxes_and_sizes_match_pillow(seed):
    # boxes anywhere in the image, not only centred: the plan maps the box as Image.resize(box=...) does
    rng = np.random.default_rng(seed)
    for resample in ("bilinear", "bicubic"):
        pre = Preprocess(size=tuple(int(v) for v in rng.integers(8, 60, 2)), resample=resample)
        images, boxes = [], []
        for _ in range(4):
            H, W = (int(v) for v in rng.integers(1, 200, 2))
            left, top = int(rng.integers(0, W)), int(rng.integers(0, H))
            boxes.append((left, top, left + int(rng.integers(1, W - left + 1)), top + int(rng.integers(1, H - top + 1))))
            images.append(rng.integers(0, 256, (H, W, 3)).astype(np.uint8))
        got = np.asarray(jaxresize.resize_batch(images, boxes, pre))
        for i, (im, box) in enumerate(zip(images, boxes)):
            assert (got[i] == _pillow(im, box, pre)).all(), (resample, im.shape, box, pre.size)


def test_the_pass_order_follows_the_installed_pillow():
    # a tall image shrunk mostly in height: Pillow 13 resizes rows first, and the rounding between the passes
    # shows it; the plan says which order it took
    pre = Preprocess(size=(56, 56), resample="bicubic")
    p = jaxresize.plan(900, 120, (0, 0, 120, 900), pre)
    assert p.vertical_first == jaxresize.PILLOW_13
    assert not jaxresize.plan(120, 900, (0, 0, 900, 120), pre).vertical_first


def test_an_empty_batch_is_an_empty_array():
    out = jaxresize.resize_batch([], [], Preprocess(size=(8, 8)))
    assert out.shape == (0, 8, 8, 3)


def test_sizes_share_compiled_programs_through_buckets():
    # two batches of different image sizes in the same 64-pixel bucket reuse one compiled program
    pre = Preprocess(size=(16, 16))
    rng = np.random.default_rng(1)
    jaxresize._program.cache_clear()
    jaxresize.resize_batch(_images(rng, [(100, 90)]), [(0, 0, 90, 100)], pre)
    fn = jaxresize._program(False)
    before = fn._cache_size()
    jaxresize.resize_batch(_images(rng, [(110, 95)]), [(0, 0, 95, 110)], pre)
    assert fn._cache_size() == before


# ImageOps.exif_transpose's method for each EXIF orientation tag
_TRANSPOSE = {2: Image.FLIP_LEFT_RIGHT, 3: Image.ROTATE_180, 4: Image.FLIP_TOP_BOTTOM, 5: Image.TRANSPOSE,
              6: Image.ROTATE_270, 7: Image.TRANSVERSE, 8: Image.ROTATE_90}


@pytest.mark.slow
@pytest.mark.parametrize("resample", ["bilinear", "nearest"])
def test_exif_orientation_folds_into_the_resize(resample):
    # every orientation tag: the decoded (sideways, mirrored) array resized with its tag = Pillow's
    # exif_transpose then resize, in one batch with images of other sizes and tags
    rng = np.random.default_rng(3)
    pre = Preprocess(size=(20, 16), crop_fraction=0.875, resample=resample)
    images = _images(rng, [(60 + 7 * o, 90 - 5 * o) for o in range(1, 9)])
    wants, boxes = [], []
    for o, im in enumerate(images, start=1):
        upright = Image.fromarray(im).transpose(_TRANSPOSE[o]) if o in _TRANSPOSE else Image.fromarray(im)
        assert (upright.height, upright.width) == jaxresize.upright_size(*im.shape[:2], o)
        boxes.append(crop_box(upright.width, upright.height, pre))
        wants.append(_pillow(np.asarray(upright), boxes[-1], pre))
    got = np.asarray(jaxresize.resize_batch(images, boxes, pre, orientations=list(range(1, 9))))
    for o, want in enumerate(wants, start=1):
        assert (got[o - 1] == want).all(), f"orientation {o}: {int((got[o - 1] != want).sum())} values differ"


def test_buckets_grow_by_a_quarter_of_an_octave():
    # at most 25% padding, and a few sizes per doubling: few compiled programs for a folder of many sizes
    assert [jaxresize._bucket(n) for n in (1, 64, 65, 500, 513, 1000, 3000)] == [64, 64, 128, 512, 640, 1024, 3072]
