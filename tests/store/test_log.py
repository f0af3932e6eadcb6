"""The commit log's block lines (an import's batches as columns): they read back as the rows they hold, mix with
per-row lines (stores written before blocks existed keep working), and any damage to one is refused by line."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from pipeline.errors import StoreError
from pipeline.store import FeatureStore, open_writer, verify
from pipeline.store.duplicates import duplicate_groups
from pipeline.store.log import RowBlock, _line_crc

REQ = {"backbone": "imported", "source": "f.parquet", "sha256": "0" * 64}
OLD_STORE = Path(__file__).parent / "data" / "import-store-2"  # made by import-features before block lines


def block(start, n, label="c"):
    return RowBlock([f"r/{i}" for i in range(start, start + n)], [label if i % 3 else None for i in range(n)],
                    [f"{i:064x}" for i in range(start, start + n)])


def feats(start, n, d=3):
    return np.arange(start, start + n, dtype=np.float32)[:, None].repeat(d, 1)


def block_store(root, sizes=(4, 3), d=3, close=True):
    w = open_writer(root, REQ)
    w.set_spec(dict(REQ, dim=d))
    at = 0
    for n in sizes:
        w.append_block(feats(at, n, d), block(at, n))
        at += n
    return w.close() if close else w.abort()


def test_a_block_is_one_log_line_and_reads_back_as_its_rows(tmp_path):
    store = block_store(tmp_path / "s")
    lines = [json.loads(x) for x in (tmp_path / "s" / "rows.jsonl").read_text().splitlines()]
    assert [(r["block"], r["i"]) for r in lines] == [(4, 0), (3, 4)] and all(r["crc"] == _line_crc(r) for r in lines)
    assert len(store) == 7 and store.classes == ["c"]  # known without reading the log back
    again = FeatureStore.open(tmp_path / "s")
    assert again.paths == [f"r/{i}" for i in range(7)] and again.sha256 == [f"{i:064x}" for i in range(7)]
    assert list(again.labels) == [None, "c", "c", None, None, "c", "c"]
    assert again.features[:, 0].tolist() == list(range(7)) and verify(tmp_path / "s") == []
    assert json.loads((tmp_path / "s" / "meta.json").read_text())["rows"] == 7


def test_a_store_written_before_block_lines_reads_and_takes_blocks_and_rows_after_it(tmp_path):
    """The checked-in store was written by import-features with one line per row (format store-2 as it was)."""
    shutil.copytree(OLD_STORE, tmp_path / "old")
    old = FeatureStore.open(tmp_path / "old")
    assert old.paths == ["a/1.jpg", "a/2.jpg", "b/é 3.jpg", "b/4.jpg", "5"] and verify(tmp_path / "old") == []
    assert list(old.labels) == ["cat", "cat", "dog", None, "dog"]
    np.testing.assert_array_equal(old.features, np.arange(15, dtype=np.float32).reshape(5, 3) / 4)
    w = open_writer(tmp_path / "old", {**old.spec})
    w.append_block(np.ones((2, 3), np.float32), RowBlock(["n/1", "n/2"], ["cat", None], ["a" * 64, "b" * 64]))
    w.append(np.full((1, 3), 2, np.float32), [{"path": "a/1.jpg", "label": "dog", "sha256": "c" * 64}])  # replaces
    store = w.close()
    assert len(store) == 7 and FeatureStore.open(tmp_path / "old").paths == ["a/2.jpg", "b/é 3.jpg", "b/4.jpg", "5",
                                                                            "n/1", "n/2", "a/1.jpg"]
    assert FeatureStore.open(tmp_path / "old").features[-3:, 0].tolist() == [1, 1, 2] and verify(tmp_path / "old") == []


def test_a_block_repeating_a_path_supersedes_it_or_is_refused_with_new_paths(tmp_path):
    from pipeline.store.writer import RepeatedPath

    w = open_writer(tmp_path / "s", REQ)
    w.set_spec(dict(REQ, dim=3))
    w.append_block(feats(0, 3), block(0, 3))
    with pytest.raises(RepeatedPath, match="'r/1'"):
        w.append_block(feats(9, 2), RowBlock(["r/9", "r/1"], [None, None], ["0" * 64] * 2), new_paths=True)
    w.append_block(feats(9, 2), RowBlock(["r/9", "r/1"], [None, None], ["0" * 64] * 2))
    store = w.close()
    assert len(store) == 4 and store.paths == ["r/0", "r/2", "r/9", "r/1"]
    assert json.loads((tmp_path / "s" / "meta.json").read_text())["rows"] == 4


@pytest.mark.parametrize("damage, words", [
    ("edit a label", "line 2 (rows 4 to 6, a block) was edited after it was written"),
    ("drop a column value", "line 2 is a block of rows whose columns are not 3 values each"),
    ("empty path", "line 2, row 4 of the block, is not a row"),
    ("move the first row", "line 2 is row 5, not row 4"),
])
def test_damage_inside_a_block_line_is_refused_by_verify_and_every_read(tmp_path, damage, words):
    block_store(tmp_path / "s")
    log = tmp_path / "s" / "rows.jsonl"
    lines = [json.loads(x) for x in log.read_text().splitlines()]
    b = lines[1]
    if damage == "edit a label":
        b["label"][1] = "other"
    else:
        {"drop a column value": lambda: b["sha256"].pop(),
         "empty path": lambda: b["path"].__setitem__(0, ""),
         "move the first row": lambda: b.update(i=5)}[damage]()
        b["crc"] = _line_crc(b)  # a careful forger: the checksum is right, the content is not
    log.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in lines))
    problems = verify(tmp_path / "s")
    assert problems and words in problems[0], problems
    with pytest.raises(StoreError, match="featurize again with --overwrite.*import-features again with --overwrite"):
        FeatureStore.open(tmp_path / "s")


def test_a_block_line_cut_short_by_a_kill_is_not_committed_and_the_next_writer_trims_it(tmp_path):
    block_store(tmp_path / "s", close=False)  # killed: its two parts are not merged yet
    log = tmp_path / "s" / "rows.jsonl"
    text = log.read_bytes()
    log.write_bytes(text[:-40])  # killed while appending the second block: its part is there, its line is not
    assert "ends with a partial line" in verify(tmp_path / "s")[0]
    assert len(FeatureStore.open(tmp_path / "s")) == 4
    w = open_writer(tmp_path / "s", REQ)
    w.append_block(feats(100, 2), block(100, 2))
    w.close()
    store = FeatureStore.open(tmp_path / "s")
    assert store.paths == [f"r/{i}" for i in (0, 1, 2, 3, 100, 101)] and verify(tmp_path / "s") == []
    assert store.features[:, 0].tolist() == [0, 1, 2, 3, 100, 101]


def test_prune_and_duplicates_work_on_block_rows(tmp_path):
    block_store(tmp_path / "s")
    assert duplicate_groups(FeatureStore.open(tmp_path / "s").rows) == []
    w = open_writer(tmp_path / "s", REQ)
    w.append_block(feats(0, 1), RowBlock(["copy"], [None], [f"{2:064x}"]))  # the same content as r/2
    assert w.prune({"r/1", "r/2", "copy"}) == 5
    w.close()
    store = FeatureStore.open(tmp_path / "s")
    assert store.paths == ["r/1", "r/2", "copy"] and store.features[:, 0].tolist() == [1, 2, 0]
    assert duplicate_groups(store.rows) == [["copy", "r/2"]] and verify(tmp_path / "s") == []
