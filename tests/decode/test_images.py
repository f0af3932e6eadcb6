"""Folder walking and decoding: content sniffing, orientation, colour modes, bad files."""
from __future__ import annotations

import io
import os
import struct
import zlib

import numpy as np
import pytest
from conftest import img_bytes, noise_image
from PIL import Image

from pipeline.dataset.listing import list_images
from pipeline.decode.images import crop_box, decode
from pipeline.errors import ImageError
from pipeline.preprocess import Preprocess

PRE = Preprocess(size=(32, 32), scaling="tf")


def png_chunk(t: bytes, d: bytes) -> bytes:
    return struct.pack(">I", len(d)) + t + d + struct.pack(">I", zlib.crc32(t + d) & 0xFFFFFFFF)


def png_header_only(w, h) -> bytes:
    return (b"\x89PNG\r\n\x1a\n" + png_chunk(b"IHDR", struct.pack(">IIBBBBB", w, h, 8, 2, 0, 0, 0))
            + png_chunk(b"IEND", b""))


def encode(im: Image.Image, fmt="PNG", **kw) -> bytes:
    buf = io.BytesIO()
    im.save(buf, fmt, **kw)
    return buf.getvalue()


def test_listing_labels_nested_hidden_and_junk(tmp_path):
    for rel in ["cat/a.jpg", "cat/2021/b.JPG", "dog/c.png", "dog/notes.txt", "dog/.DS_Store", "cat/._a.jpg",
                ".ipynb_checkpoints/x.jpg", "loose.jpg", "dog/Thumbs.db"]:
        p = tmp_path / rel
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_bytes(img_bytes())
    (tmp_path / "empty_class").mkdir()
    os.symlink(tmp_path, tmp_path / "cat" / "loop")  # a symlink loop must not hang the walk
    outside = tmp_path.parent / f"{tmp_path.name}-outside.jpg"
    outside.write_bytes(img_bytes())
    os.symlink(outside, tmp_path / "dog" / "elsewhere.jpg")  # followed by default, not with follow_links=False
    listing = list_images(tmp_path)
    assert listing.classes == ["cat", "dog"]
    assert [(r.relpath, r.label) for r in listing.records] == [
        ("cat/2021/b.JPG", "cat"), ("cat/a.jpg", "cat"), ("dog/c.png", "dog"), ("dog/elsewhere.jpg", "dog")]
    assert listing.links["dog/elsewhere.jpg"] == str(outside.resolve())
    reasons = dict(listing.ignored)
    assert reasons["loose.jpg"] == "unlabelled_ignored"
    assert reasons["dog/notes.txt"] == "ignored_extension"
    assert reasons["cat/._a.jpg"] == "ignored_hidden"
    assert reasons["cat/loop/"] == "link_loop"
    strict = list_images(tmp_path, follow_links=False)
    assert "dog/elsewhere.jpg" not in [r.relpath for r in strict.records]
    assert dict(strict.ignored)["dog/elsewhere.jpg"] == "link_outside_root"


def test_flat_folder_is_unlabelled(tmp_path):
    (tmp_path / "x.jpg").write_bytes(img_bytes())
    listing = list_images(tmp_path)
    assert not listing.labelled and listing.records[0].label is None


@pytest.mark.parametrize("size,box", [((640, 480), (80, 0, 560, 480)), ((480, 640), (0, 80, 480, 560)),
                                      ((1, 1), (0, 0, 1, 1)), ((1, 2000), (0, 999, 1, 1000))])
def test_crop_box_is_centre_square(size, box):
    assert crop_box(*size, PRE) == box


def test_png_named_jpg_decodes_like_the_png(tmp_path):
    im = noise_image(3, (50, 40))
    assert np.array_equal(decode(encode(im, "PNG"), PRE, "x.jpg"), decode(encode(im, "PNG"), PRE, "x.png"))


def test_exif_rotated_equals_physically_rotated():
    im = noise_image(4, (60, 30))
    exif = im.getexif()
    exif[0x0112] = 6  # rotate 90 clockwise on display
    tagged = decode(encode(im, "PNG", exif=exif), PRE)
    rotated = decode(encode(im.transpose(Image.Transpose.ROTATE_270), "PNG"), PRE)
    assert np.array_equal(tagged, rotated)


@pytest.mark.parametrize("mode", ["L", "CMYK", "RGBA", "LA", "P", "1", "I;16"])
def test_colour_modes_give_rgb(mode):
    fmt = "JPEG" if mode in ("L", "CMYK") else "PNG"
    out = decode(img_bytes(mode, (40, 40), fmt), PRE)
    assert out.shape == (32, 32, 3) and out.dtype == np.uint8


def test_transparent_pixels_composite_on_white_not_hidden_colour():
    out = decode(img_bytes("RGBA", (16, 16), "PNG", color=(255, 0, 0, 0)), PRE)
    assert (out == 255).all()


def test_16bit_is_scaled_not_clipped():
    arr = (np.arange(4096, dtype=np.uint16).reshape(64, 64) * 16)
    out = decode(encode(Image.fromarray(arr)), PRE)
    assert (out == 255).mean() < 0.5


def test_animated_gif_first_frame():
    frames = [Image.new("RGB", (16, 16), (200 - 80 * i, 0, 0)) for i in range(3)]
    buf = io.BytesIO()
    frames[0].save(buf, "GIF", save_all=True, append_images=frames[1:])
    out = decode(buf.getvalue(), PRE)
    assert abs(int(out[..., 0].mean()) - 200) < 8


@pytest.mark.parametrize("fmt", ["BMP", "WEBP", "TIFF"])
def test_other_formats(fmt):
    assert decode(img_bytes("RGB", (40, 30), fmt), PRE).shape == (32, 32, 3)


@pytest.mark.slow
def test_large_jpeg_decoded_at_reduced_scale_stays_close():
    im = noise_image(5, (2000, 1500)).resize((200, 150)).resize((2000, 1500))  # smooth content
    full = decode(encode(im, "PNG"), PRE).astype(int)
    jpeg = decode(encode(im, "JPEG", quality=95), PRE).astype(int)
    assert np.abs(full - jpeg).mean() < 6


@pytest.mark.parametrize("data,reason", [
    (b"", "empty_file"),
    (b"<html><body>403 Forbidden</body></html>", "not_an_image"),
    (bytes(range(256)) * 4, "not_an_image"),
    (png_header_only(40000, 40000), "too_many_pixels"),
    (png_header_only(0, 0), "not_an_image"),
])
def test_bad_bytes_are_named_errors(data, reason):
    with pytest.raises(ImageError, match=reason) as e:
        decode(data, PRE, "cats/bad.jpg")
    assert e.value.path == "cats/bad.jpg" and e.value.reason == reason


def test_truncated_jpeg_is_reported_not_padded():
    j = img_bytes(size=(256, 256), quality=90)
    with pytest.raises(ImageError, match="truncated|corrupt"):
        decode(j[: len(j) // 2], PRE, "t.jpg")


def test_damaged_exif_block_keeps_the_pixels_and_notes_it(monkeypatch):
    from PIL import ImageOps

    im = noise_image(3, (64, 48))
    exif = im.getexif()
    exif[0x0112] = 6
    data = encode(im, "JPEG", exif=exif)

    def damaged(image):  # what Pillow raises on an EXIF block it cannot parse
        raise SyntaxError("not a TIFF file (header b'\\xff\\xff' not valid)")
    monkeypatch.setattr(ImageOps, "exif_transpose", damaged)
    notes = []
    arr = decode(data, PRE, "x.jpg", notes)
    np.testing.assert_array_equal(arr, decode(encode(im, "JPEG"), PRE))  # unrotated, otherwise intact
    assert len(notes) == 1 and notes[0].startswith("exif_ignored: SyntaxError")


def test_file_vanishing_between_listing_and_reading_is_reported(tmp_path, monkeypatch):
    from conftest import make_class_tree

    import pipeline
    import pipeline.featurizer.prepare as prepare

    data = make_class_tree(tmp_path / "data", per_class=2)
    real = prepare.file_stat

    def vanish(path):
        if str(path).endswith("red_1.jpg"):
            raise FileNotFoundError(2, "No such file or directory")
        return real(path)
    monkeypatch.setattr(prepare, "file_stat", vanish)
    run = pipeline.featurize(data, out=tmp_path / "s", progress=False, report=True)
    assert [(s["path"], s["reason"]) for s in run.skipped] == [("red/red_1.jpg", "io_error:FileNotFoundError")]
    assert len(run.store) == 3


def test_oversized_file_is_refused_before_reading(tmp_path, monkeypatch):
    import pipeline.decode.images as images
    from pipeline.decode.images import read_bytes

    path = tmp_path / "big.jpg"
    path.write_bytes(img_bytes() + b"\x00" * 5000)
    monkeypatch.setattr(images, "MAX_FILE_BYTES", 4096)
    with pytest.raises(ImageError, match="file_too_large") as e:
        read_bytes(path)
    assert e.value.path == str(path)


@pytest.mark.parametrize("value", [70_000, -5])
def test_32bit_integer_pixels_outside_16_bits_are_refused_not_wrapped(value):
    """RELIABILITY A15: an int32 (mode I) TIFF beyond 0..65535 has no defined range; scaling it as 16 bits
    wrapped 70000 round to a dark 16 (and any negative value to garbage) with no error."""
    data = encode(Image.fromarray(np.full((8, 8), value, np.int32)), "TIFF")
    with pytest.raises(ImageError, match="unsupported_mode.*no defined range") as e:
        decode(data, PRE, "scan.tif")
    assert e.value.path == "scan.tif"
    ok = encode(Image.fromarray(np.full((8, 8), 65535, np.int32)), "TIFF")
    assert (decode(ok, PRE) == 255).all()


@pytest.mark.parametrize("fmt", ["ICO", "PCX", "TGA", "SGI", "PPM", "DDS", "QOI", "JPEG2000", "SPIDER"])
def test_formats_outside_the_allowlist_are_refused_though_pillow_reads_them(fmt):
    """RELIABILITY A07/D12: decoding goes through an explicit allowlist of formats, so the attack surface of
    Pillow's other decoders (renamed .jpg or not) is never reached."""
    data = img_bytes("RGB", (16, 16), fmt, color=(10, 200, 30))
    Image.open(io.BytesIO(data)).load()  # a real image Pillow could decode
    with pytest.raises(ImageError, match="not_an_image") as e:
        decode(data, PRE, "cats/renamed.jpg")
    assert e.value.path == "cats/renamed.jpg"


def test_palette_transparency_bilevel_and_cmyk_give_the_colours_a_viewer_shows():
    """RELIABILITY A11, A12, A13: a palette PNG's transparent index composites on white like RGBA (not the
    hidden palette colour), a bilevel white image is 255 (not 1), a solid CMYK JPEG decodes to its RGB colour."""
    p = Image.new("P", (16, 16), 1)
    p.putpalette([0, 0, 0, 255, 0, 0] + [0] * 762)
    assert (decode(encode(p, "PNG", transparency=1), PRE) == 255).all()
    assert (decode(encode(p, "PNG"), PRE) == [255, 0, 0]).all()  # without tRNS: the palette's red
    assert (decode(img_bytes("1", (16, 16), "PNG", color=1), PRE) == 255).all()
    cmyk = decode(img_bytes("CMYK", (16, 16), "JPEG", color=(0, 255, 255, 0), quality=95), PRE)
    assert np.abs(cmyk.astype(int) - [255, 0, 0]).max() <= 8


def test_a_gif_of_thousands_of_frames_gives_its_first_frame():
    """RELIABILITY A18/D11: only frame 0 is decoded, whatever the frame count."""
    frames = [Image.new("RGB", (4, 4), (200, (i * 13) % 256, i % 256)) for i in range(2000)]
    buf = io.BytesIO()
    frames[0].save(buf, "GIF", save_all=True, append_images=frames[1:])
    assert Image.open(io.BytesIO(buf.getvalue())).n_frames == 2000
    out = decode(buf.getvalue(), PRE).astype(int)
    assert np.abs(out - [200, 0, 0]).max() <= 8
