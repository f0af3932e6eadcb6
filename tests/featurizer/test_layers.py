"""Several layers from one forward pass: equal to single-layer runs, one store each, resumable."""
from __future__ import annotations

import numpy as np
import pytest
from conftest import kill_once_committed, make_class_tree, noise_class_tree, noise_image, pipeline_cmd
from models_for_tests import SIZE, export_saved_model, frozen_graph_def, tflite_model, tiny_keras_model

from pipeline import FeatureStore, featurize
from pipeline.backbones import create_backbone
from pipeline.cli import main
from pipeline.errors import UsageError

IMAGES = np.random.default_rng(0).integers(0, 256, (3, SIZE, SIZE, 3), dtype=np.uint8)
LAYERS = ["penultimate", "logits", "predictions"]


def _assert_side_by_side(make, layers=LAYERS):
    # the multi-layer backbone's features are each single-layer backbone's, side by side
    multi = make(",".join(layers))
    x = multi(IMAGES)
    singles = [make(layer) for layer in layers]
    assert x.shape == (len(IMAGES), sum(s.load().dim for s in singles))
    assert multi.dims == [s.dim for s in singles] and multi.tensors == [s.tensor for s in singles]
    start = 0
    for i, single in enumerate(singles):
        np.testing.assert_allclose(x[:, start:start + single.dim], single(IMAGES), rtol=0, atol=1e-5)
        assert multi.layer_spec(i) == single.spec()
        start += single.dim


@pytest.fixture(scope="module")
def tiny():
    return tiny_keras_model()


@pytest.mark.slow
def test_tflite_reads_several_layers_in_one_call(tiny, tmp_path):
    path = tflite_model(tiny, tmp_path / "tiny.tflite", quantized=False)
    _assert_side_by_side(lambda layer: create_backbone(path, layer, scaling="tf"))


@pytest.mark.slow
def test_savedmodel_and_graphdef_read_several_layers_in_one_call(tiny, tmp_path):
    sm = export_saved_model(tiny, tmp_path / "sm")
    _assert_side_by_side(lambda layer: create_backbone(sm, layer, input_size=SIZE, scaling="tf"))
    pb, inp, names = frozen_graph_def(tiny, tmp_path / "frozen.pb")
    _assert_side_by_side(lambda layer: create_backbone(pb, layer, input_size=SIZE, scaling="tf", input_tensor=inp),
                         ["logits", names["conv"], "predictions"])


def test_keras_application_reads_several_layers_in_one_call(tiny_app):
    # the tiny CNN as a Keras application (conftest.py): three builds of a real one took seconds; every
    # application's aliases and widths, several layers at once, are checked in tests/backbones/test_registry.py
    images = np.random.default_rng(1).integers(0, 256, (2, SIZE, SIZE, 3), dtype=np.uint8)
    multi = create_backbone(tiny_app, "penultimate,logits", "random")
    x = multi(images)
    assert multi.kind == "keras" and multi.dims == [8, 5]
    for i, layer in enumerate(("penultimate", "logits")):
        single = create_backbone(tiny_app, layer, "random")
        a = sum(multi.dims[:i])
        np.testing.assert_allclose(x[:, a:a + multi.dims[i]], single(images), rtol=0, atol=1e-5)
        assert multi.layer_spec(i) == single.spec()


@pytest.fixture
def folder(tmp_path):
    return make_class_tree(tmp_path / "data", per_class=5)


def test_featurize_two_layers_equals_two_single_layer_runs(folder, tmp_path):
    run = featurize(folder, layer="penultimate,logits", out=tmp_path / "m-{layer}", progress=False, workers=2,
                    report=True)
    assert [s.root.name for s in run.stores] == ["m-penultimate", "m-logits"]
    for layer in ("penultimate", "logits"):
        single = featurize(folder, layer=layer, out=tmp_path / f"s-{layer}", progress=False, workers=2)
        multi = FeatureStore.open(tmp_path / f"m-{layer}")
        assert multi.paths == single.paths and multi.sha256 == single.sha256
        assert multi.spec == single.spec
        assert np.abs(multi.features - single.features).max() <= 1e-5
        assert multi.report["featurized"] == 10


def test_two_layer_run_is_incremental_and_resumes_a_store_that_missed_rows(folder, tmp_path):
    out = tmp_path / "m-{layer}"
    featurize(folder, layer="penultimate,logits", out=out, progress=False, workers=2)
    noise_image(99, (80, 60), (230, 30, 30)).save(folder / "red" / "new.jpg")
    run = featurize(folder, layer="penultimate,logits", out=out, progress=False, workers=2, report=True)
    assert (run.computed, run.reused) == (1, 10)
    # a run killed between the two stores' commits: the logits store lacks a row the other has
    featurize(folder, layer="logits", out=tmp_path / "m-logits", progress=False, overwrite=True, sample=3)
    run = featurize(folder, layer="penultimate,logits", out=out, progress=False, workers=2, report=True)
    assert run.computed == 11 - 6 and run.reused == 6
    single = featurize(folder, layer="logits", out=tmp_path / "s", progress=False)
    multi = FeatureStore.open(tmp_path / "m-logits")
    assert sorted(multi.paths) == sorted(single.paths)
    order = [multi.paths.index(p) for p in single.paths]
    assert np.abs(multi.features[order] - single.features).max() <= 1e-5
    assert len(FeatureStore.open(tmp_path / "m-penultimate")) == 11


def test_several_layers_need_layer_in_out(folder, tmp_path, capsys):
    with pytest.raises(UsageError, match=r"out= must contain \{layer\}"):
        featurize(folder, layer="penultimate,logits", out=tmp_path / "one", progress=False)
    assert not (tmp_path / "one").exists()
    assert main(["featurize", str(folder), "--layer", "penultimate,penultimate", "--out", str(tmp_path / "x-{layer}")]) == 2
    assert "each once" in capsys.readouterr().err


@pytest.mark.slow
def test_two_layer_run_killed_mid_way_resumes_to_single_layer_results(tmp_path, capsys):
    import os

    data, n = tmp_path / "data", 80  # commits every 0.1 s (pipeline_cmd): killed at 20 rows, most is still to do
    noise_class_tree(data, n, (160, 120))
    out = tmp_path / "m-{layer}"
    args = ["featurize", str(data), "--layer", "penultimate,logits", "--out", str(out), "--batch-size", "4",
            "--workers", "1", "--no-progress"]
    kill_once_committed(pipeline_cmd(*args), tmp_path / "m-logits" / "rows.jsonl", 20, timeout=120, env=dict(os.environ))
    assert 20 <= len(FeatureStore.open(tmp_path / "m-logits")) < n, "the run was not interrupted mid-way"
    assert main(args) == 0  # the resumed run: in this process (only the killed one needs a process of its own)
    for layer in ("penultimate", "logits"):
        store = FeatureStore.open(tmp_path / f"m-{layer}")
        clean = featurize(data, layer=layer, out=tmp_path / f"clean-{layer}", progress=False)
        assert len(store) == n and sorted(store.paths) == clean.paths
        order = np.argsort(store.paths)
        assert np.abs(store.features[order] - clean.features).max() <= 1e-5


# --- the default pass: penultimate + predictions, the class scores beside the store asked for -------------

def test_default_pass_writes_penultimate_at_out_and_predictions_beside_it(folder, tmp_path, monkeypatch):
    from pipeline.backbones.tflite import TFLiteBackbone

    run = featurize(folder, out=tmp_path / "s", progress=False, workers=2, report=True)
    assert [s.root.name for s in run.stores] == ["s", "s-predictions"] and run.store.root.name == "s"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["data", "s", "s-predictions"]
    assert run.store.meta["layers"] == {"penultimate": ".", "predictions": "../s-predictions"}
    for store, layer in zip(run.stores, ("penultimate", "predictions")):
        single = featurize(folder, layer=layer, out=tmp_path / f"one-{layer}", progress=False, workers=2)
        assert store.spec == single.spec and store.paths == single.paths
        assert np.abs(store.features - single.features).max() <= 1e-5
    monkeypatch.setattr(TFLiteBackbone, "_load", lambda self: pytest.fail("network loaded for a cached run"))
    again = featurize(folder, out=tmp_path / "s", progress=False, report=True)
    assert (again.computed, again.reused) == (0, 10)  # both stores reused: nothing recomputed


def test_default_pass_without_out_names_both_stores_by_layer(folder, tmp_path, monkeypatch):
    monkeypatch.setenv("TFP_FEATURES", str(tmp_path / "features"))
    featurize(folder, progress=False, workers=2)
    assert sorted(p.name for p in (tmp_path / "features").iterdir()) == [
        "data-mobilenet_v2_quant-penultimate", "data-mobilenet_v2_quant-predictions"]
    featurize(folder, out=tmp_path / "t-{layer}", progress=False, workers=2)  # {layer}: replaced for both
    assert (tmp_path / "t-penultimate" / "meta.json").is_file() and (tmp_path / "t-predictions" / "meta.json").is_file()


@pytest.mark.parametrize("layer", ["penultimate", "predictions"])
def test_an_explicit_layer_writes_that_one_store_as_before(folder, tmp_path, layer):
    store = featurize(folder, layer=layer, out=tmp_path / "one", progress=False, workers=2)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["data", "one"]
    assert store.spec["layer"] == layer and "layers" not in store.meta


def test_cli_default_featurize_then_train_chooses_among_both_layers(folder, tmp_path, capsys):
    out = tmp_path / "f"
    assert main(["featurize", str(folder), "--out", str(out), "--no-progress"]) == 0
    assert "also -> " in capsys.readouterr().out
    assert main(["train", str(out), "--out", str(tmp_path / "h.head.npz"), "--json", "--no-progress"]) == 0
    import json

    metrics = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert {row["features"] for row in metrics["selection"]} == {"penultimate", "predictions",
                                                                 "penultimate+predictions"}


def test_a_network_without_a_classifier_gives_penultimate_only(folder, tmp_path, monkeypatch, caplog):
    from pipeline.backbones.tflite import TFLiteBackbone

    monkeypatch.setattr(TFLiteBackbone, "has_class_scores", lambda self: False)
    with caplog.at_level("INFO", logger="pipeline"):
        store = featurize(folder, out=tmp_path / "e", progress=False, workers=2)
    assert store.spec["layer"] == "penultimate" and sorted(p.name for p in tmp_path.iterdir()) == ["data", "e"]
    lines = [r for r in caplog.records if "no class-score layer" in r.getMessage()]
    assert len(lines) == 1 and lines[0].levelname == "INFO"


@pytest.mark.slow
def test_which_networks_have_class_scores(tiny, tmp_path):
    import keras

    assert create_backbone("mobilenet_v2_quant").has_class_scores()
    keras_app = create_backbone("mobilenet", weights="random")
    assert keras_app.has_class_scores() and not keras_app.loaded  # known without building the model
    assert create_backbone(tflite_model(tiny, tmp_path / "t.tflite", quantized=False), scaling="tf").has_class_scores()
    embedder = keras.Model(tiny.input, tiny.get_layer("pool").output)  # no classifier: an embedding extractor
    path = tflite_model(embedder, tmp_path / "embed.tflite", quantized=False)
    bb = create_backbone(path, scaling="tf")
    assert not bb.has_class_scores()
    saved = export_saved_model(embedder, tmp_path / "embed-sm")  # a SavedModel / TF-Hub feature vector alike
    assert not create_backbone(saved, input_size=SIZE, scaling="tf").has_class_scores()
    assert create_backbone(export_saved_model(tiny, tmp_path / "sm"), input_size=SIZE, scaling="tf").has_class_scores()
    store = featurize(make_class_tree(tmp_path / "d", per_class=2), backbone=path, scaling="tf",
                      out=tmp_path / "e", progress=False)
    assert store.spec["layer"] == "penultimate" and not (tmp_path / "e-predictions").exists()


def test_default_pass_prunes_and_verifies_both_stores_and_train_still_sees_both(folder, tmp_path, capsys):
    from pipeline.heads.featuresets import feature_sets

    featurize(folder, out=tmp_path / "s", progress=False, workers=2)
    (folder / "red" / "red_0.jpg").unlink()
    run = featurize(folder, out=tmp_path / "s", progress=False, prune=True, report=True)
    assert (run.computed, run.pruned) == (0, 1)
    for name in ("s", "s-predictions"):
        assert len(FeatureStore.open(tmp_path / name)) == 9
        assert main(["verify", str(tmp_path / name)]) == 0
    assert [s.name for s in feature_sets(run.store)] == ["penultimate", "predictions", "penultimate+predictions"]


def test_beside_paths_put_the_class_scores_next_to_the_folder_asked_for(tmp_path, monkeypatch):
    from pathlib import Path

    from pipeline.featurizer.layers import beside_paths

    layers = ["penultimate", "predictions"]
    assert beside_paths("features/x/", layers) == [Path("features/x"), Path("features/x-predictions")]
    monkeypatch.chdir(tmp_path)
    assert beside_paths(".", layers) == [tmp_path, tmp_path.parent / f"{tmp_path.name}-predictions"]
    with pytest.raises(UsageError, match="one distinct folder per layer"):
        featurize(make_class_tree(tmp_path / "d", per_class=1), layer="penultimate,logits",
                  out=[tmp_path / "a"], progress=False)


def test_a_full_disk_on_the_second_layers_first_commit_keeps_both_stores_and_a_rerun_completes(tmp_path, monkeypatch):
    """The default pass fails while the first batch of `predictions` is written (penultimate's went in): both
    stores stay stores (the empty one too, with the run's report), and the same command run again finishes."""
    import errno

    import pipeline.store.writer as st
    from pipeline.featurizer.committer import Committer

    monkeypatch.setattr(Committer, "COMMIT_EVERY_S", 0.0)  # a commit per batch
    data = make_class_tree(tmp_path / "data", per_class=6)
    real, calls = st._write_piece, []

    def full(final, *a, **k):
        calls.append(final)
        if len(calls) == 2:  # penultimate's first piece, then predictions' first: the disk is full
            raise OSError(errno.ENOSPC, "No space left on device")
        return real(final, *a, **k)

    monkeypatch.setattr(st, "_write_piece", full)
    with pytest.raises(OSError, match="No space left"):
        featurize(data, out=tmp_path / "s", progress=False, batch_size=4)
    monkeypatch.undo()
    assert "s-predictions" in str(calls[1])
    assert len(FeatureStore.open(tmp_path / "s")) == 4 and len(FeatureStore.open(tmp_path / "s-predictions")) == 0
    assert (tmp_path / "s-predictions" / "report.json").exists()
    run = featurize(data, out=tmp_path / "s", progress=False, report=True)
    a, b = FeatureStore.open(tmp_path / "s"), FeatureStore.open(tmp_path / "s-predictions")
    assert run.computed == 12 and a.paths == b.paths and len(a) == 12  # every image in both, in the same order


def test_the_default_pass_keeps_an_older_penultimate_store_to_its_one_layer(tmp_path, monkeypatch, caplog):
    """A store made before the default pass wrote class scores beside it: a rerun reuses every row instead of
    featurizing all images again for a new sibling; with no --out, the default folder alike."""
    import logging

    monkeypatch.setenv("TFP_FEATURES", str(tmp_path / "features"))
    data = make_class_tree(tmp_path / "data", per_class=3)
    featurize(data, layer="penultimate", out=tmp_path / "s", progress=False)
    featurize(data, layer="penultimate", progress=False)  # features/data-mobilenet_v2_quant-penultimate
    with caplog.at_level(logging.INFO):
        runs = [featurize(data, out=tmp_path / "s", progress=False, report=True),
                featurize(data, progress=False, report=True)]
    assert [(r.computed, r.reused) for r in runs] == [(0, 6), (0, 6)]
    assert not (tmp_path / "s-predictions").exists() and "featurize into a new --out for both" in caplog.text
    assert sorted(p.name for p in (tmp_path / "features").iterdir()) == ["data-mobilenet_v2_quant-penultimate"]
    fresh = featurize(data, out=tmp_path / "t", progress=False, report=True)  # a new folder gets both
    assert fresh.computed == 6 and (tmp_path / "t-predictions" / "meta.json").is_file()


def test_closing_the_stores_of_a_pass_closes_each_and_reports_every_failure(caplog):
    """The stores of a multi-layer pass close at once: every one is closed even when another fails, the
    first error is raised and the others are logged (a full disk shows both stores in one run), and each
    store is released."""
    from pipeline.errors import StoreError
    from pipeline.featurizer.layers import LayerWriters

    class Writer:
        def __init__(self, name, error=None):
            self.name, self.error, self.closed, self.released = name, error, False, False

        def close(self):
            self.closed = True
            if self.error:
                raise StoreError(self.error)
            return self.name

        def abort(self):
            self.released = True

    good = [Writer("a"), Writer("b")]
    assert LayerWriters(good, backbone=None).close() == "a"
    assert all(w.closed and w.released for w in good)

    bad = [Writer("a", "store a: no space left"), Writer("b", "store b: no space left"), Writer("c")]
    with caplog.at_level("ERROR", logger="pipeline.featurizer.layers"), pytest.raises(StoreError, match="store a"):
        LayerWriters(bad, backbone=None).close()
    assert all(w.closed and w.released for w in bad)
    assert "store b: no space left" in caplog.text
