"""A newcomer's first hour (issue 15): messages that point the right way, quiet runs, readable logs.

All on the bundled TFLite model and tiny image folders built here.
"""
from __future__ import annotations

import os
import subprocess
import sys

import numpy as np
import pytest
from conftest import REPO, make_class_tree

import pipeline
from pipeline.backbones import create_backbone, describe
from pipeline.cli import main
from pipeline.errors import ModelFileError, StoreError, UsageError


@pytest.fixture(scope="module")
def flow(tmp_path_factory):
    """A labelled folder (red/blue), its store and a head trained on it."""
    root = tmp_path_factory.mktemp("firsthour")
    data = make_class_tree(root / "photos", per_class=4)
    store = pipeline.featurize(data, out=root / "feat", progress=False)
    model = pipeline.train(store, head="logreg", C=1.0).save(root / "m.joblib")
    return root, data, store, model


def run_cli(*args, env=None) -> subprocess.CompletedProcess:
    """The command line in a fresh process, stderr captured (so not a terminal)."""
    return subprocess.run([sys.executable, "-m", "pipeline", *map(str, args)], cwd=REPO, capture_output=True,
                          text=True, timeout=300, env={**os.environ, **(env or {})})


# --- messages that send the user the right way ---

def test_an_image_folder_given_as_a_store_says_to_featurize_it_first(flow, capsys):
    root, data, _, model = flow
    for argv in (["train", data, "--out", root / "x.joblib"], ["evaluate", model, data]):
        assert main(list(map(str, argv))) == 2  # the wrong kind of path: bad usage (issue 29)
        err = capsys.readouterr().err
        assert "is a folder of images, not a feature store" in err and f"featurize {data} --out" in err
        assert f"--out {data}`" not in err  # never suggests writing the store into the image folder


def test_a_text_or_empty_file_named_joblib_says_what_it_is(tmp_path):
    text = tmp_path / "model.joblib"
    text.write_text("not a model\n")
    with pytest.raises(ModelFileError, match="is a text file, not a model file") as e:
        pipeline.load(text)
    assert "truncated" not in str(e.value)
    empty = tmp_path / "empty.joblib"
    empty.write_bytes(b"")
    with pytest.raises(ModelFileError, match="is empty"):
        pipeline.load(empty)


def test_a_cut_short_model_file_says_it_is_incomplete(flow, tmp_path):
    data = flow[3].read_bytes()
    cut = tmp_path / "cut.joblib"
    cut.write_bytes(data[: len(data) // 2])
    with pytest.raises(ModelFileError, match="cut short"):
        pipeline.load(cut)


def test_spec_descriptions_and_store_mismatch_never_print_none(flow, tmp_path):
    root, data, _, _ = flow
    assert "None" not in describe(create_backbone("mobilenet_v2_quant", "logits").request())
    with pytest.raises(StoreError) as e:  # the same store asked for another layer
        pipeline.featurize(data, layer="logits", out=root / "feat", progress=False)
    assert "None" not in str(e.value) and "layer=logits" in str(e.value) and "D=1280" in str(e.value)


def test_label_messages_show_plain_class_names(flow):
    from pipeline.training.evaluation import classification_metrics

    with pytest.raises(UsageError) as e:
        classification_metrics(np.array(["red", "green"]), np.full((2, 2), 0.5), np.array(["blue", "red"]))
    assert "np.str_" not in str(e.value) and "labels green are not classes of this head (blue, red)" in str(e.value)
    assert "np.str_" not in repr(pipeline.load(flow[3]))
    clf = pipeline.train(flow[2], head="logreg", C=1.0)  # freshly trained, not reloaded
    assert "np.str_" not in repr(clf) and all(type(c) is str for c in clf.classes_)


def test_kaggle_class_is_checked_before_any_image_is_featurized(flow, tmp_path, capsys):
    root, data, _, model = flow
    cache = tmp_path / "cache"
    assert main(["score", str(model), str(data), "--out", str(tmp_path / "k.csv"), "--cache", str(cache),
                 "--kaggle", "rd", "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert "--kaggle 'rd' is not a class of this head (did you mean 'red'?)" in err
    assert not cache.exists() and not (tmp_path / "k.csv").exists()


def test_misspelled_backbone_and_layer_exit_2_with_a_suggestion(flow, tmp_path, capsys):
    _, data, _, _ = flow
    assert main(["featurize", str(data), "--backbone", "mobilenetv2_quant", "--out", str(tmp_path / "a"),
                 "--no-progress"]) == 2
    assert "did you mean 'mobilenet_v2_quant'?" in capsys.readouterr().err
    assert main(["featurize", str(data), "--layer", "penultimte", "--out", str(tmp_path / "b"),
                 "--no-progress"]) == 2
    assert "did you mean 'penultimate'?" in capsys.readouterr().err
    assert main(["compare", str(flow[2].root), "--heads", "linear_sv"]) == 2
    assert "did you mean 'linear_svm'?" in capsys.readouterr().err


def test_batch_size_0_is_refused_and_layer_help_lists_predictions(capsys):
    with pytest.raises(SystemExit) as e:
        main(["featurize", "x", "--batch-size", "0"])
    assert e.value.code == 2 and "--batch-size must be an integer >= 1, got '0'" in capsys.readouterr().err
    with pytest.raises(UsageError, match="batch_size"):
        create_backbone("mobilenet_v2_quant", batch_size=0)
    with pytest.raises(SystemExit):
        main(["featurize", "-h"])
    assert "predictions" in " ".join(capsys.readouterr().out.split())


def test_v_shows_the_traceback_of_a_reported_error_too(tmp_path, capsys):
    # README: a one-line reason on stderr, `-v` shows the traceback; the exit status stays the same
    args = ["train", str(tmp_path / "nowhere"), "--out", str(tmp_path / "m.head.npz")]
    assert main(args) == 2  # a missing path is bad usage (issue 29)
    err = capsys.readouterr().err
    assert "Traceback" not in err and err.startswith("error: ") and "does not exist" in err
    assert main(["-v", *args]) == 2
    err = capsys.readouterr().err
    assert "Traceback (most recent call last)" in err
    assert err.splitlines()[-1].startswith("error: ") and "does not exist" in err.splitlines()[-1]


# --- noise and silence ---

@pytest.mark.slow
def test_featurize_into_a_log_is_quiet_whole_lines_and_v_shows_the_runtime(flow, tmp_path):
    _, data, _, _ = flow
    r = run_cli("featurize", data, "--out", tmp_path / "s")
    assert r.returncode == 0, r.stderr
    assert "\r" not in r.stderr and "XNNPACK" not in r.stderr
    lines = r.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("featurize mobilenet_v2_quant: 8/8 img in ")
    r = run_cli("-v", "featurize", data, "--out", tmp_path / "v", "--no-progress")
    assert r.returncode == 0 and "XNNPACK delegate" in r.stderr  # what the default run keeps off the log


TF_NOTICES = ("absl::InitializeLog", "Could not find cuda drivers", "cuInit", "oneDNN")

# `pipeline export` in a fresh process, with import_tensorflow wrapped to record whether TensorFlow was still
# unimported at its first call (then it is the call that imports TensorFlow): one TensorFlow import serves both
# tests below, instead of one subprocess each (about 10 s apiece)
_EXPORT_RECORDING_THE_FIRST_IMPORT = """
import os, runpy, sys
import pipeline.backbones.graph as graph
real, calls = graph.import_tensorflow, []
def import_tensorflow():
    if not calls:
        calls.append(1)
        with open(os.environ["FIRST_TF_IMPORT"], "w") as f:
            f.write(str("tensorflow" not in sys.modules))
    return real()
graph.import_tensorflow = import_tensorflow
sys.argv[0] = "pipeline"
runpy.run_module("pipeline", run_name="__main__")
"""


@pytest.fixture(scope="module")
def fresh_export(flow, tmp_path_factory):
    """(CompletedProcess, the .tflite written, whether import_tensorflow's first call imported TensorFlow)."""
    _, _, _, model = flow
    tmp = tmp_path_factory.mktemp("fresh_export")
    out, first = tmp / "m.tflite", tmp / "first_import.txt"
    r = subprocess.run([sys.executable, "-c", _EXPORT_RECORDING_THE_FIRST_IMPORT, "export", str(model), "--format",
                        "tflite", "--out", str(out)], cwd=REPO, capture_output=True, text=True, timeout=300,
                       env={**os.environ, "FIRST_TF_IMPORT": str(first)})
    return r, out, first.read_text() if first.exists() else None


@pytest.mark.slow
def test_tensorflow_import_notices_are_kept_off_stderr(fresh_export):
    # import_tensorflow() importing TensorFlow in a fresh process (export's first step): nothing on stderr
    r, _, first_import = fresh_export
    assert r.returncode == 0, r.stderr
    assert first_import == "True", "import_tensorflow was not called, or TensorFlow was imported before it"
    for notice in TF_NOTICES:
        assert notice not in r.stderr


@pytest.mark.slow
def test_export_keeps_tensorflow_import_notices_off_stderr(fresh_export):
    # export is the first command to import TensorFlow in its process: its CUDA probing stays off stderr
    r, out, _ = fresh_export
    assert r.returncode == 0, r.stderr
    assert out.is_file()
    for notice in TF_NOTICES:
        assert notice not in r.stderr


def test_runtime_notices_are_split_from_what_else_was_written():
    from pipeline.logs import split_notices

    data = (b"\rfeaturize x:   0%|          | 0/20INFO: Created TensorFlow Lite XNNPACK delegate for CPU.\n"
            b"a real problem\n"
            b"I0000 00:00:1795613397.377284    6003 cudart_stub.cc:31] Could not find cuda drivers on your "
            b"machine, GPU will not be used.\n")
    kept, notices = split_notices(data)
    assert kept == b"\rfeaturize x:   0%|          | 0/20a real problem\n"
    assert notices[0] == "INFO: Created TensorFlow Lite XNNPACK delegate for CPU." and len(notices) == 2


def test_line_progress_writes_a_line_per_tenth_at_most_every_few_seconds():
    import io

    from pipeline.progress import LineProgress

    out, now = io.StringIO(), [0.0]
    with LineProgress(1000, "featurize m", file=out, clock=lambda: now[0]) as bar:
        for _ in range(1000):
            now[0] += 0.1  # 100 s in all
            bar.update(1)
    lines = out.getvalue().splitlines()
    assert 5 <= len(lines) <= 11 and lines[-1].startswith("featurize m: 1000/1000 img in 1 min 40 s")
    assert "(10%)" in lines[0] and "\r" not in out.getvalue()


def test_compare_announces_each_step(flow, capsys):
    _, _, store, _ = flow
    assert main(["compare", str(store.root), "--heads", "linear_svm,logreg", "--C", "1", "--folds", "2"]) == 0
    err = capsys.readouterr().err.splitlines()
    assert err[0].startswith("[1/2] linear_svm on ") and err[-1].startswith("[2/2] logreg on ")
    assert "accuracy" in err[-1] and len(err) == 4


# --- the HTML report ---

def test_uncertain_gallery_holds_only_images_below_the_threshold_and_says_so(tmp_path):
    from pipeline.training.evaluation import classification_metrics
    from pipeline.reports.report import UNCERTAIN_BELOW, Predictions, gallery_indices, write_report

    p = np.array([0.997, 0.55, 0.9, 0.7, 0.6])
    proba = np.c_[p, 1 - p]
    y = np.array(["a", "a", "a", "b", "a"])
    assert gallery_indices(y, proba, ["a", "b"])["uncertain"] == [1, 4, 3]  # smallest margin first
    paths = [f"img{i}.jpg" for i in range(5)]
    page = write_report(tmp_path / "r", classification_metrics(y, proba, ["a", "b"]), Predictions(y, proba, paths),
                        title="t", extra={"features": "x" * 400})
    html = page.read_text(encoding="utf-8")
    section = html.split('<section id="uncertain">')[1].split("</section>")[0]
    assert f"top probability below {UNCERTAIN_BELOW:g}: 3 of 5" in section and "margin: 0.100" in section
    assert "img0.jpg" not in section and "img2.jpg" not in section
    assert '<table class="summary">' in html and "overflow-wrap:anywhere" in html


def test_screenshot_trims_the_empty_bottom_of_a_tall_capture(tmp_path):
    from PIL import Image

    from pipeline.reports.screenshot import MARGIN, trim_bottom

    px = np.full((3000, 200, 3), 255, np.uint8)
    px[100:1200, 20:180] = (30, 60, 200)  # the page ends at row 1199
    Image.fromarray(px).save(tmp_path / "s.png")
    assert trim_bottom(tmp_path / "s.png") == (200, 1200 + MARGIN)
    assert Image.open(tmp_path / "s.png").size == (200, 1200 + MARGIN)


def test_screenshot_captures_a_page_taller_than_any_fixed_window(tmp_path):
    import shutil

    from PIL import Image

    from pipeline.reports.screenshot import screenshot

    if shutil.which("chromium") is None:
        pytest.skip("chromium is not installed (Debian: apt-get install chromium)")
    (tmp_path / "index.html").write_text('<!DOCTYPE html><html><body style="margin:0">'
                                         '<div style="height:5000px"></div>'
                                         '<div style="height:100px;background:#c00"></div></body></html>')
    out, height = screenshot(tmp_path)
    px = np.asarray(Image.open(out).convert("RGB"))
    assert 5100 <= height <= 5200 and px.shape[0] == height
    assert tuple(px[5050, 10]) == (204, 0, 0)  # the block at the very end of the page is in the picture
