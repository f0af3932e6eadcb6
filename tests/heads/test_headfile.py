"""Head files that hold data, not code (issue 12): .head.npz round trips, refusals, and old pickles."""
from __future__ import annotations

import io
import json
import pickle
import subprocess
import sys
import zipfile

import joblib
import numpy as np
import pytest
from sklearn.calibration import CalibratedClassifierCV
from sklearn.pipeline import Pipeline
from sklearn.preprocessing import StandardScaler
from sklearn.svm import LinearSVC

import pipeline
from pipeline.cli import main
from pipeline.errors import ModelFileError
from pipeline.heads.classifier import Classifier, convert
from pipeline.heads.headfile import FORMAT, LEGACY_CALIBRATION, LEGACY_FORMAT, read
from pipeline.training.estimator import fit_head

DIM = 24
SPEC = {"backbone": "toy", "kind": "toy", "model": "toy.tflite", "weights": None, "layer": "penultimate",
        "tensor": "pool", "dim": DIM, "preprocess": {"size": [8, 8], "scaling": "unit", "crop_fraction": 1.0}}


def toy(n_classes: int, per_class: int = 8, seed: int = 0):
    rng = np.random.default_rng(seed)
    centres = rng.normal(0, 2, (n_classes, DIM))
    X = (np.repeat(centres, per_class, axis=0) + rng.normal(0, 1, (n_classes * per_class, DIM))) * 3 + 5
    return X.astype(np.float32), np.repeat([f"class{i}" for i in range(n_classes)], per_class)


def trained(head="linear_svm", n_classes=3, pca=None) -> Classifier:
    X, y = toy(n_classes)
    model, metrics = fit_head(head, X, y, C=1.0, pca=pca)
    clf = Classifier(model, list(model.classes_), SPEC, metrics)
    clf.train_hashes = ["0123456789abcdef"]
    return clf


@pytest.mark.parametrize("n_classes", [2, 4])
@pytest.mark.parametrize("pca", [None, 5])
@pytest.mark.parametrize("head", ["linear_svm", "svm", "logreg"])
def test_reloaded_head_gives_the_trained_probabilities(head, pca, n_classes, tmp_path):
    clf = trained(head, n_classes, pca)
    path = clf.save(tmp_path / "m.head.npz")
    again = pipeline.load(path)
    X = np.concatenate([toy(n_classes, 5, seed=1)[0], toy(n_classes, 5, seed=2)[0] * 2])  # unseen rows
    np.testing.assert_allclose(again.predict_proba(X), clf.predict_proba(X), rtol=0, atol=1e-6)
    assert list(again.predict(X)) == list(clf.predict(X))
    assert list(again.classes_) == list(clf.classes_) and again.spec == SPEC
    assert again.metrics["calibration"] == clf.metrics["calibration"] and again.train_hashes == clf.train_hashes
    assert np.allclose(pipeline.load(again.save(tmp_path / "again.head.npz")).predict_proba(X), again.predict_proba(X))


def test_the_file_is_arrays_and_a_json_header(tmp_path):
    path = trained("svm", 3, pca=4).save(tmp_path / "m.head.npz")
    with np.load(path, allow_pickle=False) as z:  # readable by plain numpy, no pickle allowed
        header = json.loads(str(z["header"][()]))
        names = set(z.files)
    assert header["format"] == FORMAT and header["classes"] == ["class0", "class1", "class2"]
    assert header["spec"] == SPEC and "scikit-learn" in header["versions"] and len(header["sha256"]) == 64
    assert {"scale.mean", "pca.components", "rbf.support_vectors", "rbf.gamma", "calibration.alpha"} <= names


def test_loading_never_unpickles(tmp_path, monkeypatch):
    path = trained("linear_svm", 3).save(tmp_path / "m.head.npz")

    def refuse(*a, **k):
        raise AssertionError("pickle used while loading a head file")

    for name in ("load", "loads", "Unpickler"):
        monkeypatch.setattr(pickle, name, refuse)
    monkeypatch.setattr(joblib, "load", refuse)
    assert pipeline.load(path).predict(toy(3, 2)[0]).shape == (6,)


def test_loading_needs_neither_joblib_nor_scikit_learn(tmp_path):
    # rebuilt from the arrays alone: a newer (or absent) scikit-learn cannot refuse the file
    path = trained("svm", 4, pca=5).save(tmp_path / "m.head.npz")
    code = (f"import sys, pipeline; clf = pipeline.load({str(path)!r}); "
            "import numpy as np; clf.predict_proba(np.ones((2, clf.n_features_in_), np.float32)); "
            "print(sorted(m for m in ('joblib', 'sklearn') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def rewrite(path, header=None, **arrays):
    """Write an npz with the same members as `path`, some replaced."""
    with np.load(path, allow_pickle=False) as z:
        members = {k: z[k] for k in z.files}
    if header is not None:
        members["header"] = np.array(json.dumps(header))
    members.update(arrays)
    with open(path, "wb") as f:
        np.savez(f, **members)


def test_changed_arrays_or_header_fail_the_checksum(tmp_path):
    path = trained("logreg", 3).save(tmp_path / "m.head.npz")
    header, head = read(path)
    rewrite(path, **{"linear.coef": head.arrays["linear.coef"] * 1.01})
    with pytest.raises(ModelFileError, match="m.head.npz fails its checksum"):
        pipeline.load(path)
    path = trained("logreg", 3).save(tmp_path / "m.head.npz")
    rewrite(path, header={**header, "classes": ["class2", "class1", "class0"]})
    with pytest.raises(ModelFileError, match="checksum"):
        pipeline.load(path)


def test_truncated_or_unknown_files_are_refused_with_the_reason(tmp_path):
    path = trained("linear_svm", 2).save(tmp_path / "m.head.npz")
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(ModelFileError, match="m.head.npz is a head file cut short or damaged"):
        pipeline.load(path)
    path.write_bytes(data)
    header, _ = read(path)
    rewrite(path, header={**header, "format": "tf-feature-pipeline/head-9"})
    with pytest.raises(ModelFileError, match="head-9"):
        pipeline.load(path)


def test_object_arrays_and_oversized_members_are_refused_before_reading(tmp_path):
    path = trained("linear_svm", 2).save(tmp_path / "m.head.npz")
    with open(path, "wb") as f:  # an object array would need pickle to load
        np.savez(f, header=np.array("{}"), evil=np.array([{"a": 1}], dtype=object))
    with pytest.raises(ModelFileError, match="dtype object"):
        pipeline.load(path)
    buf = io.BytesIO()  # a member that claims 8 GB but holds 16 bytes
    np.lib.format.write_array_header_1_0(buf, {"descr": "<f8", "fortran_order": False, "shape": (10**9,)})
    with zipfile.ZipFile(path, "w") as zf:
        zf.writestr("header.npy", buf.getvalue() + b"\0" * 16)
    with pytest.raises(ModelFileError, match="declares more data"):
        pipeline.load(path)


def legacy_head(tmp_path):
    """A head-1 file as the previous version wrote it: joblib of a dict with a sigmoid-calibrated SVM."""
    X, y = toy(3)
    model = Pipeline([("scale", StandardScaler()), ("clf", CalibratedClassifierCV(
        LinearSVC(C=0.1), cv=3, method="sigmoid", ensemble=False))]).fit(X, y)
    path = tmp_path / "old.joblib"
    joblib.dump({"format": LEGACY_FORMAT, "model": model, "classes": list(model.classes_), "spec": SPEC,
                 "metrics": {"head": "linear_svm"}, "versions": {}, "train_hashes": []}, path)
    return path, model, X


def test_old_joblib_heads_load_only_when_trusted_and_convert(tmp_path):
    path, model, X = legacy_head(tmp_path)
    with pytest.raises(ModelFileError, match=r"pickle.*convert .*old.joblib --out .*--trust-pickle"):
        pipeline.load(path)
    old = pipeline.load(path, trusted=True)
    np.testing.assert_allclose(old.predict_proba(X), model.predict_proba(X))
    clf, new = convert(path, tmp_path / "old.head.npz", trusted=True)
    again = pipeline.load(new)
    np.testing.assert_allclose(again.predict_proba(X), model.predict_proba(X), rtol=0, atol=1e-6)
    assert again.metrics["calibration"] == LEGACY_CALIBRATION


class PlantFile:
    """Unpickling this creates the file `marker` (it calls open(marker, 'w'))."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return open, (self.marker, "w")


@pytest.mark.parametrize("command", ["score", "evaluate", "convert"])
def test_a_planted_pickle_never_runs_without_trust_pickle(command, tmp_path, capsys):
    marker = tmp_path / "pwned"
    evil = tmp_path / "model.joblib"
    evil.write_bytes(pickle.dumps({"format": LEGACY_FORMAT, "model": PlantFile(marker)}))
    (tmp_path / "store").mkdir()  # passes the command line's path check: the head is loaded first
    (tmp_path / "store" / "meta.json").write_text("{}")
    args = {"score": ["score", str(evil), str(tmp_path), "--out", str(tmp_path / "p.csv"), "--no-progress"],
            "evaluate": ["evaluate", str(evil), str(tmp_path / "store")],
            "convert": ["convert", str(evil), "--out", str(tmp_path / "new.head.npz")]}[command]
    assert main(args) != 0
    assert "--trust-pickle" in capsys.readouterr().err
    assert not marker.exists()
    assert not (tmp_path / "p.csv").exists() and not (tmp_path / "new.head.npz").exists()
    # the same file with the flag is unpickled: the pickle above is armed
    assert main(["convert", str(evil), "--out", str(tmp_path / "new.head.npz"), "--trust-pickle"]) != 0
    assert marker.exists()


def test_a_folder_given_as_the_head_is_named_a_folder_not_missing(tmp_path):
    """RELIABILITY E-ERR: `evaluate DATA_DIR STORE` (arguments swapped, or a SavedModel export) said the
    folder "does not exist", sending the user looking for a file that is there."""
    folder = tmp_path / "photos"
    folder.mkdir()
    with pytest.raises(ModelFileError, match="'.*photos' is a folder, not a head file"):
        pipeline.load(folder)


def test_an_old_pickle_from_another_scikit_learn_version_is_refused_naming_both(tmp_path, monkeypatch):
    """RELIABILITY B13: even trusted, a head-1 pickle saved under another scikit-learn is refused (sklearn calls
    loading it unsupported), naming both versions and the fix, instead of a warning and a maybe-wrong head."""
    import sklearn
    import sklearn.base

    monkeypatch.setattr(sklearn.base, "__version__", "0.0.1")  # what __getstate__ records in the pickle
    path, _, _ = legacy_head(tmp_path)
    monkeypatch.undo()
    with pytest.raises(ModelFileError, match=rf"saved with scikit-learn 0\.0\.1, this is {sklearn.__version__}; "
                                             r"retrain"):
        pipeline.load(path, trusted=True)


def _with_arrays(path, **arrays):
    """Replace arrays of a head file and recompute its checksum, as someone crafting a head would."""
    from pipeline.heads.headfile import digest

    header, head = read(path)
    arrays = {k: np.asarray(v, head.arrays[k].dtype) for k, v in arrays.items()}
    header["sha256"] = digest({**head.arrays, **arrays}, header)
    rewrite(path, header=header, **arrays)
    return path


@pytest.mark.parametrize("command", ["score", "evaluate", "serve"])
def test_a_head_whose_arrays_overflow_is_refused_at_load_naming_the_array(command, tmp_path, capsys):
    """Issue 27 row 'a data-only head whose scale array is 1e-300 (checksum recomputed)': score exited 0 with
    nan probabilities, serve answered 500. Every array is finite, but any feature off the mean divided by
    1e-300 is inf: a probe batch at load finds it, and score, evaluate and serve exit 1 naming the file and
    the array, before any backbone or image is touched. RELIABILITY E-ERR, D04 (a file as an attack vector)."""
    path = _with_arrays(trained("linear_svm", 3).save(tmp_path / "m.head.npz"), **{"scale.scale": np.full(DIM, 1e-300)})
    with pytest.raises(ModelFileError, match=r"m\.head\.npz .*array scale\.scale makes non-finite scores"):
        pipeline.load(path)
    (tmp_path / "data").mkdir()
    (tmp_path / "store").mkdir()
    (tmp_path / "store" / "meta.json").write_text("{}")  # a store as far as the path check goes: the head is read first
    args = {"score": ["score", str(path), str(tmp_path / "data"), "--out", str(tmp_path / "p.csv")],
            "evaluate": ["evaluate", str(path), str(tmp_path / "store")], "serve": ["serve", str(path)]}[command]
    assert main(args) == 1
    err = capsys.readouterr().err
    assert "m.head.npz" in err and "scale.scale" in err and "Traceback" not in err
    assert not (tmp_path / "p.csv").exists()


@pytest.mark.parametrize("arrays,named", [({"linear.coef": 1e308}, "linear.coef"),
                                          ({"scale.mean": 1e300}, "scale.mean"),
                                          ({"calibration.alpha": 1e308}, None)])
def test_the_probe_names_the_array_whose_step_overflows(arrays, named, tmp_path):
    """Finite but huge arrays: the first step whose scores go non-finite is named; a huge temperature that
    still gives finite (if extreme) probabilities is not refused."""
    clf = trained("linear_svm", 2)
    path = clf.save(tmp_path / "m.head.npz")
    _, head = read(path)
    path = _with_arrays(path, **{k: np.full(head.arrays[k].shape, v) for k, v in arrays.items()})
    if named is None:
        assert np.all(np.isfinite(pipeline.load(path).predict_proba(toy(2)[0])))
        return
    with pytest.raises(ModelFileError, match=named.replace(".", r"\.")):
        pipeline.load(path)


def test_a_header_nested_100000_deep_is_refused_naming_the_file(tmp_path, capsys):
    """E-ERR: a JSON header of 100,000 nested arrays raised RecursionError with no file named."""
    path = trained("linear_svm", 2).save(tmp_path / "m.head.npz")
    with np.load(path) as z:
        arrays = {k: z[k] for k in z.files if k != "header"}
    with open(path, "wb") as f:
        np.savez(f, header=np.array("[" * 100_000 + "]" * 100_000), **arrays)
    with pytest.raises(ModelFileError, match="m.head.npz has no readable JSON header.*nested too deep"):
        pipeline.load(path)
    assert main(["score", str(path), str(tmp_path), "--out", str(tmp_path / "p.csv")]) == 1
    err = capsys.readouterr().err
    assert "m.head.npz" in err and "nested too deep" in err and "RecursionError" not in err
