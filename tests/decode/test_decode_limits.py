"""Reading and decoding stay bounded: no hang on special files, no memory blow-up from many large images."""
from __future__ import annotations

import io
import os
import threading
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
from PIL import Image

import pipeline.decode.images as images
from pipeline.dataset.listing import ImageRecord
from pipeline.decode.images import PixelBudget, decode, read_bytes
from pipeline.errors import ImageError
from pipeline.preprocess import Preprocess


def test_a_fifo_is_refused_at_once_instead_of_hanging_the_run(tmp_path):
    fifo = tmp_path / "cat.1.jpg"
    os.mkfifo(fifo)
    result = {}

    def read():
        try:
            read_bytes(fifo)
        except ImageError as e:
            result["reason"] = e.reason

    t = threading.Thread(target=read, daemon=True)
    t.start()
    t.join(10)  # a blocking open() would never return: no writer ever opens the pipe
    assert not t.is_alive(), "read_bytes blocked on a FIFO"
    assert result == {"reason": "not_a_file"}


def test_a_file_swapped_for_a_fifo_after_listing_is_skipped_with_a_reason(tmp_path):
    from pipeline.featurizer.prepare import prepare as _prepare

    class Stub:
        preprocess, per_image = Preprocess(size=(32, 32)), False

    path = tmp_path / "x.jpg"
    os.mkfifo(path)  # listed as an image a moment ago, a pipe now
    record, sha, _, result, _ = _prepare(ImageRecord(path, "x.jpg", None), Stub(), {"rows": {}, "bad": {}})
    assert sha is None and isinstance(result, ImageError) and result.reason == "not_a_file"


def _png(side: int) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (side, side), (10, 200, 30)).save(buf, "PNG")
    return buf.getvalue()


def test_pixels_decoded_at_once_stay_within_the_run_budget(monkeypatch):
    # eight 8,900-pixel-square PNGs with 8 workers used to peak at 4.7 GB: the limit was per image only
    side = 600
    budget = PixelBudget(int(1.5 * side * side))  # room for one image at a time
    peak = {"pixels": 0}
    real_acquire = budget.acquire

    def acquire(pixels):
        real_acquire(pixels)
        peak["pixels"] = max(peak["pixels"], budget.in_flight)

    monkeypatch.setattr(budget, "acquire", acquire)
    monkeypatch.setattr(images, "DECODE_BUDGET", budget)
    data = _png(side)
    pre = Preprocess(size=(64, 64))
    with ThreadPoolExecutor(8) as pool:
        out = list(pool.map(lambda _: decode(data, pre), range(16)))
    assert all(o.shape == (64, 64, 3) for o in out)
    assert peak["pixels"] == side * side and budget.in_flight == 0


def test_an_image_larger_than_the_budget_still_decodes_alone(monkeypatch):
    monkeypatch.setattr(images, "DECODE_BUDGET", PixelBudget(10))
    assert decode(_png(100), Preprocess(size=(8, 8))).shape == (8, 8, 3)


def test_the_budget_is_released_when_a_decode_fails(monkeypatch):
    budget = PixelBudget(10_000)
    monkeypatch.setattr(images, "DECODE_BUDGET", budget)
    data = _png(50)
    with pytest.raises(ImageError):
        decode(data[: len(data) // 2], Preprocess(size=(8, 8)))
    assert budget.in_flight == 0
    np.testing.assert_array_equal(decode(data, Preprocess(size=(8, 8)))[0, 0], [10, 200, 30])
