"""Misspelled commands, flags and choices (issue 29, item 5): the command's usage line and the closest match."""
from __future__ import annotations

import os
import subprocess
import sys

import pytest
from conftest import REPO

from pipeline.cli import main
from pipeline.cli.commands import build_parser
from pipeline.cli.parser import unrecognized


def run_cli(*args) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "pipeline", *map(str, args)], cwd=REPO, capture_output=True,
                          text=True, timeout=120, env=dict(os.environ))


def test_a_misspelled_flag_gets_the_commands_usage_and_the_closest_flag(tmp_path):
    r = run_cli("featurize", tmp_path, "--ouput", tmp_path / "x")
    assert r.returncode == 2 and r.stdout == ""
    assert r.stderr.startswith("usage: python -m pipeline featurize ")
    assert "--ouput: did you mean --out?" in r.stderr
    assert "predict-imagenet" not in r.stderr and "COMMAND" not in r.stderr  # not the usage of every command


def test_a_flag_is_taken_by_its_exact_name_only_and_a_prefix_gets_the_full_one(tmp_path, capsys):
    """argparse would take --lay for --layer (and --no for nothing, being ambiguous): a script written with a
    prefix breaks, or changes meaning, the day another flag shares it. Refused, naming the flag meant."""
    for given, meant in (("--lay", "--layer"), ("--ou", "--out"), ("--reuse", "--reuse-from")):
        with pytest.raises(SystemExit) as e:
            main(["featurize", str(tmp_path), given, "x"])
        assert e.value.code == 2
        assert f"{given}: did you mean {meant}?" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["train", str(tmp_path), "--out", "m.joblib", "--hea", "logreg"])  # every command's parser
    assert "--hea: did you mean --head?" in capsys.readouterr().err


def test_a_misspelled_command_gets_did_you_mean():
    r = run_cli("featurise", "photos")
    assert r.returncode == 2
    assert "unknown command 'featurise'; did you mean featurize?" in r.stderr
    assert r.stderr.startswith("usage: python -m pipeline featurize ")


def test_an_unknown_command_with_no_close_match_lists_the_commands(capsys):
    with pytest.raises(SystemExit) as e:
        main(["frobnicate"])
    err = capsys.readouterr().err
    assert e.value.code == 2 and "unknown command 'frobnicate'; the commands are featurize, " in err
    assert err.startswith("usage: python -m pipeline [-h] [-v] COMMAND ...")


def test_a_misspelled_choice_gets_the_closest_one(capsys):
    with pytest.raises(SystemExit) as e:
        main(["train", "store", "--out", "m.head.npz", "--head", "logrg"])
    err = capsys.readouterr().err
    assert e.value.code == 2 and "did you mean 'logreg'?" in err and err.startswith("usage: python -m pipeline train")


def test_a_flag_of_no_resemblance_says_so_and_a_stray_word_is_named():
    score = build_parser()._subparsers._group_actions[0].choices["score"]
    assert unrecognized(["--zzzzzz"], score) == ("unrecognized arguments: --zzzzzz (--zzzzzz: python -m pipeline "
                                                  "score has no such flag (-h lists them))")
    assert unrecognized(["extra.jpg"], score) == "unrecognized arguments: extra.jpg"
    assert "did you mean --strict?" in unrecognized(["--strikt"], score)  # score has --strict now (item 1)


def test_every_argument_of_every_command_says_what_it_is():
    # item 10: positional DATA_DIR / MODEL and --no-progress had no help text
    sub = build_parser()._subparsers._group_actions[0]
    missing = [f"{name} {a.dest}" for name, p in sub.choices.items() for a in p._actions
               if a.dest != "help" and not a.help]
    assert missing == []
