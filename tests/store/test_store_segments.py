"""How a run's committed parts become segments: merged during long runs, adopted as they are at close."""
from __future__ import annotations

import numpy as np
import pytest

import pipeline.store.writer as writer_module
from pipeline.errors import StoreError
from pipeline.store import FeatureStore, open_writer, verify

REQ = {"backbone": "b", "kind": "tflite", "model": "sha-a", "weights": None, "layer": "penultimate",
       "preprocess": {"size": [224, 224]}, "source": {}}
SPEC = dict(REQ, tensor="t", dim=3)


def rows(start, n):
    return [{"path": f"c/{i}.jpg", "label": "c", "sha256": f"h{i}"} for i in range(start, start + n)]


def _write(root, sizes):
    w = open_writer(root, REQ)
    w.set_spec(SPEC)
    x = np.arange(3 * sum(sizes), dtype=np.float32).reshape(-1, 3)
    start = 0
    for n in sizes:
        w.append(x[start:start + n], rows(start, n))
        start += n
    return w, x


def test_big_parts_become_segments_at_close_without_rewriting(tmp_path, monkeypatch):
    monkeypatch.setattr(writer_module, "ADOPT_ROWS", 3)
    root = tmp_path / "s"
    w, x = _write(root, [3, 4, 3])
    part_inodes = sorted(f.stat().st_ino for f in (root / "parts").rglob("*.blp"))
    store = w.close()
    np.testing.assert_array_equal(store.features, x)
    assert len(list((root / "segments").iterdir())) == 3 and not list((root / "parts").iterdir())
    assert sorted(f.stat().st_ino for f in (root / "segments").rglob("*.blp")) == part_inodes  # linked, not copied
    assert verify(root) == []
    np.testing.assert_array_equal(FeatureStore.open(root).features, x)


def test_an_adopted_segment_keeps_its_checksums(tmp_path, monkeypatch):
    monkeypatch.setattr(writer_module, "ADOPT_ROWS", 3)
    root = tmp_path / "s"
    w, _ = _write(root, [3, 3])
    w.close()
    chunk = sorted((root / "segments").rglob("*.blp"))[0]
    data = bytearray(chunk.read_bytes())
    data[-1] ^= 0xFF
    chunk.write_bytes(bytes(data))
    with pytest.raises(StoreError, match="checksum"):
        FeatureStore.open(root).features


def test_small_parts_are_still_merged_into_one_segment(tmp_path):
    root = tmp_path / "s"
    w, x = _write(root, [2, 2, 1])
    np.testing.assert_array_equal(w.close().features, x)
    assert len(list((root / "segments").iterdir())) == 1


@pytest.mark.parametrize("given", [lambda b: b, memoryview], ids=["array", "memoryview"])
def test_a_short_run_merges_the_features_it_committed_without_reading_its_parts_back(tmp_path, monkeypatch, given):
    """Close writes the segment from the copies append kept: a caller reusing its batch buffer (given as an array
    or as a memoryview of it) changes nothing, and the parts are neither checked nor read again (a short run's
    close was mostly that)."""
    read_back = []
    monkeypatch.setattr(writer_module, "_read_piece", lambda *a: read_back.append(a) or pytest.fail("read back"))
    monkeypatch.setattr(writer_module, "_check_part", lambda *a: read_back.append(a) or pytest.fail("checked"))
    root = tmp_path / "s"
    w = open_writer(root, REQ)
    w.set_spec(SPEC)
    buf, want = np.empty((2, 3), np.float32), []
    for start in (0, 2, 4):  # one buffer for every batch: a caller may reuse its own
        buf[:] = np.arange(3 * start, 3 * start + 6, dtype=np.float32).reshape(2, 3)
        want.append(buf.copy())
        w.append(given(buf), rows(start, 2))
    buf[:] = -1
    np.testing.assert_array_equal(w.close().features, np.vstack(want))
    assert verify(root) == [] and read_back == []
    np.testing.assert_array_equal(FeatureStore.open(root).features, np.vstack(want))


@pytest.mark.parametrize("case", ["over the memory limit", "an earlier run's parts", "an import's block"])
def test_parts_not_held_in_memory_are_checked_and_read_back(tmp_path, monkeypatch, case):
    from pipeline.store.log import RowBlock

    root, reads, checks = tmp_path / "s", [], []
    real, real_check = writer_module._read_piece, writer_module._check_part
    monkeypatch.setattr(writer_module, "_read_piece", lambda *a: reads.append(a) or real(*a))
    monkeypatch.setattr(writer_module, "_check_part", lambda *a: checks.append(a) or real_check(*a))
    if case == "over the memory limit":
        monkeypatch.setattr(writer_module, "HELD_BYTES", 30)  # two batches of 2 x 3 float32 (24 bytes each): one
        w, x = _write(root, [2, 2])
    elif case == "an earlier run's parts":  # left by a killed run: merged by the next one, with its own rows
        w, x1 = _write(root, [2])
        w.abort()
        w = open_writer(root, REQ)
        x2 = np.full((2, 3), 7, np.float32)
        w.append(x2, rows(2, 2))
        x = np.vstack([x1, x2])
    else:
        w, x1 = _write(root, [2])
        x2 = np.full((2, 3), 7, np.float32)
        w.append_block(x2, RowBlock(["b/2.jpg", "b/3.jpg"], ["c", "c"], ["h2", "h3"]))
        x = np.vstack([x1, x2])
    np.testing.assert_array_equal(w.close().features, x)
    assert len(reads) == 2 and len(checks) >= 2 and verify(root) == []


def test_the_part_and_the_copy_kept_are_one_array(tmp_path, monkeypatch):
    """Even a buffer the caller changes while its batch is being committed: the part is written from the writer's
    own copy, so the part, the copy kept and the merged segment all hold what append was given."""
    real = writer_module._write_piece
    root, buf = tmp_path / "s", np.arange(6, dtype=np.float32).reshape(2, 3)

    def write_then_reuse(final, *a, **k):
        n = real(final, *a, **k)
        buf[:] = -1  # the caller's next batch arrives in the same buffer
        return n

    monkeypatch.setattr(writer_module, "_write_piece", write_then_reuse)
    w = open_writer(root, REQ)
    w.set_spec(SPEC)
    w.append(buf, rows(0, 2))
    np.testing.assert_array_equal(w.close().features, np.arange(6, dtype=np.float32).reshape(2, 3))
    assert verify(root) == []


def test_a_merge_that_failed_mid_run_is_done_again_from_the_parts(tmp_path, monkeypatch):
    """A segment write that raised (not an I/O error: the writer goes on) leaves every part in place; the next
    merge takes them all, read back, with the rows committed since."""
    monkeypatch.setattr(writer_module, "MERGE_ROWS", 4)
    real, calls = writer_module._write_piece, []

    def first_segment_fails(final, *a, **k):
        if final.parent.name == "segments" and not calls:
            calls.append(final)
            raise ValueError("a codec error")
        return real(final, *a, **k)

    monkeypatch.setattr(writer_module, "_write_piece", first_segment_fails)
    root = tmp_path / "s"
    w, x = _write(root, [2])
    with pytest.raises(ValueError):
        w.append(x[:2] + 100, rows(2, 2))  # committed, then the merge it made due fails
    assert w._held is None  # what was kept no longer covers the parts: the next merge reads them back
    w.append(x[:2] + 200, rows(4, 2))  # merges all six rows
    w.append(x[:2] + 300, rows(6, 2))
    want = np.vstack([x, x[:2] + 100, x[:2] + 200, x[:2] + 300])
    np.testing.assert_array_equal(w.close().features, want)
    assert calls and verify(root) == []
    np.testing.assert_array_equal(FeatureStore.open(root).features, want)


def test_a_part_gone_before_the_merge_is_refused_not_shifted(tmp_path):
    """Parts read back (an import's) hold fewer rows than the log lists: the merge refuses, naming the store,
    instead of writing a segment whose rows would no longer line up with the log."""
    import shutil

    from pipeline.store.log import RowBlock

    root = tmp_path / "s"
    w, _ = _write(root, [2])
    w.append_block(np.full((2, 3), 7, np.float32), RowBlock(["b/2.jpg", "b/3.jpg"], ["c", "c"], ["h2", "h3"]))
    shutil.rmtree(sorted((root / "parts").glob("*.bcolz"))[0])
    with pytest.raises(StoreError, match="hold 2 rows but the log lists 4.*--overwrite"):
        w.close()


def test_close_after_a_failed_log_append_keeps_only_the_committed_rows(tmp_path):
    """A full disk as the log is appended: the batch's part is in place but none of its rows is committed.
    Closing merges the committed parts only, and the store opens again with exactly those rows."""
    import errno

    class FullDisk:
        def __init__(self, f):
            self.f = f

        def write(self, data):
            raise OSError(errno.ENOSPC, "No space left on device")

        def __getattr__(self, name):
            return getattr(self.f, name)

    root = tmp_path / "s"
    w, x = _write(root, [2])
    w._rows_file = FullDisk(w._rows_file)
    with pytest.raises(StoreError, match="No space left"):
        w.append(x[:2] + 100, rows(2, 2))
    np.testing.assert_array_equal(w.close().features, x)
    store = FeatureStore.open(root)
    assert len(store) == 2 and verify(root) == []
    np.testing.assert_array_equal(store.features, x)


def test_long_runs_merge_their_parts_during_the_run(tmp_path, monkeypatch):
    monkeypatch.setattr(writer_module, "MERGE_ROWS", 4)
    root = tmp_path / "s"
    w, x = _write(root, [2, 2, 2, 1])
    assert len(list((root / "segments").iterdir())) == 1  # the first four rows, before close
    assert len(list((root / "parts").glob("*.bcolz"))) == 2
    np.testing.assert_array_equal(FeatureStore.open(root).features, x)  # readable mid-run
    np.testing.assert_array_equal(w.close().features, x)
    assert not list((root / "parts").iterdir())


@pytest.mark.parametrize("size", [1, 2, 3, 5, 64])
def test_feature_chunks_read_the_live_rows_piece_by_piece_equal_to_the_whole(tmp_path, monkeypatch, size):
    """Scoring a store larger than memory reads it a chunk at a time: across segments and parts, with
    superseded and withdrawn rows, the chunks are exactly the live rows' features, each at most `size`."""
    monkeypatch.setattr(writer_module, "ADOPT_ROWS", 3)
    root = tmp_path / "s"
    w, x = _write(root, [3, 4])
    w.close()  # two segments
    w = open_writer(root, REQ)
    w.set_spec(SPEC)
    w.append(np.full((2, 3), -1.0, np.float32), [rows(1, 1)[0], rows(5, 1)[0]])  # supersede rows 1 and 5
    w.remove({"c/3.jpg": "gone"})  # a part of uncommitted-to-segment rows, plus a withdrawal
    store = FeatureStore.open(root)  # reads segments and the open run's parts
    chunks = list(store.feature_chunks(size))
    assert all(0 < len(c) <= size for c in chunks)
    np.testing.assert_array_equal(np.concatenate(chunks), store.features)
    assert len(store) == 6 and store.paths == ["c/0.jpg", "c/2.jpg", "c/4.jpg", "c/6.jpg", "c/1.jpg", "c/5.jpg"]
    w.abort()


@pytest.mark.parametrize("new_rows", [0, 1])
def test_a_reader_follows_a_run_that_merges_the_parts_while_it_reads(tmp_path, new_rows):
    """A store open for reading while another run merges its parts into a segment (and removes the
    parts), with or without rows appended meanwhile: the reader still gets its rows' features,
    whole or in chunks, instead of calling the store damaged."""
    root = tmp_path / "s"
    w, x = _write(root, [3, 2])
    w.abort()  # committed parts left in place, as a running featurize has them
    readers = [FeatureStore.open(root) for _ in range(3)]
    chunks = readers[2].feature_chunks(2)
    first = next(chunks)  # one chunk read before the merge, the rest after
    w = open_writer(root, REQ)
    w.append(np.full((new_rows, 3), -1.0, np.float32), rows(5, new_rows))
    w.close()
    assert not list((root / "parts").iterdir())
    np.testing.assert_array_equal(readers[0].features, x)
    np.testing.assert_array_equal(np.concatenate(list(readers[1].feature_chunks(2))), x)
    np.testing.assert_array_equal(np.concatenate([first, *chunks]), x)


def test_copied_rows_take_their_sources_features_in_one_pass_over_the_pieces(tmp_path, monkeypatch):
    """copy_rows (a relabelled or moved file keeps its content's features): many copies, some of one source,
    one from a path this run rewrote since (its old row is the one of that content), across segments and
    parts, committed a few rows at a time with merges due meanwhile: each copy holds its source's features,
    and each piece is checked once (one pass, not one per block)."""
    import pipeline.store.reader as reader_module

    monkeypatch.setattr(writer_module, "COPY_ROWS", 3)
    monkeypatch.setattr(writer_module, "MERGE_ROWS", 4)
    x = np.arange(40, dtype=np.float32)[:, None] * [1.0, -1.0, 0.5]
    w = open_writer(tmp_path / "s", REQ)
    w.set_spec(dict(REQ, tensor="t", dim=3))
    for start in range(0, 20, 5):
        w.append(x[start:start + 5], rows(start, 5))
    w.close()
    w = open_writer(tmp_path / "s", REQ)
    w.append(x[20:22], [*rows(20, 1), {"path": "c/3.jpg", "label": "c", "sha256": "new"}])  # c/3.jpg rewritten
    sources = [f"c/{i}.jpg" for i in (17, 3, 0, 17, 9, 12, 1, 20, 5)]
    shas = [f"h{i}" for i in (17, 3, 0, 17, 9, 12, 1, 20, 5)]
    copies = [{"path": f"moved/{k}.jpg", "label": "d", "sha256": sha} for k, sha in enumerate(shas)]
    checked = []
    real = reader_module._check_manifest
    monkeypatch.setattr(reader_module, "_check_manifest", lambda folder, m: (checked.append(folder.name), real(folder, m)))
    w.copy_rows(copies, sources)
    assert len(checked) == len(set(checked))  # every piece read once
    store = w.close()
    got = dict(zip(store.paths, store.features))
    for k, i in enumerate((17, 3, 0, 17, 9, 12, 1, 20, 5)):
        np.testing.assert_array_equal(got[f"moved/{k}.jpg"], x[i])  # c/3.jpg's old content, not its new row
    np.testing.assert_array_equal(got["c/3.jpg"], x[21])
    assert verify(tmp_path / "s") == []
