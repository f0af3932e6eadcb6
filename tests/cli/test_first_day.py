"""A user's first day, second pass (issue 29): Kaggle rows for every id, the spec-mismatch line, hints that
name only the command's flags, cached runs, and each fact reported once. The command line in a fresh
process, as a user runs it, on the bundled TFLite model and tiny folders built here."""
from __future__ import annotations

import csv
import os
import re
import shutil
import subprocess
import sys

import pytest
from conftest import REPO, make_class_tree, noise_image

import pipeline
from pipeline.cli.commands import build_parser


def run_cli(*args, cwd=REPO) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "pipeline", *map(str, args)], cwd=cwd, capture_output=True,
                          text=True, timeout=300, env=dict(os.environ))


@pytest.fixture(scope="module")
def day(tmp_path_factory):
    """A head trained on 6 red and 2 blue images (prior of red: 0.75), and a Kaggle test folder of 8 ids,
    3 of them unreadable."""
    root = tmp_path_factory.mktemp("firstday")
    photos = make_class_tree(root / "photos", per_class=2)
    for i in range(2, 6):
        noise_image(500 + i, base=(230, 30, 30)).save(photos / "red" / f"red_{i}.jpg")
    store = pipeline.featurize(photos, out=root / "feat", progress=False)
    head = pipeline.train(store, head="logreg", C=1.0).save(root / "m.head.npz")
    test = root / "test"
    test.mkdir()
    for i in range(1, 6):
        noise_image(600 + i, base=(230, 30, 30) if i % 2 else (30, 30, 230)).save(test / f"{i}.jpg")
    (test / "6.jpg").write_bytes(b"")
    (test / "7.jpg").write_bytes(b"<html>404</html>")
    (test / "8.jpg").write_bytes((test / "1.jpg").read_bytes()[:200])
    return root, photos, store, head, test


def rows(path):
    return list(csv.reader(open(path, encoding="utf-8")))


@pytest.mark.slow
def test_kaggle_mode_writes_every_id_unreadable_ones_with_the_clipped_prior(day, tmp_path):
    root, _, _, head, test = day
    out = tmp_path / "sub.csv"
    r = run_cli("score", head, test, "--out", out, "--kaggle", "red", "--clip", "0.3", "--cache", tmp_path / "c",
                "--no-progress")
    assert r.returncode == 0, r.stderr
    got = rows(out)
    assert got[0] == ["id", "label"] and [i for i, _ in got[1:]] == [str(i) for i in range(1, 9)]
    labels = dict(got[1:])
    assert labels["6"] == labels["7"] == labels["8"] == "0.700000"  # 6/8 red = 0.75, clipped to 1 - 0.3
    assert all(0.3 <= float(v) <= 0.7 for v in labels.values())
    for name in ("6.jpg", "7.jpg", "8.jpg"):  # a warning names each, once; the summary counts them
        assert r.stderr.count(name) == 1 and name not in r.stdout
    assert "holds the prior 0.700000 of 'red'" in r.stderr
    assert "kaggle: 3 unreadable image(s)" in r.stdout and "its share of the 8 training images" in r.stdout

    strict = run_cli("score", head, test, "--out", tmp_path / "strict.csv", "--kaggle", "red", "--cache",
                     tmp_path / "c", "--strict", "--no-progress")
    assert strict.returncode == 1 and not (tmp_path / "strict.csv").exists()
    assert "3 image(s) could not be used (--strict): 6.jpg (empty_file), 7.jpg (not_an_image), 8.jpg" in strict.stderr


def test_a_head_without_class_counts_gives_the_uniform_prior_and_says_so(day):
    from pipeline.scoring.batch import class_prior

    clf = pipeline.load(day[3])
    assert class_prior(clf, "red") == (0.75, "its share of the 8 training images")
    clf.metrics.pop("class_counts")
    p, source = class_prior(clf, "red")
    assert p == 0.5 and "does not record its training class counts" in source


@pytest.mark.slow
def test_skipped_files_are_reported_once_and_hints_name_only_scores_flags(day, tmp_path):
    root, _, _, head, test = day
    r = run_cli("score", head, test, "--out", tmp_path / "p.csv", "--cache", tmp_path / "c2", "--no-progress")
    assert r.returncode == 0, r.stderr
    for name in ("6.jpg", "7.jpg", "8.jpg"):
        assert (r.stdout + r.stderr).count(name) == 1
    assert "WARNING" not in r.stderr
    score_flags = {s for a in build_parser()._subparsers._group_actions[0].choices["score"]._actions
                   for s in a.option_strings}
    stages = next(line for line in r.stdout.splitlines() if line.startswith("stages:"))
    assert set(re.findall(r"--[a-z-]+", stages)) <= score_flags, stages
    gone = tmp_path / "test"  # an image removed since: its cached row is left out, with no advice to featurize
    shutil.copytree(test, gone)
    run_cli("score", head, gone, "--out", tmp_path / "p2.csv", "--cache", tmp_path / "c3", "--no-progress")
    (gone / "1.jpg").unlink()
    r = run_cli("score", head, gone, "--out", tmp_path / "p2.csv", "--cache", tmp_path / "c3", "--no-progress")
    assert r.returncode == 0 and "1 rows of the store are of files no longer in the folder" in r.stdout
    assert "--prune" not in r.stdout and [row[0] for row in rows(tmp_path / "p2.csv")[1:]] == ["2.jpg", "3.jpg", "4.jpg",
                                                                                             "5.jpg"]
    # a fully cached run: no rate, no bar, and no stages hint
    again = run_cli("featurize", day[1], "--out", day[2].root)
    assert again.returncode == 0, again.stderr
    assert again.stderr.strip() == "featurize mobilenet_v2_quant: all 8 images cached"


def test_labels_missing_from_a_csv_are_reported_once(tmp_path):
    data = make_class_tree(tmp_path / "imgs", per_class=2)
    labels = tmp_path / "labels.csv"
    labels.write_text("id,label\nred/red_0.jpg,red\nred/red_1.jpg,red\nblue/blue_0.jpg,blue\nghost.jpg,blue\n")
    r = run_cli("featurize", data, "--labels", labels, "--out", tmp_path / "s", "--no-progress")
    assert r.returncode == 0, r.stderr
    assert "1 images have no label in the CSV" in r.stdout and "1 labels in the CSV match no image" in r.stdout
    assert "no label" not in r.stderr and "match no image" not in r.stderr


def test_a_bad_layer_fails_before_any_progress_line(day, tmp_path):
    r = run_cli("featurize", day[1], "--layer", "penultimte", "--out", tmp_path / "x")
    assert r.returncode == 2
    assert r.stderr.startswith("error: ") and "img" not in r.stderr and "did you mean 'penultimate'?" in r.stderr


@pytest.mark.slow
def test_the_spec_mismatch_is_one_line_with_the_command_to_run_and_v_shows_both_specs(day, tmp_path):
    _, photos, _, head, _ = day
    pipeline.featurize(photos, layer="logits", out=tmp_path / "logits", progress=False)
    r = run_cli("evaluate", head, tmp_path / "logits")
    assert r.returncode == 1
    line = r.stderr.strip()
    assert "\n" not in line and len(line.replace(str(tmp_path), "").replace(str(photos), "")) < 320, line
    assert ("this head expects features of mobilenet_v2_quant, layer penultimate, 224x224 raw; "
            f"{tmp_path / 'logits'} holds mobilenet_v2_quant, layer logits") in line
    assert f"`python -m pipeline featurize {photos} --backbone mobilenet_v2_quant --layer penultimate`" in line
    assert "MobilenetV2/" not in line  # no tensor names
    v = run_cli("-v", "evaluate", head, tmp_path / "logits")
    assert v.returncode == 1 and "the head's features: mobilenet_v2_quant [tflite] layer=penultimate " \
                                 "(MobilenetV2/Logits/AvgPool, D=1280" in v.stderr


def test_hints_keep_only_the_advice_a_command_can_follow():
    from pipeline.hints import only_flags

    write = "writing the store limits the run: put --out on a faster local disk, or raise --batch-size"
    assert only_flags(write, {"--out", "--cache"}, {"--out": "--cache"}) == \
        "writing the store limits the run: put --cache on a faster local disk"
    cpu = ("the network limits the run on the CPU: try --precision bfloat16 (CPUs with AVX-512 BF16 or AMX), "
           "a smaller backbone, or a GPU")
    assert only_flags(cpu, {"--out"}) == "the network limits the run on the CPU: try a smaller backbone, or a GPU"
    assert only_flags(cpu, {"--precision"}) == cpu
    assert only_flags("decoding limits the run (2 workers on 4 cores): raise --workers to 4", set()) == \
        "decoding limits the run (2 workers on 4 cores)"


def test_progress_says_all_cached_and_stays_silent_when_a_run_fails_before_any_image():
    import io

    from pipeline.progress import LineProgress, TerminalProgress

    for kind in (LineProgress, TerminalProgress):
        out = io.StringIO()
        with kind(3, "featurize m", file=out) as bar:
            for _ in range(3):
                bar.update(1, cached=True)
        assert out.getvalue() == "featurize m: all 3 images cached\n", kind
        out = io.StringIO()
        with pytest.raises(ValueError), kind(3, "featurize m", file=out):
            raise ValueError("no tensor 'penultimte'")
        assert out.getvalue() == "", kind
    out = io.StringIO()
    with TerminalProgress(3, "featurize m", file=out) as bar:
        bar.update(1, cached=True)
        bar.update(2)  # the bar starts at the first image computed, counting the cached one
        assert bar.bar is not None and bar.bar.n == 3
    assert "cached" not in out.getvalue()
