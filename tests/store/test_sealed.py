"""A store is a closed folder: the names its meta.json gives never lead outside it, and no link inside it is
followed, by any command (D04: cache files as an attack vector; D05/D06: names that climb out of their
folder, links; A30: a link pointing outside). Each attack is built here, then every command is run on it."""
from __future__ import annotations

import json
import os
import shutil

import pytest
from conftest import make_class_tree

from pipeline.cli import main
from pipeline.errors import StoreError
from pipeline.store import FeatureStore, verify
from pipeline.store.pieces import _open_piece

BACKBONE = ["--backbone", "mobilenet_v2_quant", "--no-progress"]


@pytest.fixture(scope="module")
def made(tmp_path_factory):
    root = tmp_path_factory.mktemp("sealed")
    data = make_class_tree(root / "data", per_class=3)
    assert main(["featurize", str(data), "--out", str(root / "store"), *BACKBONE]) == 0
    assert main(["train", str(root / "store"), "--C", "1", "--head", "logreg", "--out", str(root / "m.head.npz")]) == 0
    return root, data


@pytest.fixture
def store(made, tmp_path):
    """A fresh copy of the featurized store, to be damaged."""
    shutil.copytree(made[0] / "store", tmp_path / "s", symlinks=True)
    return tmp_path / "s"


def _meta(store):
    return json.loads((store / "meta.json").read_text())


def _edit_meta(store, **changes):
    meta = _meta(store)
    meta.update(changes)
    (store / "meta.json").write_text(json.dumps(meta))


def _snapshot(folder):
    return {p.relative_to(folder).as_posix(): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def _every_command_refuses(made, store, tmp_path, capsys, words):
    """verify, train, score, evaluate, export-features and featurize (with --prune) all exit 1 naming `words`."""
    root, data = made
    head = str(root / "m.head.npz")
    runs = {"verify": ["verify", str(store)],
            "train": ["train", str(store), "--C", "1", "--out", str(tmp_path / "h.head.npz")],
            "score": ["score", head, str(store), "--out", str(tmp_path / "p.csv")],
            "evaluate": ["evaluate", head, str(store)],
            "export-features": ["export-features", str(store), "--out", str(tmp_path / "x.npz")],
            "featurize": ["featurize", str(data), "--out", str(store), "--prune", *BACKBONE]}
    for name, argv in runs.items():
        capsys.readouterr()
        assert main(argv) == 1, name
        err = capsys.readouterr().err
        assert all(w in err for w in words), (name, err)
    assert not (tmp_path / "p.csv").exists() and not (tmp_path / "h.head.npz").exists()


def test_a_segment_named_outside_the_store_is_refused_and_prune_deletes_nothing_outside(made, store, tmp_path, capsys):
    """The attack of issue 27: meta.json names its segment ../../victim/seg.bcolz, a valid float32 bcolz put
    there. verify said OK and featurize --prune deleted the folder outside the store."""
    seg = _meta(store)["segments"][0]
    victim = tmp_path / "victim"
    victim.mkdir()
    shutil.move(str(store / "segments" / seg["name"]), str(victim / "seg.bcolz"))
    _edit_meta(store, segments=[dict(seg, name="../../victim/seg.bcolz")])
    before = _snapshot(victim)
    _every_command_refuses(made, store, tmp_path, capsys, ["segment 0", "'../../victim/seg.bcolz'",
                                                           "not a plain name inside the store"])
    assert _snapshot(victim) == before


@pytest.mark.parametrize("key, value, entry", [
    ("segment", "/tmp/abs.bcolz", "segment 0"),
    ("segment", "..", "segment 0"),
    ("segment", "sub\\..\\..\\x.bcolz", "segment 0"),
    ("rows_file", "../rows.jsonl", "rows_file"),
    ("rows_file", "/etc/hostname", "rows_file"),
    ("file", "../../../outside", "file"),
])
def test_every_name_meta_json_gives_must_stay_inside_the_store(store, key, value, entry):
    """D05: separators, '..' and absolute paths in any name meta.json gives (segment, rows file, a segment's
    files) make the store damaged: opening and verify refuse it, naming the entry."""
    meta = _meta(store)
    if key == "segment":
        meta["segments"][0]["name"] = value
    elif key == "rows_file":
        meta["rows_file"] = value
    else:
        files = meta["segments"][0]["files"]
        files[value] = files.pop(min(files))
    (store / "meta.json").write_text(json.dumps(meta))
    with pytest.raises(StoreError, match="not a plain name inside the store") as e:
        FeatureStore.open(store).feature_chunks().__next__()
    assert entry in str(e.value) and repr(value) in str(e.value)
    problems = verify(store)
    assert len(problems) == 1 and entry in problems[0] and "meta.json" in problems[0]


def _outside_copy(path, tmp_path):
    """Move `path` out of the store and leave a symbolic link to it in its place; return the outside path."""
    outside = tmp_path / "outside" / path.name
    outside.parent.mkdir(exist_ok=True)
    shutil.move(str(path), str(outside))
    path.symlink_to(outside)
    return outside


@pytest.mark.parametrize("where", ["rows.jsonl", "meta.json", "report.json", "segments", "chunk"])
def test_a_link_inside_a_store_is_refused_by_every_command_and_nothing_outside_is_written(made, store, tmp_path,
                                                                                          capsys, where):
    """The attack of issue 27: rows.jsonl a link to a file outside; verify, train and score exited 0 and the
    next featurize appended 111 lines to the outside file. Now every command refuses the store, naming the
    link, and the outside file is untouched (A30, D04)."""
    target = (next((store / "segments").rglob("__0.blp")) if where == "chunk" else store / where)
    outside = _outside_copy(target, tmp_path)
    before = _snapshot(tmp_path / "outside")
    _every_command_refuses(made, store, tmp_path, capsys, [f"{target.name} is a symbolic link", str(outside)])
    assert _snapshot(tmp_path / "outside") == before
    assert os.path.islink(target)  # not removed either: the user decides


def test_verify_lists_every_link_and_special_file(store, tmp_path):
    for name in ("report.json", "skips.json"):
        _outside_copy(store / name, tmp_path) if (store / name).exists() else (store / name).symlink_to("/etc/hostname")
    os.mkfifo(store / "parts" / "pipe")
    problems = verify(store)
    assert len(problems) == 3
    assert "pipe is not a regular file or folder" in problems[0]
    assert "report.json is a symbolic link" in problems[1] and "skips.json is a symbolic link" in problems[2]


def test_a_log_with_a_second_name_outside_is_not_appended_to(made, store, tmp_path, capsys):
    """A hard link is no symbolic link, yet appending to it would change the outside file too."""
    outside = tmp_path / "outside.jsonl"
    os.link(store / "rows.jsonl", outside)
    before = outside.read_bytes()
    assert main(["featurize", str(made[1]), "--out", str(store), *BACKBONE]) == 1
    assert "rows.jsonl has another name" in capsys.readouterr().err
    assert outside.read_bytes() == before


def test_bcolz_is_never_handed_a_folder_holding_a_link(store, tmp_path):
    """bcolz opens its own files by name: the piece's folder is checked with lstat first, even when the
    link appears after the store was opened."""
    folder = store / "segments" / _meta(store)["segments"][0]["name"]
    opened = FeatureStore.open(store)
    _outside_copy(folder / "meta" / "sizes", tmp_path)
    with pytest.raises(StoreError, match="sizes is a symbolic link"):
        _open_piece(folder)
    with pytest.raises(StoreError, match="sizes is a symbolic link"):
        opened.feature_chunks().__next__()


@pytest.mark.parametrize("name", ["meta.json", "skips.json"])
def test_json_nested_100000_deep_is_refused_naming_the_file(made, store, tmp_path, capsys, name):
    """E-ERR: a meta.json (or skip cache) of 100,000 nested arrays raised RecursionError with no file named."""
    (store / name).write_text("[" * 100_000 + "]" * 100_000)
    argv = (["verify", str(store)] if name == "meta.json"
            else ["featurize", str(made[1]), "--out", str(store), *BACKBONE])
    assert main(argv) == 1
    err = capsys.readouterr().err
    assert str(store / name) in err and "nested too deep" in err and "RecursionError" not in err
