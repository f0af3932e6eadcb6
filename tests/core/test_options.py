"""Settings objects (pipeline/options.py): the library takes them, old keywords still work, bad values
name the parameter, and the CLI declares each flag once from them and says the flag in errors."""
from __future__ import annotations

import numpy as np
import pytest
from conftest import make_class_tree

import pipeline
from pipeline.cli.arguments import as_flags, from_args
from pipeline.cli.commands import _command_parsers, build_parser, main
from pipeline.engines import check_options
from pipeline.errors import UsageError
from pipeline.options import BackboneOptions, FeaturizeOptions, HeadOptions, ScoreOptions, SplitOptions


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    return make_class_tree(tmp_path_factory.mktemp("options") / "data", per_class=6)


# the settings object form and the keyword form give the same store, row for row
def test_featurize_takes_settings_objects_like_keywords(folder, tmp_path):
    by_keywords = pipeline.featurize(folder, "mobilenet_v2_quant", "penultimate", out=tmp_path / "k",
                                     batch_size=4, sample=4, progress=False)
    by_objects = pipeline.featurize(folder, BackboneOptions("mobilenet_v2_quant", batch_size=4),
                                    out=tmp_path / "o", options=FeaturizeOptions(sample=4, progress=False))
    assert by_objects.paths == by_keywords.paths and len(by_objects) == 8
    np.testing.assert_array_equal(by_objects.features, by_keywords.features)
    assert by_objects.spec == by_keywords.spec


# a keyword overrides the same field of the settings object it is given with
def test_keywords_override_the_options_object(folder, tmp_path):
    run = pipeline.featurize(folder, out=tmp_path / "s", options=FeaturizeOptions(sample=2, progress=False),
                             sample=3, report=True)
    assert run.computed == 6  # 3 per class, not 2


def test_unknown_keyword_is_a_type_error_naming_it(folder, tmp_path):
    with pytest.raises(TypeError, match="featurize\\(\\) got an unexpected keyword argument 'batchsize'"):
        pipeline.featurize(folder, out=tmp_path / "x", batchsize=4)
    assert not (tmp_path / "x").exists()


# library errors name the parameter and the value, before any work is done
@pytest.mark.parametrize("make, message", [
    (lambda: BackboneOptions(batch_size=0), r"batch_size=0 must be an integer >= 1"),
    (lambda: FeaturizeOptions(workers=0), r"workers=0 must be an integer >= 1"),
    (lambda: FeaturizeOptions(decode="fork"), r"decode='fork' is not one of 'auto', 'thread', 'process'"),
    (lambda: FeaturizeOptions(multi_label=True), r"multi_label=True reads several labels .* labels=FILE.csv"),
    (lambda: check_options(FeaturizeOptions(engine="ray", workers=2)), r"workers= sets decoding threads of engine=local"),
    (lambda: check_options(FeaturizeOptions(cluster="somewhere")), r"cluster= applies to engine=ray"),
    (lambda: HeadOptions(folds=1), r"folds=1 must be 'loo' or an integer >= 2"),
    (lambda: HeadOptions(C=-1.0), r"C=-1.0 must be a positive number"),
    (lambda: SplitOptions(holdout=1.5), r"holdout=1.5 must be a fraction in \[0, 1\)"),
])
def test_bad_settings_name_the_parameter(make, message):
    with pytest.raises(UsageError, match=message):
        make()


def test_featurize_refuses_a_bad_keyword_value_naming_the_parameter(folder, tmp_path):
    with pytest.raises(UsageError, match="batch_size=0"):
        pipeline.featurize(folder, out=tmp_path / "b", batch_size=0, progress=False)
    assert not (tmp_path / "b").exists()
    with pytest.raises(UsageError, match="workers= sets decoding threads of engine=local"):  # the engine's check
        pipeline.featurize(folder, out=tmp_path / "r", engine="ray", workers=2, progress=False)
    assert not (tmp_path / "r").exists()


# train: HeadOptions and SplitOptions, or the keywords they replace, fit the same head
def test_train_takes_head_and_split_options(folder, tmp_path):
    store = pipeline.featurize(folder, out=tmp_path / "f", progress=False)
    a = pipeline.train(store, head="logreg", C=1.0, folds=2, holdout=0.25, split="stratified")
    b = pipeline.train(store, HeadOptions("logreg", C=1.0, folds=2), SplitOptions(holdout=0.25, split="stratified"))
    assert a.metrics["validation"]["n"] == b.metrics["validation"]["n"] == 4
    paths = [str(p) for p in sorted(folder.rglob("*")) if p.is_file()][:3]
    np.testing.assert_allclose(a.predict_proba(paths), b.predict_proba(paths))


# the CLI builds the same objects from its flags
def test_flags_parse_into_the_settings_objects():
    args = build_parser().parse_args(["featurize", "data", "--backbone", "resnet50", "--batch-size", "8",
                                      "--precision", "bfloat16", "--unlabelled", "--no-follow-links",
                                      "--sample", "0.5", "--workers", "3", "--no-progress"])
    assert from_args(BackboneOptions, args) == BackboneOptions("resnet50", batch_size=8, precision="bfloat16")
    assert from_args(FeaturizeOptions, args) == FeaturizeOptions(labelled=False, follow_links=False, sample=0.5,
                                                                 workers=3, progress=False)
    train = build_parser().parse_args(["train", "f", "--out", "h", "--head", "svm", "--C", "0.5", "--folds", "loo",
                                       "--seed", "3", "--holdout", "0.2", "--group-by", "^[a-z]+"])
    assert from_args(HeadOptions, train) == HeadOptions("svm", C=0.5, folds="loo", seed=3)
    assert from_args(SplitOptions, train) == SplitOptions(holdout=0.2, group_by="^[a-z]+", seed=3)


# the same --head/--C/--folds declaration serves train and suspects (suspects defaults to logreg)
def test_head_flags_are_shared_between_commands():
    p = build_parser()
    train, suspects = _command_parsers(p, "train")[0], _command_parsers(p, "suspects")[0]
    flag = {a.dest: a for a in train._actions}, {a.dest: a for a in suspects._actions}
    for dest in ("head", "C", "folds"):
        assert flag[0][dest].option_strings == flag[1][dest].option_strings
        assert flag[0][dest].choices == flag[1][dest].choices
    assert flag[0]["head"].default == "auto" and flag[1]["head"].default == "logreg"


# on the command line, an error speaks of the flags the user typed
@pytest.mark.parametrize("library, cli", [
    ("batch_size=0 must be an integer >= 1", "--batch-size 0 must be an integer >= 1"),
    ("out= must contain {layer}, e.g. out=features/x-{layer}",
     "--out must contain {layer}, e.g. --out features/x-{layer}"),
    ("give another out= (or overwrite=True to replace it)", "give another --out (or --overwrite to replace it)"),
    ("links are not read with follow_links=False", "links are not read with --no-follow-links"),
    ("multi_label=True reads several labels: give labels=FILE.csv",
     "--multi-label reads several labels: give --labels FILE.csv"),
    ("featurize with labelled=False", "featurize with --unlabelled"),
    ("/tmp/my_out=1/x is missing", "/tmp/my_out=1/x is missing"),  # not a parameter: left alone
])
def test_cli_translates_parameter_names_to_flags(library, cli):
    assert as_flags(library, *_command_parsers(build_parser(), "featurize")) == cli


# a train error suggesting to featurize with labels= names featurize's flag; the command's own flag comes first
def test_translation_falls_back_to_other_commands_flags():
    parsers = _command_parsers(build_parser(), "train")
    got = as_flags("featurize again, or give labels=FILE.csv", *parsers)
    assert got == "featurize again, or give --labels FILE.csv"
    assert as_flags("replace it: force=True", *parsers) == "replace it: --force"


def test_cli_error_names_the_flag(folder, tmp_path, capsys):
    assert main(["featurize", str(folder), "--out", str(tmp_path / "s"), "--engine", "ray", "--decode", "thread",
                 "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert "--decode chooses threads or processes of --engine local" in err and "decode=" not in err


# score: a ScoreOptions and a FeaturizeOptions, or the keywords, write the same CSV
def test_score_takes_settings_objects_like_keywords(folder, tmp_path):
    clf = pipeline.train(pipeline.featurize(folder, out=tmp_path / "f", progress=False), head="logreg", C=1.0)
    pipeline.score(clf, folder, tmp_path / "k.csv", cache=tmp_path / "c", kaggle="red", clip=0.05, progress=False)
    pipeline.score(clf, folder, tmp_path / "o.csv", ScoreOptions(cache=tmp_path / "c", kaggle="red", clip=0.05),
                   featurize_options=FeaturizeOptions(progress=False))
    assert (tmp_path / "o.csv").read_text() == (tmp_path / "k.csv").read_text()
    with pytest.raises(TypeError, match="unexpected keyword argument 'sample'"):  # featurize's, not score's
        pipeline.score(clf, folder, tmp_path / "s.csv", sample=2)
    with pytest.raises(UsageError, match="cache= and no_cache=True exclude each other"):
        pipeline.score(clf, folder, tmp_path / "n.csv", cache=tmp_path / "c", no_cache=True)
    with pytest.raises(UsageError, match="workers= sets decoding threads of engine=local"):  # the engine's check
        pipeline.score(clf, folder, tmp_path / "w.csv", engine="ray", workers=2)
    assert not any((tmp_path / f"{name}.csv").exists() for name in "snw")


# the choices the settings check without importing heavy modules are those the library accepts
def test_settings_choices_match_the_library():
    from pipeline import backbones, engines, options
    from pipeline.dataset import splits
    from pipeline.featurizer import decodepool
    from pipeline.heads import kinds

    assert options.HEADS == tuple(kinds.KINDS) == kinds.NAMES  # the same names, in the same order
    assert options.DEFAULT_BACKBONE == backbones.DEFAULT_BACKBONE
    assert options.SPLITS == splits.SPLIT_METHODS and options.DECODE_CHOICES == decodepool.DECODE_CHOICES
    assert options.ENGINES == tuple(engines.REGISTRY)
