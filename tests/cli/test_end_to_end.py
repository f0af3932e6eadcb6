"""End to end with the bundled MobileNetV2: featurize -> train -> save/load -> score -> evaluate."""
from __future__ import annotations

import csv
import json
import os
from pathlib import Path

import numpy as np
import pytest
from conftest import make_class_tree, noise_image

import pipeline
from pipeline.backbones.tflite import TFLiteBackbone
from pipeline.cli import main
from pipeline.errors import SpecMismatchError


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    root = tmp_path_factory.mktemp("e2e")
    data = make_class_tree(root / "data", per_class=8)
    (data / "red" / "broken.jpg").write_bytes(b"<html>not found</html>")
    run = pipeline.featurize(data, "mobilenet_v2_quant", "penultimate", out=root / "feat", progress=False,
                             report=True)
    clf = pipeline.train(run.store, head="logreg")
    return root, data, run, clf


def test_featurize_writes_one_row_per_good_image_and_reports_the_bad_one(trained):
    root, data, run, _ = trained
    store = pipeline.FeatureStore.open(root / "feat")
    assert len(store) == 16 and store.features.shape == (16, 1280) and store.classes == ["blue", "red"]
    assert [(s["path"], s["reason"]) for s in run.skipped] == [("red/broken.jpg", "not_an_image")]
    assert "3c68746d6c3e" in run.skipped[0]["detail"]  # the first bytes ("<html>"), hex-encoded
    assert store.skipped[0]["path"] == "red/broken.jpg"
    assert store.spec["tensor"] == "MobilenetV2/Logits/AvgPool" and store.spec["preprocess"]["size"] == [224, 224]


def test_cached_rerun_reuses_rows_without_loading_the_network(trained, monkeypatch):
    root, data, _, _ = trained
    before = pipeline.FeatureStore.open(root / "feat").features
    monkeypatch.setattr(TFLiteBackbone, "_load", lambda self: pytest.fail("network loaded for a cached run"))
    run = pipeline.featurize(data, "mobilenet_v2_quant", "penultimate", out=root / "feat", progress=False, report=True)
    assert run.computed == 0 and run.reused == 16
    np.testing.assert_array_equal(run.store.features, before)


def test_new_and_changed_images_are_the_only_ones_featurized(tmp_path):
    data = make_class_tree(tmp_path / "d", per_class=3)
    pipeline.featurize(data, out=tmp_path / "f", progress=False)
    noise_image(77).save(data / "red" / "new.jpg")
    noise_image(78).save(data / "blue" / "blue_0.jpg")  # same name, new content
    run = pipeline.featurize(data, out=tmp_path / "f", progress=False, report=True)
    assert run.computed == 2 and run.reused == 5 and len(run.store) == 7
    fresh = pipeline.featurize(data, out=tmp_path / "g", progress=False)
    order = np.argsort(run.store.paths)
    np.testing.assert_allclose(run.store.features[order], fresh.features[np.argsort(fresh.paths)], atol=1e-6)


def test_saved_head_reloads_with_identical_probabilities(trained, tmp_path):
    root, data, run, clf = trained
    path = clf.save(tmp_path / "m.joblib")
    again = pipeline.load(path)
    X = run.store.features
    np.testing.assert_allclose(again.predict_proba(X), clf.predict_proba(X), rtol=0, atol=1e-6)
    assert list(again.classes_) == ["blue", "red"] and again.spec == run.store.spec
    files = [str(data / "red" / "red_0.jpg"), str(data / "blue" / "blue_1.jpg")]
    assert list(again.predict(files)) == ["red", "blue"]
    np.testing.assert_allclose(again.predict_proba(files), clf.predict_proba(X[[8, 1]]), atol=1e-6)


def test_head_refuses_features_from_another_layer(trained, tmp_path):
    root, data, _, clf = trained
    logits = pipeline.featurize(data, layer="logits", out=tmp_path / "logits", progress=False)
    with pytest.raises(SpecMismatchError, match="layer penultimate.*layer logits"):
        clf.predict_proba(logits)
    with pytest.raises(SpecMismatchError, match="1001 features, but this head is expecting 1280"):
        clf.predict_proba(logits.features)


def test_train_reports_cv_choice_of_C(trained):
    clf = trained[3]
    assert clf.metrics["C"] in (1e-3, 1e-2, 1e-1, 1.0, 10.0) and 0.5 <= clf.metrics["cv_accuracy"] <= 1.0


def test_cli_flow_score_csv_and_kaggle(trained, tmp_path, capsys):
    root, data, _, _ = trained
    model = tmp_path / "m.joblib"
    assert main(["train", str(root / "feat"), "--head", "linear_svm", "--out", str(model)]) == 0
    test = tmp_path / "test"
    (test / "sub").mkdir(parents=True)
    noise_image(1, base=(230, 30, 30)).save(test / "12.jpg")
    noise_image(2, base=(30, 30, 230)).save(test / "sub" / "3, the \"blue\" one é.png")
    out = tmp_path / "pred.csv"
    assert main(["score", str(model), str(test), "--out", str(out), "--cache", str(tmp_path / "c"),
                 "--no-progress"]) == 0
    rows = list(csv.DictReader(open(out, encoding="utf-8")))
    assert [r["path"] for r in rows] == ["12.jpg", "sub/3, the \"blue\" one é.png"]
    assert [r["prediction"] for r in rows] == ["red", "blue"]
    assert abs(float(rows[0]["red"]) + float(rows[0]["blue"]) - 1) < 1e-5
    kag = tmp_path / "sub.csv"
    assert main(["score", str(model), str(test / "sub"), "--out", str(kag), "--kaggle", "red", "--clip", "0.3",
                 "--no-progress", "--cache", str(tmp_path / "c2")]) == 0
    lines = open(kag, encoding="utf-8").read().splitlines()
    assert lines[0] == "id,label" and lines[1].startswith('"3, the ""blue"" one é",')
    assert float(lines[1].rsplit(",", 1)[1]) == pytest.approx(np.clip(float(rows[1]["red"]), 0.3, 0.7), abs=1e-5)
    assert main(["evaluate", str(model), str(root / "feat"), "--json"]) == 0
    m = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert {"accuracy", "balanced_accuracy", "log_loss", "per_class", "confusion_matrix", "classes"} <= set(m)
    assert m["classes"] == ["blue", "red"] and m["accuracy"] == 1.0


def test_cli_exit_codes_and_one_line_errors(tmp_path, capsys):
    with pytest.raises(SystemExit) as e:
        main(["train"])
    assert e.value.code == 2
    capsys.readouterr()
    assert main(["train", str(tmp_path / "missing"), "--out", str(tmp_path / "m.joblib")]) == 2  # issue 29: one rule
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "missing" in err and "featurize" in err
    assert main(["featurize", str(tmp_path / "nope"), "--no-progress"]) == 2
    assert main(["score", str(tmp_path / "nope.joblib"), str(tmp_path), "--out", "x.csv"]) == 2


def test_truncated_model_file_is_a_clear_error(trained, tmp_path):
    path = trained[3].save(tmp_path / "m.joblib")
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(pipeline.ModelFileError, match="m.joblib"):
        pipeline.load(path)


def test_featurize_accepts_an_already_loaded_backbone(tmp_path):
    bb = pipeline.create_backbone("mobilenet_v2_quant", "logits").load()
    data = make_class_tree(tmp_path / "data", per_class=2)
    store = pipeline.featurize(data, bb, out=tmp_path / "s", progress=False)
    assert store.features.shape == (4, 1001) and store.spec["dim"] == 1001


def test_rewritten_file_with_restored_mtime_is_featurized_again_and_touched_one_reused(tmp_path):
    data = make_class_tree(tmp_path / "data", per_class=2)
    pipeline.featurize(data, out=tmp_path / "s", progress=False)
    target = data / "red" / "red_0.jpg"
    st = target.stat()
    noise_image(999).save(target, quality=92)  # new content...
    os.utime(target, ns=(st.st_atime_ns, st.st_mtime_ns))  # ...behind the old mtime (as cp -p or rsync -t do)
    os.utime(data / "blue" / "blue_0.jpg")  # touched, same content
    run = pipeline.featurize(data, out=tmp_path / "s", progress=False, report=True)
    assert run.computed == 1 and run.reused == 3


def test_the_installed_command_and_python_m_pipeline_exit_with_mains_code(tmp_path):
    """The console script named in setup.cfg and ``python -m pipeline`` both run main() and exit with its code
    (console_main freezes the garbage collector just before the exit: run in a process of its own)."""
    import configparser
    import subprocess
    import sys

    cfg = configparser.ConfigParser()
    cfg.read(Path(__file__).resolve().parents[2] / "setup.cfg")
    script = cfg["options.entry_points"]["console_scripts"].strip()
    assert script == "tf-feature-pipeline = pipeline.cli:console_main"
    runs = [[sys.executable, "-c", "import sys; from pipeline.cli import console_main; sys.argv[1:] = "
             f"['featurize', {str(tmp_path / 'none')!r}]; sys.exit(console_main())"],
            [sys.executable, "-m", "pipeline", "featurize", str(tmp_path / "none")]]
    for cmd in runs:
        done = subprocess.run(cmd, capture_output=True, text=True)
        assert done.returncode == 2 and "does not exist" in done.stderr, done.stderr
