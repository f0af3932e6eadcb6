"""Folder listing edge cases: splits made of symlinks, linked folders, loops, unreadable folders."""
from __future__ import annotations

import errno
import json
import os

import numpy as np
import pytest
from conftest import img_bytes, make_class_tree

import pipeline
from pipeline.cli import main
from pipeline.dataset.listing import list_images
from pipeline.errors import PipelineError, UsageError


@pytest.fixture
def link_split(tmp_path):
    """lnt/cats/*.jpg and lnt/dogs/*.jpg are `ln -s` links into a shared folder elsewhere."""
    shared = make_class_tree(tmp_path / "shared", per_class=3)
    split = tmp_path / "lnt"
    for cls, src in (("cats", "red"), ("dogs", "blue")):
        (split / cls).mkdir(parents=True)
        for f in sorted((shared / src).iterdir()):
            os.symlink(f, split / cls / f.name)
    return shared, split


def test_split_of_links_featurizes_and_records_link_targets(tmp_path, link_split):
    shared, split = link_split
    run = pipeline.featurize(split, out=tmp_path / "s", progress=False, report=True)
    assert run.computed == 6 and run.store.classes == ["cats", "dogs"]
    report = json.loads((tmp_path / "s" / "report.json").read_text())
    targets = {x["path"]: x["target"] for x in report["links"]}
    assert targets["cats/red_0.jpg"] == str((shared / "red" / "red_0.jpg").resolve())
    # the content decides, as for any file: the linked images equal the originals
    direct = pipeline.featurize(shared, out=tmp_path / "d", progress=False)
    linked = dict(zip(run.store.paths, run.store.features))
    orig = dict(zip(direct.paths, direct.features))
    assert (linked["cats/red_1.jpg"] == orig["red/red_1.jpg"]).all()


def test_no_follow_links_refuses_the_split_and_says_why(tmp_path, link_split, capsys):
    _, split = link_split
    with pytest.raises(PipelineError, match=r"6 files ignored \(6 link_outside_root, e\.g\. cats/red_0\.jpg -> "
                                            r".*shared/red/red_0\.jpg\).*follow_links=False"):
        pipeline.featurize(split, out=tmp_path / "s", progress=False, follow_links=False)
    assert main(["featurize", str(split), "--out", str(tmp_path / "s2"), "--no-follow-links", "--no-progress"]) == 1
    err = capsys.readouterr().err
    assert "link_outside_root" in err and "not followed with --no-follow-links" in err  # the flag, on the CLI


def test_no_images_message_counts_every_reason(tmp_path):
    (tmp_path / "d" / "a").mkdir(parents=True)
    for name in ("x.txt", "y.txt", "z.csv"):
        (tmp_path / "d" / "a" / name).write_text("not an image")
    with pytest.raises(PipelineError, match=r"no images found in .*d: 3 files ignored \(3 ignored_extension, "
                                            r"e\.g\. a/x\.txt\); images need one of the extensions"):
        pipeline.featurize(tmp_path / "d", out=tmp_path / "s", progress=False)


def test_linked_class_folder_outside_the_root_is_followed_unless_told_not_to(tmp_path, caplog):
    shared = make_class_tree(tmp_path / "shared", per_class=2)
    data = make_class_tree(tmp_path / "data", per_class=2, classes=("red",))
    os.symlink(shared / "blue", data / "blue")  # a class folder that lives elsewhere
    os.symlink(data, shared / "blue" / "back")  # ... and leads back: a loop through two folders
    listing = list_images(data)
    assert listing.classes == ["blue", "red"] and len(listing.records) == 4
    assert listing.links["blue/"] == str((shared / "blue").resolve())
    assert dict(listing.ignored)["blue/back/"] == "link_loop"
    strict = list_images(data, follow_links=False)
    assert strict.classes == ["red"] and dict(strict.ignored)["blue/"] == "link_outside_root"
    assert "holds no images" not in caplog.text  # reported as a link, not as an empty class


def test_folder_linked_twice_is_listed_under_both_names(tmp_path):
    shared = make_class_tree(tmp_path / "shared", per_class=2, classes=("red",))
    (tmp_path / "data" / "all").mkdir(parents=True)
    os.symlink(shared / "red", tmp_path / "data" / "red")
    os.symlink(shared / "red", tmp_path / "data" / "all" / "red")
    listing = list_images(tmp_path / "data")
    assert sorted(r.relpath for r in listing.records) == ["all/red/red_0.jpg", "all/red/red_1.jpg",
                                                         "red/red_0.jpg", "red/red_1.jpg"]


def test_maze_of_links_does_not_explode(tmp_path):
    # each level links twice to the next: 2**12 paths, but each folder is listed a bounded number of times
    levels = [tmp_path / "root"] + [tmp_path / f"l{i}" for i in range(12)]
    for d in levels:
        d.mkdir()
        make_class_tree(d, per_class=1, classes=("red",))
    for a, b in zip(levels, levels[1:]):
        os.symlink(b, a / "x")
        os.symlink(b, a / "y")
    listing = list_images(levels[0], labelled=False)
    assert len(listing.records) <= 4 * len(levels)
    assert "duplicate_folder" in {r for _, r in listing.ignored}


def _unlistable(monkeypatch, *folders):
    """os.scandir raises PermissionError for these folders (chmod 000 does not stop root, which runs CI)."""
    real = os.scandir
    blocked = {str(f) for f in folders}

    def scandir(path="."):
        if not isinstance(path, int) and os.fspath(path) in blocked:
            raise PermissionError(errno.EACCES, "Permission denied", os.fspath(path))
        return real(path)
    monkeypatch.setattr(os, "scandir", scandir)


def test_unreadable_folders_are_reported_not_dropped(tmp_path, monkeypatch, caplog):
    data = make_class_tree(tmp_path / "data", per_class=2, classes=("red", "blue", "green"))
    (data / "red" / "2021").mkdir()
    make_class_tree(data / "red" / "2021", per_class=2, classes=("red",))
    _unlistable(monkeypatch, data / "green", data / "red" / "2021")
    listing = list_images(data)
    bad = {u["path"]: u["reason"] for u in listing.unusable}
    assert bad == {"green/": "io_error:PermissionError", "red/2021/": "io_error:PermissionError"}
    assert "holds no images" not in caplog.text  # not mistaken for an empty class
    run = pipeline.featurize(data, out=tmp_path / "s", progress=False, report=True)
    report = json.loads((tmp_path / "s" / "report.json").read_text())
    assert {(s["path"], s["reason"]) for s in report["skipped"]} == set(bad.items())
    assert run.discovered == 4


def test_prune_keeps_rows_below_a_folder_it_could_not_list(tmp_path, monkeypatch):
    data = make_class_tree(tmp_path / "data", per_class=2, classes=("red", "blue", "green"))
    (data / "red" / "2021").mkdir()
    make_class_tree(data / "red" / "2021", per_class=2, classes=("red",))
    assert len(pipeline.featurize(data, out=tmp_path / "s", progress=False)) == 8
    (data / "blue" / "blue_0.jpg").unlink()  # really gone: its row goes
    _unlistable(monkeypatch, data / "green", data / "red" / "2021")
    run = pipeline.featurize(data, out=tmp_path / "s", progress=False, prune=True, report=True)
    assert run.pruned == 1
    assert sorted(run.store.paths) == ["blue/blue_1.jpg", "green/green_0.jpg", "green/green_1.jpg",
                                       "red/2021/red/red_0.jpg", "red/2021/red/red_1.jpg",
                                       "red/red_0.jpg", "red/red_1.jpg"]


def test_unreadable_data_folder_says_so(tmp_path, monkeypatch):
    data = make_class_tree(tmp_path / "data", per_class=1)
    _unlistable(monkeypatch, data)
    with pytest.raises(PipelineError, match=r"1 folder ignored \(1 io_error:PermissionError, e\.g\. \./\); "
                                            r"make the folders readable"):
        pipeline.featurize(data, out=tmp_path / "s", progress=False)


def test_retargeted_link_is_featurized_again_and_broken_link_is_named(tmp_path):
    shared = make_class_tree(tmp_path / "shared", per_class=2)
    data = tmp_path / "data"
    (data / "cats").mkdir(parents=True)
    (data / "dogs").mkdir()
    os.symlink(shared / "red" / "red_0.jpg", data / "cats" / "a.jpg")
    os.symlink(shared / "blue" / "blue_0.jpg", data / "dogs" / "b.jpg")
    os.symlink(tmp_path / "gone.jpg", data / "dogs" / "gone.jpg")
    first = pipeline.featurize(data, out=tmp_path / "s", progress=False, report=True)
    assert dict(first.ignored)["dogs/gone.jpg"] == "broken_link"
    before = dict(zip(first.store.paths, first.store.features))["cats/a.jpg"]
    os.remove(data / "cats" / "a.jpg")
    os.symlink(shared / "red" / "red_1.jpg", data / "cats" / "a.jpg")  # same name, another image
    run = pipeline.featurize(data, out=tmp_path / "s", progress=False, report=True)
    assert run.computed == 1 and run.reused == 1
    after = dict(zip(run.store.paths, run.store.features))["cats/a.jpg"]
    direct = pipeline.featurize(shared, out=tmp_path / "d", progress=False)
    np.testing.assert_array_equal(after, direct.features[direct.paths.index("red/red_1.jpg")])
    assert not np.array_equal(before, after)


def test_score_follows_links_unless_told_not_to(tmp_path, link_split, capsys):
    shared, split = link_split
    model = pipeline.train(pipeline.featurize(shared, out=tmp_path / "f", progress=False),
                           head="logreg", C=1.0).save(tmp_path / "m.joblib")
    assert main(["score", str(model), str(split), "--out", str(tmp_path / "p.csv"), "--cache", str(tmp_path / "c"),
                 "--no-progress"]) == 0
    assert len((tmp_path / "p.csv").read_text().splitlines()) == 7  # header + the 6 linked images
    assert main(["score", str(model), str(split), "--out", str(tmp_path / "q.csv"), "--cache", str(tmp_path / "c2"),
                 "--no-follow-links", "--no-progress"]) == 1
    assert "6 link_outside_root" in capsys.readouterr().err and not (tmp_path / "q.csv").exists()


def test_class_folders_differing_only_by_unicode_normalisation_are_refused(tmp_path):
    """RELIABILITY A29: "café" typed on two systems (NFC, and NFD as macOS writes it) looks like one class but
    would train as two; refused before any image is read, naming both, with exit 2."""
    data = tmp_path / "data"
    for name in ("caf\u00e9", "cafe\u0301"):
        (data / name).mkdir(parents=True)
        (data / name / "a.jpg").write_bytes(img_bytes())
    assert main(["featurize", str(data), "--out", str(tmp_path / "s"), "--no-progress"]) == 2
    assert not (tmp_path / "s").exists()
    with pytest.raises(UsageError, match="differ only by case or accents encoding: 'caf.+' and 'caf.+'"):
        list_images(data)
