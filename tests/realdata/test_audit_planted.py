"""audit on real photos (../shared/data/catsdogs), kept cheap: 40 training photos, and a test set of 6
copies of training photos (re-encoded, resized, cropped, mirrored) among 10 distinct photos.
The full measurement, on all three sets: bench/audit_realdata.py (BENCHMARKS.md)."""
import shutil

import pytest
from conftest import needs_shared
from PIL import Image, ImageOps

import pipeline
from pipeline.audit import audit
from pipeline.options import HeadOptions

pytestmark = [pytest.mark.shared, pytest.mark.slow]

COPIES = {"jpeg50": lambda im: (im, 50), "jpeg95": lambda im: (im, 95),
          "half": lambda im: (im.resize((im.width // 2, im.height // 2)), 90),
          "double": lambda im: (im.resize((im.width * 2, im.height * 2)), 90),
          "crop80": lambda im: (im.crop((im.width // 10, im.height // 10, im.width - im.width // 10,
                                         im.height - im.height // 10)), 90),
          "mirror": lambda im: (ImageOps.mirror(im), 90)}


def test_planted_copies_of_real_photos_are_found_and_inflate_the_accuracy(tmp_path):
    src = needs_shared("data", "catsdogs", "train")
    train, test, planted = tmp_path / "train", tmp_path / "test", set()
    for c in ("cats", "dogs"):
        photos = sorted((src / c).glob("*.jpg"))
        (train / c).mkdir(parents=True)
        (test / c).mkdir(parents=True)
        for p in photos[:20]:
            shutil.copy(p, train / c / p.name)
        for p in photos[20:25]:
            shutil.copy(p, test / c / p.name)
    for (kind, make), original in zip(COPIES.items(), sorted(train.rglob("*.jpg"))[::7]):
        with Image.open(original) as im:
            copy, quality = make(im.convert("RGB"))
        name = f"{original.parent.name}/{kind}-{original.name}"
        copy.save(test / name, quality=quality)
        planted.add((name, original.relative_to(train).as_posix()))
    a = pipeline.featurize(train, out=tmp_path / "ftrain", progress=False)
    b = pipeline.featurize(test, out=tmp_path / "ftest", progress=False)
    r = audit(a, b, head=HeadOptions("logreg", C=0.1), checks=("leak",))
    found = {(f.path, f.other_path) for f in r.findings}
    assert found == planted, f"copies missed: {planted - found}; distinct photos flagged: {found - planted}"
    assert r.accuracy["n"] == 16 and r.accuracy["leaked"] == len({p for p, _ in found})
