"""featurize --reuse-from STORE: images whose content another store of the same features holds take those
features (pipeline/store/copies.py Source, pipeline/engines/base.py), in every engine, instead of a forward pass."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from conftest import make_class_tree, noise_image

import pipeline
from pipeline import FeatureStore
from pipeline.backbones.tflite import TFLiteBackbone
from pipeline.cli import main
from pipeline.errors import UsageError


def _assert_same(store, other) -> None:
    """The same rows (path, label, sha256, stat) with the same features, whatever their order."""
    mine, theirs = dict(zip(store.paths, zip(store.rows, store.features))), dict(zip(other.paths, zip(other.rows,
                                                                                                      other.features)))
    assert sorted(mine) == sorted(theirs)
    for path, (row, features) in mine.items():
        assert row == theirs[path][0]
        np.testing.assert_allclose(features, theirs[path][1], rtol=1e-6, atol=1e-6)


def _no_forward_pass(monkeypatch):
    monkeypatch.setattr(TFLiteBackbone, "featurize_one", lambda self, image: pytest.fail("an image was featurized"))


def test_the_same_photos_in_another_folder_under_other_labels_take_the_stored_features(tmp_path, monkeypatch):
    first = make_class_tree(tmp_path / "first", per_class=3)
    source = pipeline.featurize(first, out=tmp_path / "a", progress=False)  # the default pass: two stores
    again = tmp_path / "again"  # the same photos, regrouped: other folder, other names, other labels
    for i, path in enumerate(sorted(first.rglob("*.jpg"))):
        (again / ("odd" if i % 2 else "even")).mkdir(parents=True, exist_ok=True)
        shutil.copy(path, again / ("odd" if i % 2 else "even") / f"photo_{i}.jpg")
    noise_image(77, (80, 60)).save(again / "odd" / "new.jpg")  # one the source does not hold
    fresh = pipeline.featurize(again, out=tmp_path / "fresh", progress=False)
    run = pipeline.featurize(again, out=tmp_path / "b", reuse_from=tmp_path / "a", progress=False, report=True)
    assert (run.computed, len(run.taken), len(run.copied)) == (1, 6, 0)
    _assert_same(run.store, fresh)  # rows taken are committed at the run's end: the same rows, in another order
    scores, fresh_scores = FeatureStore.open(tmp_path / "b-predictions"), FeatureStore.open(tmp_path / "fresh-predictions")
    assert scores.spec == fresh_scores.spec  # each layer from its own store
    _assert_same(scores, fresh_scores)
    assert json.loads((tmp_path / "b" / "report.json").read_text())["taken"] == 6
    assert "6 rows took the features of the same image in" in run.summary() and str(tmp_path / "a") in run.summary()
    assert source.paths == FeatureStore.open(tmp_path / "a").paths  # the source is only read

    # a store fed only by another store gets that store's spec without loading the network
    _no_forward_pass(monkeypatch)
    only = tmp_path / "only"
    shutil.copytree(first, only)
    taken = pipeline.featurize(only, out=tmp_path / "c", layer="penultimate", reuse_from=[tmp_path / "a"],
                               progress=False, report=True)
    assert (taken.computed, len(taken.taken)) == (0, 6) and taken.store.spec == source.spec
    np.testing.assert_array_equal(taken.store.features, source.features)


def test_a_multi_label_store_is_built_from_a_single_label_one_without_featurizing(tmp_path, monkeypatch):
    data = make_class_tree(tmp_path / "data", per_class=2)
    names = sorted(p.relative_to(data).as_posix() for p in data.rglob("*.jpg"))
    pipeline.featurize(data, out=tmp_path / "single", layer="logits", progress=False)
    tags = tmp_path / "tags.csv"
    tags.write_text("id,tags\n" + "".join(f"{n},{n.split('/')[0]} warm\n" for n in names))
    _no_forward_pass(monkeypatch)
    run = pipeline.featurize(data, out=tmp_path / "multi", layer="logits", labels=tags, label_column="tags",
                             multi_label=True, reuse_from=tmp_path / "single", progress=False, report=True)
    assert run.store.multi_label and (run.computed, len(run.taken)) == (0, 4)
    assert sorted(run.store.classes) == ["blue", "red", "warm"]


def test_a_store_of_other_features_or_no_store_is_refused_before_any_work(tmp_path, capsys):
    data = make_class_tree(tmp_path / "data", per_class=2)
    pipeline.featurize(data, out=tmp_path / "logits", layer="logits", progress=False)
    with pytest.raises(UsageError, match=r"--reuse-from .*logits holds no features of layer 'penultimate'"):
        pipeline.featurize(data, out=tmp_path / "x", layer="penultimate", reuse_from=tmp_path / "logits",
                           progress=False)
    pipeline.featurize(data, out=tmp_path / "small", layer="penultimate", input_size=None, scaling="tf",
                       progress=False)
    with pytest.raises(UsageError, match=r"holds features of .* not of .*same network, weights, layer and prepro"):
        pipeline.featurize(data, out=tmp_path / "y", layer="penultimate", reuse_from=tmp_path / "small",
                           progress=False)
    assert main(["featurize", str(data), "--out", str(tmp_path / "z"), "--reuse-from", str(tmp_path / "nothing"),
                 "--no-progress"]) == 2
    assert "--reuse-from" in capsys.readouterr().err and not (tmp_path / "z" / "rows.jsonl").exists()


def test_the_command_line_takes_several_stores(tmp_path, capsys):
    data = make_class_tree(tmp_path / "data", per_class=2)
    red, blue = tmp_path / "red-only", tmp_path / "blue-only"
    for name, keep in ((red, "red"), (blue, "blue")):
        shutil.copytree(data / keep, name / "data" / keep)
        pipeline.featurize(name / "data", out=name / "store", layer="penultimate", progress=False)
    assert main(["featurize", str(data), "--layer", "penultimate", "--out", str(tmp_path / "both"), "--reuse-from",
                 str(red / "store"), "--reuse-from", str(blue / "store"), "--no-progress"]) == 0
    out = capsys.readouterr().out
    assert "0 featurized" in out and "4 rows took the features of the same image in" in out


def test_only_rows_in_force_are_taken_and_the_store_keeps_its_own_spec(tmp_path):
    """A source whose file was rewritten holds the old content in a superseded row: that content is featurized
    again, the new one taken from the row in force. A store fed only from a source made with a copy of the model
    records the run's own model, not the copy (which may be gone by the time a head is trained on it)."""
    data = make_class_tree(tmp_path / "data", per_class=2)
    model = tmp_path / "copy.tflite"
    shutil.copy(Path(pipeline.__file__).parent / "data" / "mobilenet_v2_1.0_224_quant.tflite", model)
    pipeline.featurize(data, str(model), "penultimate", out=tmp_path / "a", progress=False)
    old = (data / "red" / "red_0.jpg").read_bytes()
    noise_image(123, (80, 60)).save(data / "red" / "red_0.jpg")  # rewritten: a new row, the old one superseded
    pipeline.featurize(data, str(model), "penultimate", out=tmp_path / "a", progress=False)
    again = tmp_path / "again"
    shutil.copytree(data, again)
    (again / "red" / "was_red_0.jpg").write_bytes(old)
    fresh = pipeline.featurize(again, layer="penultimate", out=tmp_path / "fresh", progress=False)
    run = pipeline.featurize(again, layer="penultimate", out=tmp_path / "b", reuse_from=tmp_path / "a",
                             progress=False, report=True)
    assert (run.computed, len(run.taken)) == (1, 4)  # the old content is no row in force of the source
    _assert_same(run.store, fresh)
    assert run.store.spec == fresh.spec  # the bundled model's spec, as a run without --reuse-from records

    model.unlink()  # the source's model gone: a store that only took rows never needed it
    only = pipeline.featurize(data, layer="penultimate", out=tmp_path / "c", reuse_from=tmp_path / "a",
                              progress=False, report=True)
    assert (only.computed, len(only.taken)) == (0, 4) and only.store.spec == fresh.spec


def test_a_refused_source_leaves_an_existing_store_as_it_was(tmp_path):
    data = make_class_tree(tmp_path / "data", per_class=2)
    (data / "red" / "broken.jpg").write_bytes(b"not an image")
    pipeline.featurize(data, out=tmp_path / "s", layer="penultimate", progress=False)
    before = {name: (tmp_path / "s" / name).read_bytes() for name in ("skips.json", "report.json", "rows.jsonl")}
    with pytest.raises(UsageError, match="--reuse-from .*nothing"):
        pipeline.featurize(data, out=tmp_path / "s", layer="penultimate", reuse_from=tmp_path / "nothing",
                           progress=False)
    with pytest.raises(UsageError, match="reuse_from=5 must be a feature store"):
        pipeline.featurize(data, out=tmp_path / "s", reuse_from=5, progress=False)
    assert {name: (tmp_path / "s" / name).read_bytes() for name in before} == before
