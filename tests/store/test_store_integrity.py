"""A store never hands out a row with another row's features: damaged logs and parts are refused, by line."""
from __future__ import annotations

import errno
import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from pipeline.cli import main
from pipeline.errors import StoreError
from pipeline.store import FeatureStore, open_writer, verify, write_report

REQ = {"backbone": "b", "kind": "tflite", "model": "sha-a", "weights": None, "layer": "penultimate",
       "preprocess": {"size": [224, 224]}, "source": {}}


def rows(start, n, label="c"):
    return [{"path": f"c/{i}.jpg", "label": label, "sha256": f"{i:064x}"} for i in range(start, start + n)]


def make_store(root, n=6, dim=4, batches=2):
    w = open_writer(root, REQ)
    w.set_spec(dict(REQ, tensor="t", dim=dim))
    per = n // batches
    for b in range(batches):
        w.append(np.arange(b * per, (b + 1) * per, dtype=np.float32)[:, None].repeat(dim, 1), rows(b * per, per))
    return w


def test_every_log_line_carries_its_index_and_checksum(tmp_path):
    make_store(tmp_path / "s").close()
    lines = [json.loads(x) for x in (tmp_path / "s" / "rows.jsonl").read_text().splitlines()]
    assert [r["i"] for r in lines] == list(range(6)) and all(len(r["crc"]) == 16 for r in lines)
    store = FeatureStore.open(tmp_path / "s")
    assert "i" not in store.rows[0] and "crc" not in store.rows[0]  # the rows callers see are unchanged
    assert store.features[:, 0].tolist() == [0, 1, 2, 3, 4, 5]


@pytest.mark.parametrize("damage, words", [
    ("drop_first", "line 1 is row 1, not row 0"),
    ("drop_last", "lines were removed"),
    ("swap", "line 1 is row 1, not row 0"),
    ("duplicate", "line 3 is row 1, not row 2"),
])
def test_lost_added_or_moved_log_line_is_refused_naming_the_line(tmp_path, damage, words):
    # `sed -i 1d rows.jsonl` used to shift every row onto the next image's features, and verify said OK
    make_store(tmp_path / "s").close()
    log = tmp_path / "s" / "rows.jsonl"
    lines = log.read_text().splitlines(keepends=True)
    lines = {"drop_first": lines[1:], "drop_last": lines[:-1], "swap": [lines[1], lines[0], *lines[2:]],
             "duplicate": [*lines[:2], lines[1], *lines[2:]]}[damage]
    log.write_text("".join(lines))
    with pytest.raises(StoreError, match=words):
        FeatureStore.open(tmp_path / "s").features
    problems = verify(tmp_path / "s")
    assert problems and words in problems[0]


def test_an_edited_label_is_refused_naming_the_line_and_the_file(tmp_path, capsys):
    make_store(tmp_path / "s").close()
    log = tmp_path / "s" / "rows.jsonl"
    log.write_text(log.read_text().replace('"label": "c", "sha256": "' + f"{3:064x}", '"label": "d", "sha256": "'
                                           + f"{3:064x}"))
    assert main(["verify", str(tmp_path / "s")]) == 1
    err = capsys.readouterr().err
    assert "line 4" in err and "c/3.jpg" in err and "edited" in err


def test_garbage_line_names_the_file_and_line_and_featurize_refuses_to_build_on_it(tmp_path, class_tree):
    make_store(tmp_path / "s").close()
    log = tmp_path / "s" / "rows.jsonl"
    lines = log.read_text().splitlines(keepends=True)
    lines[2] = "}}garbage{{\n"
    log.write_text("".join(lines))
    with pytest.raises(StoreError, match=r"rows.jsonl line 3 is not valid JSON"):
        FeatureStore.open(tmp_path / "s")
    with pytest.raises(StoreError, match="line 3"):
        open_writer(tmp_path / "s", REQ)


def test_flipped_bytes_in_a_killed_runs_part_are_refused_not_merged_and_rechecksummed(tmp_path):
    w = make_store(tmp_path / "s")
    w.abort()  # killed: two committed parts, never merged into a segment
    part = sorted((tmp_path / "s" / "parts").glob("*.bcolz"))[1]
    data = sorted(part.rglob("__*.blp"))[0]
    raw = bytearray(data.read_bytes())
    raw[-3] ^= 0xFF
    data.write_bytes(bytes(raw))
    assert any("does not match its checksum" in p for p in verify(tmp_path / "s"))
    with pytest.raises(StoreError, match="does not match its checksum"):
        open_writer(tmp_path / "s", REQ)  # the resume must not merge it into a freshly checksummed segment


def test_a_planted_temp_file_link_is_not_followed(tmp_path):
    root = tmp_path / "s"
    w = make_store(root)
    victim = tmp_path / "victim.txt"
    victim.write_text("precious")
    (root / "meta.json.tmp").symlink_to(victim)
    (root / "report.json.tmp").symlink_to(victim)
    w.close()  # rewrites meta.json
    write_report(root, {"complete": True})
    assert victim.read_text() == "precious"
    with pytest.raises(StoreError, match="meta.json.tmp is a symbolic link"):  # and the store is refused (D04)
        FeatureStore.open(root)


def test_removed_rows_withdraw_a_path_and_prune_compacts_them(tmp_path):
    w = make_store(tmp_path / "s")
    w.remove({"c/1.jpg": "truncated", "c/nope.jpg": "truncated"})  # only paths with a row are withdrawn
    store = w.close()
    assert "c/1.jpg" not in store.paths and len(store) == 5
    assert store.features[:, 0].tolist() == [0, 2, 3, 4, 5]
    assert verify(tmp_path / "s") == []


def test_featurize_out_refuses_a_folder_that_is_not_a_store_with_or_without_overwrite(tmp_path, class_tree):
    mine = tmp_path / "myfolder"
    for name in ("parts", "segments"):
        (mine / name).mkdir(parents=True)
        (mine / name / "keep.txt").write_text("mine")
    (mine / "report.json").write_text("my report")
    (mine / "rows.jsonl").write_text("my rows")
    before = sorted(p.relative_to(mine).as_posix() for p in mine.rglob("*"))
    for extra in ([], ["--overwrite"]):
        assert main(["featurize", str(class_tree), "--out", str(mine), "--no-progress", *extra]) == 1
    assert sorted(p.relative_to(mine).as_posix() for p in mine.rglob("*")) == before
    assert (mine / "report.json").read_text() == "my report"


def test_a_failed_first_run_leaves_no_store_behind(tmp_path, class_tree, capsys):
    out = tmp_path / "store"
    assert main(["featurize", str(class_tree), "--layer", "no_such_layer", "--out", str(out), "--no-progress"]) != 0
    assert not out.exists()


def test_empty_store_is_not_called_ok(tmp_path):
    w = open_writer(tmp_path / "s", REQ)
    w.close()
    assert "empty and unusable" in verify(tmp_path / "s")[0]


def test_store_written_before_line_checksums_still_reads(tmp_path):
    make_store(tmp_path / "s").close()
    log = tmp_path / "s" / "rows.jsonl"
    legacy = [json.loads(x) for x in log.read_text().splitlines()]
    log.write_text("".join(json.dumps({k: v for k, v in r.items() if k not in ("i", "crc")}) + "\n" for r in legacy))
    assert FeatureStore.open(tmp_path / "s").features[:, 0].tolist() == [0, 1, 2, 3, 4, 5]
    w = open_writer(tmp_path / "s", REQ)  # appending to an old log keeps it readable
    w.append(np.full((1, 4), 9, np.float32), rows(6, 1))
    assert FeatureStore.open(w.close().root).features[:, 0].tolist() == [0, 1, 2, 3, 4, 5, 9]
    shutil.rmtree(tmp_path / "s")


@pytest.mark.parametrize("damage", ["log deleted", "segment deleted", "chunk file deleted"])
def test_featurize_refuses_to_build_on_a_store_whose_log_or_segments_are_gone(tmp_path, damage):
    """RELIABILITY B03/B06: with its rows.jsonl or a segment's files gone, featurize reused or appended rows
    and exited 0 (a deleted log even got 6 new lines over 6 orphaned feature rows), leaving the damage for
    train to find. Opening the store to write refuses it, naming the file, with the fix."""
    make_store(tmp_path / "s").close()
    seg = next((tmp_path / "s" / "segments").iterdir())
    if damage == "log deleted":
        (tmp_path / "s" / "rows.jsonl").unlink()
    elif damage == "segment deleted":
        shutil.rmtree(seg)
    else:
        next(seg.rglob("__0.blp")).unlink()
    expected = {"log deleted": "lists 0 rows but the store's segments hold 6", "segment deleted": f"{seg.name} is "
                "missing", "chunk file deleted": "__0.blp is missing or changed"}[damage]
    with pytest.raises(StoreError, match=f"{expected}.*featurize again with --overwrite"):
        open_writer(tmp_path / "s", REQ)
    open_writer(tmp_path / "s", REQ, overwrite=True).close()  # the fix it names works


class _FullDisk:
    """A commit log whose second write stops after 10 bytes: the disk is full (errno ENOSPC)."""

    def __init__(self, f):
        self.f, self.writes = f, 0

    def write(self, data):
        self.writes += 1
        if self.writes == 2:
            self.f.write(data[:10])
            raise OSError(errno.ENOSPC, "No space left on device")
        return self.f.write(data)

    def __getattr__(self, name):
        return getattr(self.f, name)


@pytest.mark.parametrize("where", ["part", "log"])
def test_a_full_disk_during_featurize_names_the_file_and_what_to_do_and_the_next_run_resumes(
        tmp_path, class_tree, monkeypatch, capsys, where):
    """B09, E-ERR: disk full while featurizing said `OSError: [Errno 28]` with no path. Now the message names
    the file being written, says to free space or choose another --out, and the rows committed before it
    are kept: the same command run again featurizes only the rest."""
    from pipeline.featurizer.committer import Committer
    from pipeline.store import writer as writer_module

    monkeypatch.setattr(Committer, "COMMIT_EVERY_S", 0.0)  # one commit per batch of 4
    if where == "part":
        real, calls = writer_module._write_piece, []

        def full(final, *args, **kwargs):
            calls.append(final)
            if len(calls) == 2:
                raise OSError(errno.ENOSPC, "No space left on device")
            return real(final, *args, **kwargs)

        monkeypatch.setattr(writer_module, "_write_piece", full)
    else:
        real_open = writer_module.open_append
        monkeypatch.setattr(writer_module, "open_append", lambda path: _FullDisk(real_open(path)))
    out = tmp_path / "s"
    argv = ["featurize", str(class_tree), "--out", str(out), "--backbone", "mobilenet_v2_quant", "--layer", "penultimate",
            "--batch-size", "4",
            "--no-progress"]
    assert main(argv) == 1
    err = capsys.readouterr().err
    at = out / "parts" / f"{4:012d}.bcolz" if where == "part" else out / "rows.jsonl"
    assert f"could not write {at}: No space left on device (ENOSPC)" in err, err
    assert "free space on it, or choose another --out" in err and "run the same command again" in err
    assert "Traceback" not in err
    assert len(FeatureStore.open(out)) == 4  # the first commit is kept
    monkeypatch.undo()
    assert main(argv) == 0
    store = FeatureStore.open(out)
    assert len(store) == 12 and not verify(out)
    assert store.report["featurized"] == 8


def test_log_lines_built_directly_read_back_as_the_encoder_would_write_them():
    """B06: the lines of flat rows (an import's) are built without the JSON encoder; they must be the bytes
    the encoder writes, checksums included, for any text (quotes, backslashes, control characters, non-ASCII)."""
    import random

    from pipeline.store.log import _line_crc, _log_lines, _parse_line

    rng = random.Random(0)
    alphabet = ["a", "é", '"', "\\", "\n", "\t", "\x00", "\u2028", "😀", "/", " ", "{", "}", ",", ":"]

    def text():
        return "".join(rng.choice(alphabet) for _ in range(rng.randint(0, 12)))

    rows = [{"path": text(), "label": rng.choice([None, text()]), "sha256": f"{i:064x}",
             **({"stat": {"size": 5, "mtime": 1.5}} if i % 5 == 0 else {}), **({"n": -i} if i % 7 == 0 else {})}
            for i in range(500)]
    lines = _log_lines(rows, 3).decode("utf-8").split("\n")[:-1]
    assert len(lines) == len(rows)
    for n, (line, row) in enumerate(zip(lines, rows)):
        parsed = json.loads(line)
        assert parsed["crc"] == _line_crc(parsed) and _parse_line(Path("rows.jsonl"), n + 3, line, True) == [row]
        assert line == json.dumps(parsed, ensure_ascii=False)
