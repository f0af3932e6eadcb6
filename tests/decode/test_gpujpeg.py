"""The GPU JPEG path of ``--decode gpu`` (pipeline/decode/gpujpeg.py), run on the CPU with the ``pillow-full``
stand-in (the GPU libraries' interface: full-size decode, orientation not applied): the awkward inputs of
../shared/docs/RELIABILITY.md (A08-A16) get the CPU decoder's pixels, a file no decoder reads is reported with the
CPU decoder's reason, and nothing but baseline RGB/grey JPEGs goes to the GPU library."""
from __future__ import annotations

import numpy as np
import pytest
from awkward_images import CASES

from pipeline.decode.images import decode
from pipeline.errors import ImageError, UsageError
from pipeline.preprocess import Preprocess

pytest.importorskip("jax")

from pipeline.decode import gpujpeg  # noqa: E402

PRE = Preprocess(size=(20, 16), crop_fraction=0.875, resample="bilinear")


def _decoder(pre=PRE, **kw):
    return gpujpeg.GpuDecoder(gpujpeg.PillowJpeg(), pre, **kw)


def test_only_rgb_and_grey_jpegs_go_to_the_gpu():
    encoded = {name for name, make in CASES.items() if isinstance(gpujpeg.inspect(make(37, 29, 0), PRE), gpujpeg.Encoded)}
    assert encoded == {"RGB JPEG", "A09 L JPEG", "A16 EXIF orientation 6 JPEG", "A16 EXIF orientation 8 JPEG"}
    jpeg = gpujpeg.inspect(CASES["A16 EXIF orientation 6 JPEG"](37, 29, 0), PRE)
    assert (jpeg.height, jpeg.width, jpeg.orientation) == (29, 37, 6)  # as stored; turned upright on the device
    png = gpujpeg.inspect(CASES["A08 RGBA PNG, partial alpha"](37, 29, 0), PRE)
    assert isinstance(png, np.ndarray) and png.shape == (20, 16, 3)  # decoded by the CPU, as without --decode gpu


@pytest.mark.slow
@pytest.mark.parametrize("resample", ["bilinear", "bicubic", "lanczos", "nearest"])
def test_a_mixed_batch_gets_the_cpu_decoders_pixels(resample):
    # small images (no DCT-scaled decode on the CPU side): the same pixels, in the order given
    pre = Preprocess(size=(20, 16), crop_fraction=0.875, resample=resample)
    names = sorted(CASES)
    blobs = [CASES[n](37, 29, i) for i, n in enumerate(names)]
    items = [gpujpeg.inspect(b, pre) for b in blobs]
    batch, failed, fell_back = _decoder(pre)(items, names)
    assert not failed and not fell_back and batch.shape == (len(names), 20, 16, 3)
    for i, (name, data) in enumerate(zip(names, blobs)):
        if "CMYK" in name:
            continue
        want = decode(data, pre)
        assert (np.asarray(batch[i]) == want).all(), f"{name}: {int((np.asarray(batch[i]) != want).sum())} differ"


def test_a_jpeg_no_decoder_reads_is_reported_with_the_cpu_reason_and_the_rest_go_on():
    good = CASES["RGB JPEG"](40, 30, 1)
    whole = CASES["RGB JPEG"](40, 30, 2)
    truncated = whole[:len(whole) // 2]  # the header parses; the data stops
    items = [gpujpeg.inspect(good, PRE), gpujpeg.inspect(truncated, PRE), gpujpeg.inspect(good, PRE)]
    batch, failed, fell_back = _decoder()(items, ["a.jpg", "cut.jpg", "c.jpg"])
    assert batch.shape[0] == 2 and [i for i, _ in failed] == [1] and fell_back == []
    error = failed[0][1]
    assert isinstance(error, ImageError) and error.reason == "truncated" and "cut.jpg" in str(error.path)


def test_a_refused_jpeg_falls_back_to_the_cpu_decoder():
    class Refuses(gpujpeg.PillowJpeg):  # a GPU library that cannot read one of the files (say, arithmetic coding)
        def decode(self, blobs):
            return [None] + super().decode(blobs[1:])

    data = CASES["RGB JPEG"](40, 30, 3)
    items = [gpujpeg.inspect(data, PRE)] * 2
    batch, failed, fell_back = gpujpeg.GpuDecoder(Refuses(), PRE)(items, ["a.jpg", "b.jpg"])
    assert not failed and fell_back == [0]
    assert (np.asarray(batch[0]) == decode(data, PRE)).all() and (np.asarray(batch[1]) == decode(data, PRE)).all()


def test_big_batches_are_decoded_in_slices_that_fit_the_pixel_budget():
    calls = []

    class Counting(gpujpeg.PillowJpeg):
        def decode(self, blobs):
            calls.append(len(blobs))
            return super().decode(blobs)

    items = [gpujpeg.inspect(CASES["RGB JPEG"](40, 30, i), PRE) for i in range(5)]
    batch, _, _ = gpujpeg.GpuDecoder(Counting(), PRE, batch_pixels=2 * 40 * 30)(items, list("abcde"))
    assert calls == [2, 2, 1] and batch.shape[0] == 5


def test_no_gpu_library_is_a_usage_error_naming_what_to_install(monkeypatch):
    monkeypatch.setattr(gpujpeg, "jax_on_gpu", lambda: False)
    assert gpujpeg.find_library(None) is None  # --decode auto: the CPU decodes
    with pytest.raises(UsageError, match="JAX sees none here.*nvidia-nvimgcodec"):
        gpujpeg.find_library("nvimgcodec")
    with pytest.raises(UsageError, match="unknown JPEG decoder 'nvjpeg'"):
        gpujpeg.find_library("nvjpeg")
