"""One Python API for images wherever they are: paths, bytes, PIL images and arrays give featurize's features."""
from __future__ import annotations

import io
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
from conftest import make_class_tree, noise_image
from PIL import Image, ImageOps

import pipeline
from pipeline.decode.inputs import decode_bytes, decode_images
from pipeline.errors import ImageError


@pytest.fixture(scope="module")
def featurized(tmp_path_factory):
    """A class tree plus a large JPEG (decoded at reduced scale) and a JPEG with EXIF orientation 6."""
    root = tmp_path_factory.mktemp("inputs")
    data = make_class_tree(root / "data", per_class=4)
    noise_image(7, (1400, 1000), (230, 30, 30)).save(data / "red" / "large.jpg", quality=90)
    exif = Image.Exif()
    exif[0x0112] = 6
    noise_image(8, (120, 70), (230, 30, 30)).save(data / "red" / "rotated.jpg", exif=exif)
    store = pipeline.featurize(data, "mobilenet_v2_quant", out=root / "feat", progress=False)
    clf = pipeline.train(store, head="logreg", C=1.0)
    return data, store, clf


def _row(store, relpath):
    return store.features[store.paths.index(relpath)]


def test_paths_bytes_and_pil_images_give_the_features_featurize_stored(featurized):
    data, store, clf = featurized
    for rel in ["red/red_0.jpg", "blue/blue_1.jpg", "red/large.jpg", "red/rotated.jpg"]:
        f = data / rel
        want = _row(store, rel)
        np.testing.assert_array_equal(clf.features([str(f)])[0], want)
        np.testing.assert_array_equal(clf.features(f.read_bytes())[0], want)
        np.testing.assert_array_equal(clf.features(Image.open(f))[0], want)  # not yet loaded: draft + EXIF


def test_uint8_arrays_one_or_stacked_give_the_stored_features(featurized):
    data, store, clf = featurized
    rels = ["red/red_1.jpg", "blue/blue_2.jpg", "red/rotated.jpg"]
    arrays = [np.asarray(ImageOps.exif_transpose(Image.open(data / r))) for r in rels]
    want = np.stack([_row(store, r) for r in rels])
    np.testing.assert_array_equal(clf.features(arrays), want)
    np.testing.assert_array_equal(clf.features(arrays[0]), want[:1])
    same_size = np.stack([arrays[0], np.asarray(Image.open(data / "red/red_2.jpg"))])  # N x H x W x 3
    np.testing.assert_array_equal(clf.features(same_size), np.stack([want[0], _row(store, "red/red_2.jpg")]))
    # predict_proba on the images equals predict_proba on their stored features
    np.testing.assert_array_equal(clf.predict_proba(arrays), clf.predict_proba(want))
    assert list(clf.predict(arrays[:2])) == ["red", "blue"]


def test_mixed_kinds_in_one_list(featurized):
    data, store, clf = featurized
    f = data / "blue" / "blue_3.jpg"
    feats = clf.features([str(f), f.read_bytes(), Image.open(f), np.asarray(Image.open(f))])
    for row in feats:
        np.testing.assert_array_equal(row, _row(store, "blue/blue_3.jpg"))


@pytest.mark.parametrize("bad, match", [
    (np.zeros((60, 80, 3), np.float32), "float32 .*uint8 RGB"),
    (np.zeros((60, 80), np.uint8), r"\(60, 80\).*\(H, W, 3\)"),
    (np.zeros((60, 80, 4), np.uint8), r"\(60, 80, 4\)"),
    (Image.new("L", (60, 80)), "mode 'L'.*convert\\('RGB'\\)"),
    (Image.new("RGBA", (60, 80)), "mode 'RGBA'"),
    (Image.new("F", (60, 80)), "mode 'F'"),
])
def test_pixels_that_are_not_uint8_rgb_are_refused_with_the_fix(featurized, bad, match):
    _, _, clf = featurized
    with pytest.raises(ImageError, match=match) as e:
        clf.predict_proba([bad])
    assert e.value.reason in ("unsupported_array", "unsupported_mode") and e.value.path.startswith("<")


def test_bad_bytes_get_featurize_reason_codes_and_name_the_input(featurized):
    data, _, clf = featurized
    with pytest.raises(ImageError) as e:
        clf.predict([(data / "red/red_0.jpg").read_bytes(), b"<html>not found</html>"])
    assert e.value.reason == "not_an_image" and e.value.path == "<bytes #1>"
    with pytest.raises(ImageError) as e:  # decoded a batch at a time, still named by its place in the list
        clf.predict([(data / "red/red_0.jpg").read_bytes()] * 35 + [b"GIF89a"])
    assert e.value.path == "<bytes #35>"
    with pytest.raises(ImageError, match="empty_file"):
        clf.predict(b"")
    with pytest.raises(ImageError, match="unsupported_input.*got dict"):
        clf.predict([(data / "red/red_0.jpg").read_bytes(), {"pixels": 1}])


def test_a_lower_pixel_limit_refuses_before_decoding(featurized):
    data, _, clf = featurized
    pre = clf.backbone.preprocess
    raw = (data / "red/large.jpg").read_bytes()
    with pytest.raises(ImageError) as e:
        decode_bytes(raw, pre, "upload.jpg", max_pixels=1000 * 1000)
    assert e.value.reason == "too_many_pixels" and "1400x1000" in e.value.detail
    buf = io.BytesIO()
    Image.new("RGB", (20, 20)).save(buf, "PNG")
    assert decode_images([buf.getvalue()], pre, max_pixels=400).shape == (1, 224, 224, 3)
    with pytest.raises(ImageError, match="too_many_pixels"):
        decode_images([Image.new("RGB", (21, 20))], pre, max_pixels=400)


def test_predict_proba_from_several_threads_matches_one_thread(featurized, tmp_path):
    data, store, clf = featurized
    fresh = pipeline.load(clf.save(tmp_path / "m.joblib"))  # backbone not built yet: built once under the lock
    files = [str(p) for p in sorted(data.rglob("*.jpg"))]
    with ThreadPoolExecutor(8) as pool:
        results = list(pool.map(lambda f: fresh.predict_proba([f])[0], files * 3))
    want = [fresh.predict_proba([f])[0] for f in files]  # one at a time in this thread
    np.testing.assert_array_equal(np.stack(results), np.stack(want * 3))
    # the reloaded head (numpy arrays) and the trained one (scikit-learn) agree to float32 rounding
    np.testing.assert_allclose(np.stack(want), np.stack([clf.predict_proba([f])[0] for f in files]), atol=1e-6)
