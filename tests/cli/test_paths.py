"""One exit-status rule (issue 29, items 4, 7, 9): a path that does not exist or is the wrong kind is bad
usage (2) for every command, refused before TensorFlow or scikit-learn is imported."""
from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
from conftest import REPO, make_class_tree

from pipeline.cli import main
from pipeline.cli.commands import build_parser
from pipeline.cli.paths import PATHS


@pytest.fixture(scope="module")
def things(tmp_path_factory):
    """Paths of each kind, none of them a real head or store: the checks never open them."""
    root = tmp_path_factory.mktemp("paths")
    photos = make_class_tree(root / "photos", per_class=1)
    store = root / "store"
    store.mkdir()
    (store / "meta.json").write_text("{}")
    head = root / "m.head.npz"
    head.write_bytes(b"PK not really a head")
    return {"root": root, "photos": photos, "store": store, "head": head, "nowhere": root / "nowhere",
            "image": photos / "red" / "red_0.jpg"}


def _missing_cases(t):
    n, s, h, p = t["nowhere"], t["store"], t["head"], t["photos"]
    return [
        (["featurize", n], "data folder"), (["featurize", p, "--labels", n], "CSV file"),
        (["featurize", p, "--backbone", t["root"] / "none.tflite"], "backbone"),
        (["predict-imagenet", n], "image"), (["train", n, "--out", t["root"] / "o.head.npz"], "feature store"),
        (["train", s, "--out", t["root"] / "o.head.npz", "--holdout", "0.2", "--groups", n], "CSV file"),
        (["score", n, p, "--out", t["root"] / "o.csv"], "model file"),
        (["score", h, n, "--out", t["root"] / "o.csv"], "data folder"),
        (["evaluate", n, s], "model file"), (["evaluate", h, n], "feature store"), (["compare", s, n], "feature store"),
        (["split", n, "--out", t["root"] / "o.csv"], "feature store"), (["suspects", n], "feature store"),
        (["convert", n, "--out", t["root"] / "o.head.npz"], "model file"),
        (["export", n, "--format", "tflite", "--out", t["root"] / "o.tflite"], "model file"),
        (["export-features", n, "--out", t["root"] / "o.npz"], "feature store"),
        (["import-features", n, "--out", t["root"] / "o"], "file"), (["verify", n], "feature store"),
        (["serve", n], "model"), (["audit", s, n], "feature store"),
    ]


def test_a_missing_path_is_bad_usage_for_every_command(things, capsys):
    seen = set()
    for argv, what in _missing_cases(things):
        assert main(list(map(str, argv))) == 2, argv
        err = capsys.readouterr().err
        assert err.startswith(f"error: {what} '") and "' does not exist" in err and err.count("\n") == 1, (argv, err)
        seen.add(argv[0])
    assert seen == set(PATHS)  # every command that takes a path is covered here


def test_every_positional_path_is_declared():
    sub = build_parser()._subparsers._group_actions[0]
    paths = {"data_dir", "features_dir", "features_dirs", "model", "file", "images"}
    for name, parser in sub.choices.items():
        declared = {arg for arg, _ in PATHS.get(name, [])}
        positional = {a.dest for a in parser._actions if not a.option_strings} & paths
        assert positional <= declared, name


@pytest.mark.parametrize("argv, says", [
    (["featurize", "{image}"], "is a file, not a folder; featurize takes a folder of images"),
    (["train", "{head}", "--out", "{root}/o.head.npz"], "is a file, not a feature store"),
    (["train", "{photos}", "--out", "{root}/o.head.npz"], "is a folder of images, not a feature store; featurize it"),
    (["verify", "{photos}"], "is a folder of images, not a feature store"),
    (["evaluate", "{store}", "{store}"], "is a folder, not a head file"),
    (["evaluate", "{image}", "{store}"], "is an image, not a head file"),
    (["convert", "{photos}", "--out", "{root}/o.head.npz"], "is a folder, not a head file"),
    (["import-features", "{photos}", "--out", "{root}/o"], "is a folder, not a file"),
    (["predict-imagenet", "{photos}"], "is a folder; predict-imagenet takes image files"),
])
def test_the_wrong_kind_of_path_is_bad_usage_and_says_what_it_is(things, capsys, argv, says):
    assert main([a.format(**things) for a in argv]) == 2
    assert says in capsys.readouterr().err


def test_score_given_one_image_says_it_takes_a_folder_and_where_to_go(things, capsys):
    # item 7: `score head.npz cat.jpg`
    assert main(["score", str(things["head"]), str(things["image"]), "--out", str(things["root"] / "o.csv")]) == 2
    err = capsys.readouterr().err
    assert f"{things['image']} is an image, not a folder; score takes a folder of images" in err
    assert f"python -m pipeline serve {things['head']}" in err and "predict-imagenet" in err
    assert not (things["root"] / "o.csv").exists()


_NO_HEAVY_IMPORTS = """
import json, sys
from pipeline.cli import main
codes = [main(argv) for argv in json.loads(sys.argv[1])]
print(json.dumps({"codes": codes, "heavy": sorted(m for m in ("tensorflow", "keras", "sklearn", "torch", "jax")
                                                 if m in sys.modules)}))
"""


def test_usage_errors_come_before_tensorflow_and_scikit_learn_are_imported(things):
    # item 9: `evaluate` given an image folder took 13.8 s, `train` on a missing store 8.8 s (TensorFlow first)
    t = {k: str(v) for k, v in things.items()}
    cases = [["evaluate", t["head"], t["photos"]], ["train", t["nowhere"], "--out", t["root"] + "/o.head.npz"],
             ["score", t["head"], t["image"], "--out", t["root"] + "/o.csv"], ["compare", t["store"], "--heads", "svn"],
             ["featurize", t["photos"], "--backbone", "mobilenetv2_quant"], ["serve", t["nowhere"]]]
    r = subprocess.run([sys.executable, "-c", _NO_HEAVY_IMPORTS, json.dumps(cases)], cwd=REPO, capture_output=True,
                       text=True, timeout=120, env=dict(os.environ))
    out = json.loads(r.stdout.splitlines()[-1])
    assert out == {"codes": [2] * len(cases), "heavy": []}, r.stderr
    assert "did you mean 'svm'?" in r.stderr and "did you mean 'mobilenet_v2_quant'?" in r.stderr
