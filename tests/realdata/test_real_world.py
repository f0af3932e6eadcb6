"""Messy real-world folders: every bad file named with its reason, CSV labels, splits, duplicates, cleaning."""
from __future__ import annotations

import csv
import io
import json
import os
import struct
import zlib

import numpy as np
import pytest
from conftest import img_bytes, make_class_tree, noise_image
from PIL import Image

import pipeline
from pipeline.cli import main
from pipeline.errors import UsageError


def png_chunk(t: bytes, d: bytes) -> bytes:
    return struct.pack(">I", len(d)) + t + d + struct.pack(">I", zlib.crc32(t + d) & 0xFFFFFFFF)


def encode(im, fmt="JPEG", **kw) -> bytes:
    buf = io.BytesIO()
    im.save(buf, fmt, **kw)
    return buf.getvalue()


def bad_files() -> dict[str, tuple[bytes, str]]:
    """relpath -> (bytes, expected skip reason): the unreadable part of ../shared/docs/RELIABILITY.md, section A."""
    j = encode(noise_image(1, (256, 256)), quality=90)
    flipped = bytearray(j)
    mid = len(j) // 2
    flipped[mid:mid + 50] = bytes(b ^ 0x5A for b in flipped[mid:mid + 50])
    ihdr = lambda w, h: (b"\x89PNG\r\n\x1a\n" + png_chunk(b"IHDR", struct.pack(">IIBBBBB", w, h, 8, 2, 0, 0, 0))
                         + png_chunk(b"IEND", b""))
    one = img_bytes(size=(1, 1), fmt="PNG")
    ztxt_bomb = one[:-12] + png_chunk(b"zTXt", b"k\x00\x00" + zlib.compress(b"a" * 20 * 2 ** 20)) + one[-12:]
    return {
        "red/empty.jpg": (b"", "empty_file"),
        "red/download.jpg": (b"<html><body>403 Forbidden</body></html>", "not_an_image"),
        "red/random.png": (np.random.default_rng(0).bytes(3000), "not_an_image"),
        "red/header_only.jpg": (j[:20], "not_an_image"),
        "blue/bomb.png": (ihdr(40000, 40000), "too_many_pixels"),
        "blue/zero.png": (ihdr(0, 0), "not_an_image"),
        "blue/text_bomb.png": (ztxt_bomb, "metadata_too_large"),
        "blue/truncated.jpg": (j[: len(j) // 2], "truncated"),
        "blue/flipped.jpg": (bytes(flipped), "corrupt"),
        "blue/float.tif": (encode(Image.fromarray(np.full((8, 8), 3.5, np.float32)), "TIFF"), "unsupported_mode"),
    }


def good_files() -> dict[str, bytes]:
    """Readable oddities that must be featurized (../shared/docs/RELIABILITY.md A06-A18, A22, A24, A31)."""
    rgb = noise_image(7, (64, 48))
    exif = Image.new("RGB", (40, 20), (200, 10, 10)).getexif()
    exif[0x0112] = 6
    p = Image.new("P", (8, 8), 1)
    p.putpalette([0, 0, 0, 255, 0, 0] + [0] * 762)
    frames = [Image.new("RGB", (8, 8), (i * 80, 0, 0)) for i in range(3)]
    gif = io.BytesIO()
    frames[0].save(gif, "GIF", save_all=True, append_images=frames[1:])
    return {
        "red/gray.jpg": encode(rgb.convert("L")),
        "red/cmyk.jpg": encode(rgb.convert("CMYK")),
        "red/alpha.png": encode(rgb.convert("RGBA"), "PNG"),
        "red/la.png": encode(rgb.convert("LA"), "PNG"),
        "red/palette.png": encode(p, "PNG", transparency=1),
        "red/deep.png": encode(Image.fromarray((np.arange(4096, dtype=np.uint16).reshape(64, 64) * 16)), "PNG"),
        "red/anim.gif": gif.getvalue(),
        "blue/bitmap.bmp": encode(rgb, "BMP"),
        "blue/web.webp": encode(rgb, "WEBP"),
        "blue/scan.tiff": encode(rgb, "TIFF"),
        "blue/dot.png": encode(Image.new("RGB", (1, 1), (9, 9, 200)), "PNG"),
        "blue/strip.png": encode(Image.new("RGB", (2000, 1), (9, 9, 200)), "PNG"),
        "blue/UPPER.JPG": encode(rgb),
        "blue/png inside.jpg": encode(rgb, "PNG"),
        "blue/rotated.jpg": encode(Image.new("RGB", (40, 20), (200, 10, 10)), exif=exif),
        "blue/trailing.jpg": encode(rgb) + b"\x00" * 1000,
        'red/we,ird "name" é.jpg': encode(rgb),
    }


@pytest.fixture(scope="module")
def poisoned(tmp_path_factory):
    root = tmp_path_factory.mktemp("poisoned") / "data"
    make_class_tree(root, per_class=2)
    files = {rel: data for rel, (data, _) in bad_files().items()} | good_files()
    files |= {"red/.DS_Store": b"\x00\x00\x00\x01Bud1", "red/._a.jpg": b"\x00\x05\x16\x07", "blue/Thumbs.db": b"\xd0",
              "blue/notes.txt": b"hello", ".ipynb_checkpoints/x.jpg": img_bytes(), "loose.jpg": img_bytes()}
    for rel, data in files.items():
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_bytes(data)
    (root / "empty_class").mkdir()
    os.symlink(root, root / "red" / "loop")
    return root


def test_poisoned_folder_finishes_and_accounts_for_every_file(poisoned, tmp_path, capsys):
    out = tmp_path / "feat"
    assert main(["featurize", str(poisoned), "--out", str(out), "--no-progress"]) == 0
    printed = capsys.readouterr().out
    store = pipeline.FeatureStore.open(out)
    report = json.loads((out / "report.json").read_text(encoding="utf-8"))
    expected_skips = {rel: reason for rel, (_, reason) in bad_files().items()}
    assert {s["path"]: s["reason"] for s in report["skipped"]} == expected_skips
    good = set(good_files()) | {f"{c}/{c}_{i}.jpg" for c in ("red", "blue") for i in range(2)}
    assert set(store.paths) == good  # processed and skipped: disjoint, together everything discovered
    assert set(store.paths).isdisjoint(expected_skips) and report["discovered"] == len(good) + len(expected_skips)
    assert store.classes == ["blue", "red"] and np.isfinite(store.features).all()
    assert store.features.shape == (len(good), 1280) and store.features.dtype == np.float32
    ignored = {i["path"]: i["reason"] for i in report["ignored"]}
    assert ignored["red/.DS_Store"] == ignored["red/._a.jpg"] == ignored["blue/Thumbs.db"] == "ignored_hidden"
    assert ignored["blue/notes.txt"] == "ignored_extension" and ignored["loose.jpg"] == "unlabelled_ignored"
    for rel, reason in expected_skips.items():
        assert f"skipped {rel}: {reason}" in printed
    assert not list(out.rglob(".staging-*")) and not list(out.rglob("*.tmp"))


def test_strict_makes_any_skip_fatal_and_still_writes_the_report(poisoned, tmp_path, capsys):
    out = tmp_path / "feat"
    assert main(["featurize", str(poisoned), "--out", str(out), "--no-progress", "--strict"]) == 1
    assert "--strict" in capsys.readouterr().err
    assert len(pipeline.FeatureStore.open(out).skipped) == len(bad_files())


@pytest.mark.slow
def test_weird_file_names_stay_valid_in_the_scoring_csv(poisoned, tmp_path):
    store = pipeline.featurize(poisoned, out=tmp_path / "feat", progress=False)
    clf = pipeline.train(store, head="logreg", C=1.0)
    pipeline.score(clf, poisoned / "red", tmp_path / "pred.csv", cache=tmp_path / "cache", progress=False)
    with open(tmp_path / "pred.csv", newline="", encoding="utf-8") as f:
        rows = list(csv.DictReader(f))
    assert 'we,ird "name" é.jpg' in {r["path"] for r in rows}
    assert all(set(r) == {"path", "prediction", "blue", "red", "ood_distance", "ood"} for r in rows)


def test_image_that_makes_the_network_produce_nan_is_skipped_not_stored(tmp_path, monkeypatch):
    import itertools
    import threading

    from pipeline.backbones.tflite import TFLiteBackbone

    data = make_class_tree(tmp_path / "data", per_class=2)
    real, counter, lock = TFLiteBackbone.featurize_one, itertools.count(), threading.Lock()

    def poisoned(self, image):
        out = real(self, image).copy()
        with lock:
            k = next(counter)
        if k % 2 == 0:  # two of the four images
            out[3] = np.nan
        return out
    monkeypatch.setattr(TFLiteBackbone, "featurize_one", poisoned)
    run = pipeline.featurize(data, out=tmp_path / "feat", progress=False, report=True, batch_size=2)
    assert sorted(s["reason"] for s in run.skipped) == ["nonfinite_features"] * 2
    assert len(run.store) == 2 and np.isfinite(run.store.features).all()


def test_class_names_differing_only_by_case_are_refused_before_featurizing(tmp_path):
    for c in ("Cat", "cat"):
        (tmp_path / c).mkdir()
        (tmp_path / c / "a.jpg").write_bytes(img_bytes())
    with pytest.raises(UsageError, match="'Cat' and 'cat'"):
        pipeline.featurize(tmp_path, out=tmp_path / "feat", progress=False)


# ---- CSV labels ---------------------------------------------------------------------------------
@pytest.fixture
def csv_set(tmp_path):
    """A flat folder, mixed extensions, labels.csv with ids with and without extensions, a file without a label."""
    d = tmp_path / "images"
    d.mkdir()
    colours = {"tabby": (230, 30, 30), "siamese": (30, 30, 230)}
    rows = []
    for k in range(12):
        label = "tabby" if k % 2 else "siamese"
        ext = [".jpg", ".jpeg", ".png"][k % 3]
        noise_image(k, (80, 60), colours[label]).save(d / f"Cat{k}{ext}")
        rows.append((f"Cat{k}{ext}" if k % 4 else f"Cat{k}", label))
    noise_image(99, (80, 60)).save(d / "Cat_unknown.jpg")
    rows.append(("Cat_gone.jpg", "tabby"))  # a label without an image
    with open(tmp_path / "labels.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["id", "breed"])
        w.writerows(rows)
    return tmp_path


def test_csv_labels_label_images_and_report_the_unlabelled(csv_set, capsys):
    out = csv_set / "feat"
    assert main(["featurize", str(csv_set / "images"), "--labels", str(csv_set / "labels.csv"),
                 "--out", str(out), "--no-progress"]) == 0
    printed = capsys.readouterr().out
    store = pipeline.FeatureStore.open(out)
    labels = dict(zip(store.paths, store.labels))
    assert labels["Cat1.jpeg"] == "tabby" and labels["Cat0.jpg"] == "siamese" and labels["Cat_unknown.jpg"] is None
    assert store.report["unlabelled"] == ["Cat_unknown.jpg"] and store.report["labels_without_image"] == 1
    assert "1 images have no label in the CSV" in printed and "1 labels in the CSV match no image" in printed
    X, y = store.labelled()
    assert len(y) == 12 and set(y) == {"siamese", "tabby"}


def test_csv_label_column_can_be_chosen_and_a_wrong_one_is_named(csv_set, tmp_path):
    with pytest.raises(UsageError, match="no column 'colour'.*id, breed"):
        pipeline.featurize(csv_set / "images", labels=csv_set / "labels.csv", label_column="colour",
                           out=tmp_path / "f", progress=False)
    store = pipeline.featurize(csv_set / "images", labels=csv_set / "labels.csv", label_column="breed",
                               id_column="id", out=tmp_path / "f", progress=False)
    assert store.classes == ["siamese", "tabby"]


def test_csv_giving_one_id_two_labels_is_refused(tmp_path):
    (tmp_path / "l.csv").write_text("id,label\na.jpg,cat\nb.jpg,cat\n./a.jpg,dog\n")
    with pytest.raises(UsageError, match="two different labels.*'a.jpg' \\(line 4"):
        pipeline.dataset.labels.read_labels_csv(tmp_path / "l.csv")


# ---- duplicates, conflicts, splits, suspects ----------------------------------------------------
@pytest.fixture(scope="module")
def dup_store(tmp_path_factory):
    root = tmp_path_factory.mktemp("dups")
    data = make_class_tree(root / "data", per_class=10)
    (data / "red" / "red_0_copy.jpg").write_bytes((data / "red" / "red_0.jpg").read_bytes())
    (data / "blue" / "same_as_red_1.jpg").write_bytes((data / "red" / "red_1.jpg").read_bytes())
    return pipeline.featurize(data, out=root / "feat", progress=False, report=True)


def test_duplicates_and_label_conflicts_are_reported_and_conflicts_left_out(dup_store):
    run = dup_store
    assert ["red/red_0.jpg", "red/red_0_copy.jpg"] in run.duplicates
    assert run.label_conflicts == [{"sha256": run.label_conflicts[0]["sha256"],
                                    "paths": ["blue/same_as_red_1.jpg", "red/red_1.jpg"], "labels": ["blue", "red"]}]
    assert "label_conflict: blue/same_as_red_1.jpg, red/red_1.jpg" in run.summary()
    X, y, rows = run.store.labelled(with_rows=True)
    assert len(y) == len(run.store) - 2 and "red/red_1.jpg" not in {r["path"] for r in rows}


def test_hash_split_is_stable_when_files_are_added_and_keeps_duplicates_together():
    from pipeline.dataset.splits import validation_mask

    rows = [{"path": f"c/{i}.jpg", "sha256": f"h{i}"} for i in range(400)]
    rows[1]["sha256"] = rows[0]["sha256"]  # a duplicate pair
    y = ["a" if i % 2 else "b" for i in range(400)]
    v = validation_mask(rows, y, 0.25)
    assert 0.18 < v.mean() < 0.32 and v[0] == v[1]
    more = rows + [{"path": f"c/new{i}.jpg", "sha256": f"n{i}"} for i in range(100)]
    v2 = validation_mask(more, y + ["a"] * 100, 0.25)
    assert (v2[:400] == v).all()


def test_stratified_split_has_exact_class_proportions_and_groups_by_regex():
    from pipeline.dataset.splits import validation_mask

    rows = [{"path": f"c/photographer{i % 20}_{i}.jpg", "sha256": f"h{i}"} for i in range(200)]
    y = np.array(["a"] * 100 + ["b"] * 100)
    v = validation_mask(rows, y, 0.2, "stratified")
    assert v[y == "a"].sum() == 20 and v[y == "b"].sum() == 20
    g = validation_mask(rows, y, 0.2, group_by=r"(photographer\d+)_")
    for k in range(20):  # every photographer entirely on one side
        side = {bool(g[i]) for i in range(200) if i % 20 == k}
        assert len(side) == 1


def test_train_holdout_reports_validation_and_no_leakage(dup_store):
    clf = pipeline.train(dup_store.store, head="logreg", C=1.0, holdout=0.3, split="stratified")
    v = clf.metrics["validation"]
    cm = np.asarray(v["confusion_matrix"])
    assert v["n"] >= 4 and cm.sum() == v["n"] and v["leakage"] == []
    assert v["accuracy"] == pytest.approx(np.trace(cm) / cm.sum()) and v["accuracy"] >= 0.75  # tinted classes separate
    assert clf.metrics["n_train"] + v["n"] == len(dup_store.store) - 2


def test_evaluate_warns_when_evaluation_images_were_trained_on(dup_store, tmp_path):
    clf = pipeline.train(dup_store.store, head="logreg", C=1.0)
    m = pipeline.evaluate(clf, dup_store.store)
    assert len(m["seen_in_training"]) == len(dup_store.store) - 2
    clf.save(tmp_path / "m.joblib")
    assert pipeline.load(tmp_path / "m.joblib").train_hashes == clf.train_hashes


def test_train_with_sample_uses_n_per_class(dup_store):
    clf = pipeline.train(dup_store.store, head="logreg", C=1.0, sample=4)
    assert clf.metrics["class_counts"] == {"blue": 4, "red": 4}


def test_suspects_ranks_a_mislabelled_image_first(tmp_path, capsys):
    data = make_class_tree(tmp_path / "data", per_class=10)
    os.replace(data / "red" / "red_3.jpg", data / "blue" / "actually_red.jpg")
    pipeline.featurize(data, out=tmp_path / "feat", progress=False)
    assert main(["suspects", str(tmp_path / "feat"), "--C", "1", "--csv", str(tmp_path / "s.csv")]) == 0
    printed = capsys.readouterr().out.splitlines()
    assert printed[2].split()[1:] == ["blue", "red", "blue/actually_red.jpg"]
    with open(tmp_path / "s.csv", newline="") as f:
        assert next(csv.DictReader(f))["path"] == "blue/actually_red.jpg"


def test_prune_removes_rows_of_deleted_files(tmp_path):
    data = make_class_tree(tmp_path / "data", per_class=3)
    pipeline.featurize(data, out=tmp_path / "feat", progress=False)
    (data / "red" / "red_0.jpg").unlink()
    kept = pipeline.featurize(data, out=tmp_path / "feat", progress=False)
    assert "red/red_0.jpg" in kept.paths  # without --prune rows stay
    run = pipeline.featurize(data, out=tmp_path / "feat", progress=False, prune=True, report=True)
    assert run.pruned == 1 and "red/red_0.jpg" not in run.store.paths and len(run.store) == 5
    assert run.computed == 0


def test_csv_ids_given_as_paths_or_with_semicolons_still_match(tmp_path):
    from pipeline.dataset.labels import read_labels_csv

    (tmp_path / "l.csv").write_text("image;label\ntrain/Cat1.jpg;tabby\n./train/Cat2.png;siamese\nCat3;tabby\n")
    labels = read_labels_csv(tmp_path / "l.csv")
    assert labels.id_column == "image" and labels.label_column == "label"
    assert [labels.lookup(p) for p in ("Cat1.jpg", "sub/Cat2.png", "Cat3.jpeg", "Cat4.jpg")] == \
        ["tabby", "siamese", "tabby", None]


def test_split_command_writes_a_grouped_split_without_moving_files(dup_store, tmp_path, capsys):
    root = dup_store.store.root
    assert main(["split", str(root), "--holdout", "0.3", "--split", "stratified", "--out", str(tmp_path / "s.csv")]) == 0
    with open(tmp_path / "s.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    side = {r["path"]: r["split"] for r in rows}
    assert side["red/red_0.jpg"] == side["red/red_0_copy.jpg"]  # identical images share a side
    assert {r["split"] for r in rows} == {"train", "valid"} and len(rows) == len(dup_store.store) - 2
    assert "in validation" in capsys.readouterr().out


def test_file_name_that_is_not_utf8_is_skipped_and_every_artifact_stays_valid(tmp_path, capsys):
    data = make_class_tree(tmp_path / "data", per_class=2)
    try:
        odd = os.fsencode(data / "red") + b"/caf\xe9.jpg"  # a Latin-1 name, as old zips leave them
        with open(odd, "wb") as f:
            f.write((data / "red" / "red_0.jpg").read_bytes())
    except OSError:
        pytest.skip("this file system refuses names that are not UTF-8")
    out = tmp_path / "feat"
    assert main(["featurize", str(data), "--out", str(out), "--no-progress"]) == 0
    report = json.loads((out / "report.json").read_bytes().decode("utf-8"))
    assert report["skipped"][0]["reason"] == "undecodable_name" and report["skipped"][0]["path"] == "red/caf\ufffd.jpg"
    assert len(pipeline.FeatureStore.open(out)) == 4 and "undecodable_name" in capsys.readouterr().out


def test_featurize_sample_takes_a_stable_sample_per_class_and_train_sample_agrees(tmp_path, capsys):
    data = make_class_tree(tmp_path / "data", per_class=10)
    assert main(["featurize", str(data), "--sample", "3", "--out", str(tmp_path / "s"), "--no-progress"]) == 0
    store = pipeline.FeatureStore.open(tmp_path / "s")
    assert sorted(store.labels) == ["blue"] * 3 + ["red"] * 3
    full = pipeline.featurize(data, out=tmp_path / "full", progress=False)
    clf = pipeline.train(full, head="logreg", C=1.0, sample=3)
    assert set(clf.train_hashes) == {h[:16] for h in store.sha256}  # the same 6 files


def test_a_skipped_file_is_not_reread_until_it_changes(tmp_path, monkeypatch):
    import pipeline.featurizer.prepare as prepare

    data = make_class_tree(tmp_path / "data", per_class=2)
    bad = data / "red" / "download.jpg"
    bad.write_bytes(b"<html>403</html>")
    first = pipeline.featurize(data, out=tmp_path / "s", progress=False, report=True)
    assert [s["reason"] for s in first.skipped] == ["not_an_image"]
    (tmp_path / "s" / "report.json").unlink()  # an output: the skip cache is the store's own (skips.json)
    monkeypatch.setattr(prepare, "read_bytes", lambda p: pytest.fail(f"{p} read again"))
    again = pipeline.featurize(data, out=tmp_path / "s", progress=False, report=True)
    assert [s["reason"] for s in again.skipped] == ["not_an_image"] and again.reused == 4
    monkeypatch.undo()
    noise_image(55, (80, 60)).save(bad, "JPEG")  # the download was redone (an image of its own: one the store
    # holds already would take its features, tests/featurizer/test_reader.py)
    fixed = pipeline.featurize(data, out=tmp_path / "s", progress=False, report=True)
    assert fixed.skipped == [] and fixed.computed == 1 and len(fixed.store) == 5


def test_csv_ids_given_as_paths_are_not_counted_as_matching_no_image(tmp_path):
    from pipeline.dataset.labels import match_labels, read_labels_csv

    (tmp_path / "l.csv").write_text("id,label\ntrain/Cat1.jpg,tabby\ntrain/Cat2.jpg,siamese\ntrain/Gone.jpg,tabby\n")
    m = match_labels(["Cat1.jpg", "Cat2.jpg"], read_labels_csv(tmp_path / "l.csv"))
    assert m.labels == {"Cat1.jpg": "tabby", "Cat2.jpg": "siamese"} and m.unused_ids == ["train/Gone.jpg"]
