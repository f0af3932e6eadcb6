"""The feature sets a store offers train: its layer, the layers written beside it, their join."""
from __future__ import annotations

import json

import numpy as np
import pytest

import pipeline
from pipeline.errors import SpecMismatchError, UsageError
from pipeline.heads.featuresets import feature_sets, joined_spec
from pipeline.store import FeatureStore, open_writer

REQ = {"backbone": "b", "kind": "tflite", "model": "sha-a", "weights": None, "layer": "penultimate",
       "preprocess": {"size": [224, 224]}, "source": {}}


def layered_stores(root, n_per=10, seed=0):
    """Two stores as one multi-layer run writes them: 'penultimate' (noise) and 'predictions' (informative)."""
    rng = np.random.default_rng(seed)
    y = np.repeat(["cat", "dog", "fox"], n_per)
    rows = [{"path": f"{c}/{i}.jpg", "label": c, "sha256": f"{i:064x}"} for i, c in enumerate(y)]
    scores = np.eye(3)[np.searchsorted(["cat", "dog", "fox"], y)] * 5 + rng.normal(0, 1, (len(y), 3))
    data = {"penultimate": rng.normal(0, 1, (len(y), 6)), "predictions": scores}
    paths = {layer: root / f"s-{layer}" for layer in data}
    for layer, X in data.items():
        w = open_writer(paths[layer], dict(REQ, layer=layer))
        w.set_spec(dict(REQ, layer=layer, tensor=f"t_{layer}", dim=X.shape[1]))
        w.meta["layers"] = {k: f"../s-{k}" for k in data}
        w.append(X.astype(np.float32), rows)
        w.close()
    return paths


def layered_stores_of(root, other_model: str, n_per=10):
    """layered_stores, the predictions store written by another network (featurized again since)."""
    rng = np.random.default_rng(0)
    y = np.repeat(["cat", "dog", "fox"], n_per)
    rows = [{"path": f"{c}/{i}.jpg", "label": c, "sha256": f"{i:064x}"} for i, c in enumerate(y)]
    for layer, model, dim in (("penultimate", "sha-a", 6), ("predictions", other_model, 3)):
        req = dict(REQ, layer=layer, model=model)
        w = open_writer(root / f"s-{layer}", req)
        w.set_spec(dict(req, tensor=f"t_{layer}", dim=dim))
        w.meta["layers"] = {k: f"../s-{k}" for k in ("penultimate", "predictions")}
        w.append(rng.normal(0, 1, (len(y), dim)).astype(np.float32), rows)
        w.close()
    return root / "s-penultimate"


def test_a_layer_featurized_again_by_another_network_is_not_offered_nor_joined(tmp_path, caplog):
    # same images, same folder names, but the class scores now come from another network: a head on them, or
    # on their join, would record the first network's spec and read the second's features
    store = FeatureStore.open(layered_stores_of(tmp_path, other_model="sha-b"))
    assert [s.name for s in feature_sets(store)] == ["penultimate"]
    assert "not of the network of" in caplog.text and "model differ" in caplog.text
    with pytest.raises(ValueError, match="different networks or settings"):
        joined_spec(store.spec, dict(store.spec, model="sha-b", layer="predictions"))
    same = FeatureStore.open(layered_stores_of(tmp_path / "same", other_model="sha-a"))
    assert [s.name for s in feature_sets(same)] == ["penultimate", "predictions", "penultimate+predictions"]


def test_a_store_offers_the_layers_beside_it_and_their_join(tmp_path):
    paths = layered_stores(tmp_path)
    sets = feature_sets(FeatureStore.open(paths["penultimate"]))
    assert [s.name for s in sets] == ["penultimate", "predictions", "penultimate+predictions"]
    join = sets[2]
    assert join.features.shape == (30, 9) and join.spec["layer"] == "penultimate,predictions"
    assert join.spec["tensor"] == "t_penultimate,t_predictions" and join.spec["dim"] == 9


def test_a_store_without_layers_offers_its_own_only(tmp_path):
    paths = layered_stores(tmp_path)
    meta = json.loads((paths["penultimate"] / "meta.json").read_text())
    del meta["layers"]
    (paths["penultimate"] / "meta.json").write_text(json.dumps(meta))
    assert [s.name for s in feature_sets(FeatureStore.open(paths["penultimate"]))] == ["penultimate"]


def test_joined_spec_is_the_spec_of_both_layers_read_in_one_pass():
    a = dict(REQ, tensor="x", dim=4)
    b = dict(REQ, layer="logits", tensor="y", dim=2)
    assert joined_spec(a, b) == dict(REQ, layer="penultimate,logits", tensor="x,y", dim=6)


def test_train_chooses_the_informative_layer_and_the_head_records_its_spec(tmp_path):
    paths = layered_stores(tmp_path)
    clf = pipeline.train(paths["penultimate"], head="logreg", folds=3)
    m = clf.metrics
    assert m["feature_set"] in ("predictions", "penultimate+predictions")
    assert clf.spec["layer"] == m["feature_set"].replace("+", ",")
    assert {r["features"] for r in m["selection"]} == {"penultimate", "predictions", "penultimate+predictions"}
    assert sum(r["chosen"] for r in m["selection"]) == 1
    with pytest.raises(SpecMismatchError):  # features of another layer are refused, never mixed
        clf.predict_proba(np.zeros((1, 6), np.float32))


def test_layer_pins_one_set_and_an_unknown_one_is_refused_with_the_choices(tmp_path):
    paths = layered_stores(tmp_path)
    clf = pipeline.train(paths["penultimate"], head="logreg", folds=3, layer="penultimate")
    assert clf.spec["layer"] == "penultimate" and {r["features"] for r in clf.metrics["selection"]} == {"penultimate"}
    with pytest.raises(UsageError, match="offers the feature sets penultimate, predictions"):
        pipeline.train(paths["penultimate"], layer="pool5")


def test_the_learning_curve_is_drawn_on_the_set_the_head_was_trained_on(tmp_path, capsys):
    from pipeline.cli import main
    from pipeline.options import HeadOptions
    from pipeline.reports.summary import train_report

    paths = layered_stores(tmp_path)  # penultimate: noise; predictions: the classes
    assert main(["train", str(paths["penultimate"]), "--layer", "predictions", "--head", "logreg", "--C", "1",
                 "--learning-curve", "--out", str(tmp_path / "h.head.npz")]) == 0
    curve = capsys.readouterr().out.split("learning curve (held-out accuracy by training images per class): ")[1]
    last = float(curve.splitlines()[0].split(", ")[-1].split(": ")[1])
    assert last > 0.9  # the informative predictions, not the noise of the store's own layer (about 1/3)
    text = train_report(FeatureStore.open(paths["predictions"]), None, HeadOptions(head="zero_shot"),
                        learning_curve=True, feature_set="predictions")
    assert "no learning curve: the chosen head is zero-shot" in text
