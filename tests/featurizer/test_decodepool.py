"""The process decode pool gives what the thread path gives: same pixels (bit for bit), errors, order, cache hits."""
from __future__ import annotations

import io
import os

import numpy as np
import pytest
from conftest import img_bytes, noise_image, pipeline_cmd
from PIL import Image

from pipeline.dataset.listing import list_images
from pipeline.errors import ImageError, UsageError
from pipeline.featurizer.decodepool import DecodePool, choose_decode
from pipeline.featurizer.prepare import prepare as _prepare
from pipeline.preprocess import Preprocess

PRE = Preprocess(size=(40, 40), scaling="tf")
NOTHING_KNOWN = {"rows": {}, "bad": {}}


def _folder(root):
    """Good images of several kinds, interleaved with bad files, flat (unlabelled)."""
    root.mkdir()
    for i in range(9):
        noise_image(i, (120 + 7 * i, 90)).save(root / f"a{i:02d}.jpg", quality=90)
    noise_image(20, (1600, 1200)).save(root / "b_big.jpg", quality=85)  # decoded at reduced scale (draft)
    rotated = noise_image(21, (60, 40))
    exif = rotated.getexif()
    exif[0x0112] = 6
    rotated.save(root / "c_rotated.jpg", exif=exif)
    Image.new("RGBA", (50, 30), (255, 0, 0, 0)).save(root / "d_alpha.png")
    Image.fromarray(np.arange(64 * 48, dtype=np.uint16).reshape(48, 64) * 20).save(root / "e_16bit.png")
    noise_image(22, (64, 64)).save(root / "f_vanishing.jpg")
    full = img_bytes(size=(200, 150), color=(10, 200, 30))
    (root / "g_header_only.jpg").write_bytes(full[: len(full) // 2])
    buf = io.BytesIO()
    noise_image(23, (200, 150)).save(buf, "JPEG", quality=90)
    (root / "h_truncated.jpg").write_bytes(buf.getvalue()[: len(buf.getvalue()) * 2 // 3])
    records = list_images(root, labelled=False).records
    (root / "f_vanishing.jpg").unlink()  # gone between the listing and the read
    return records


class _Decoder:
    preprocess, per_image = PRE, False


def _same(a, b):
    (ra, sha_a, stat_a, res_a, notes_a), (rb, sha_b, stat_b, res_b, notes_b) = a, b
    assert ra == rb and sha_a == sha_b and stat_a == stat_b and notes_a == notes_b
    if isinstance(res_a, ImageError):
        assert isinstance(res_b, ImageError)
        assert (res_a.path, res_a.reason, res_a.detail) == (res_b.path, res_b.reason, res_b.detail)
    else:
        assert res_b.dtype == np.uint8 and np.array_equal(res_a, res_b)  # bit-identical pixels


def test_process_pool_equals_the_thread_path_file_by_file(tmp_path):
    records = _folder(tmp_path / "imgs")
    expected = [_prepare(r, _Decoder(), NOTHING_KNOWN) for r in records]
    # a ring of 4 slots for 16 files: slots are reused many times, results must stay in order
    got = list(DecodePool(PRE, workers=2, window=4, chunk=2).map(records, NOTHING_KNOWN))
    assert len(got) == len(expected) == 16
    for a, b in zip(expected, got):
        _same(a, b)
    reasons = {r.relpath: res.reason for r, _, _, res, _ in got if isinstance(res, ImageError)}
    assert reasons == {"f_vanishing.jpg": "io_error:FileNotFoundError", "g_header_only.jpg": "unreadable",
                       "h_truncated.jpg": "truncated"}


def test_files_known_by_stat_start_no_worker(tmp_path, monkeypatch):
    records = [r for r in _folder(tmp_path / "imgs") if r.path.exists()]
    first = [_prepare(r, _Decoder(), NOTHING_KNOWN) for r in records]
    known = {"rows": {r.relpath: (sha, stat, r.label) for r, sha, stat, res, _ in first if not isinstance(res, ImageError)},
             "bad": {r.relpath: {"path": r.relpath, "reason": res.reason, "detail": res.detail, "stat": stat}
                     for r, sha, stat, res, _ in first if isinstance(res, ImageError)}}

    def no_workers(*a, **k):
        raise AssertionError("a fully cached run must not start decode processes")

    import concurrent.futures  # what decodepool imports the executor from, when it starts workers

    monkeypatch.setattr(concurrent.futures, "ProcessPoolExecutor", no_workers)
    got = list(DecodePool(PRE, workers=2, window=4).map(records, known))
    assert [g[0] for g in got] == records
    assert sum(g[3] is None for g in got) == 13  # reused
    assert [g[3].reason for g in got if isinstance(g[3], ImageError)] == ["unreadable", "truncated"]


def test_changed_file_among_cached_ones_is_decoded_in_order(tmp_path):
    records = _folder(tmp_path / "imgs")
    first = [_prepare(r, _Decoder(), NOTHING_KNOWN) for r in records]
    known = {"rows": {r.relpath: (sha, stat, r.label) for r, sha, stat, res, _ in first if not isinstance(res, ImageError)},
             "bad": {}}
    noise_image(99, (80, 80)).save(records[3].path, quality=90)  # rewritten: new content
    got = list(DecodePool(PRE, workers=2, window=4, chunk=2).map(records, known))
    assert [g[0] for g in got] == records
    _same(_prepare(records[3], _Decoder(), NOTHING_KNOWN), got[3])
    assert got[2][3] is None and got[4][3] is None  # neighbours reused


def test_a_worker_hashes_a_moved_file_and_returns_it_undecoded_for_the_reader_to_copy(tmp_path):
    """A worker is handed the store's contents once (32-byte digests), not the store: a file whose content a row
    of the store or a --reuse-from store holds comes back undecoded (prepare.HELD), and the pool names the row
    that holds it, as the thread path does. A content nobody holds is decoded as before."""
    from pipeline.featurizer.prepare import Copy

    imgs = tmp_path / "imgs"
    records = [r for r in _folder(imgs) if r.path.exists()]
    first = [_prepare(r, _Decoder(), NOTHING_KNOWN) for r in records if r.relpath.startswith("a")]
    known = {"rows": {r.relpath: (sha, stat, r.label) for r, sha, stat, _, _ in first}, "bad": {},
             "by_sha": {sha: r.relpath for r, sha, _, _, _ in first}, "other": {}}
    (imgs / "a00.jpg").rename(imgs / "z_moved.jpg")
    noise_image(50, (70, 50)).save(imgs / "y_elsewhere.jpg")  # held by a --reuse-from store (index 0)
    noise_image(51, (70, 50)).save(imgs / "x_new.jpg")
    records = {r.relpath: r for r in list_images(imgs, labelled=False).records}
    known["other"][_prepare(records["y_elsewhere.jpg"], _Decoder(), NOTHING_KNOWN)[1]] = 0
    got = {item[0].relpath: item for item in DecodePool(PRE, workers=2, window=4, chunk=2).map(records.values(), known)}
    assert got["z_moved.jpg"][3] == Copy("a00.jpg")  # not pixels: not decoded
    assert got["y_elsewhere.jpg"][3] == Copy(None, 0)
    threads = {r: _prepare(records[r], _Decoder(), known)[3] for r in ("z_moved.jpg", "y_elsewhere.jpg")}
    assert threads == {r: got[r][3] for r in threads}
    assert got["x_new.jpg"][3].dtype == np.uint8  # nobody holds it: decoded
    _same(_prepare(records["x_new.jpg"], _Decoder(), NOTHING_KNOWN), got["x_new.jpg"])
    assert all(got[p][3] is None for p in ("a01.jpg", "a08.jpg"))  # unchanged: answered by stat, unread


def test_choice_of_decode_mode():
    assert choose_decode("auto", per_image=False, cores=2) == "thread"  # measured faster on 2 cores
    assert choose_decode("auto", per_image=False, cores=16) == "process"
    assert choose_decode("process", per_image=True, cores=16) == "thread"  # TFLite featurizes in its threads
    with pytest.raises(UsageError, match="unknown decode mode 'fork'; choose one of auto, thread, process"):
        choose_decode("fork", per_image=False)


@pytest.fixture(scope="module")
def saved_model(tiny_saved_model) -> str:
    """The tiny test CNN as a SavedModel (conftest: exported once per test process; read only by the tests)."""
    return tiny_saved_model


@pytest.mark.slow
def test_featurize_with_process_decode_equals_thread_decode(tmp_path, saved_model):
    from models_for_tests import SIZE

    import pipeline

    model = saved_model
    records = _folder(tmp_path / "imgs")
    stores = {}
    for mode in ("thread", "process"):
        run = pipeline.featurize(tmp_path / "imgs", model, "penultimate", out=tmp_path / mode, input_size=SIZE,
                                 scaling="tf", decode=mode, workers=2, progress=False, report=True)
        stores[mode] = run
    t, p = stores["thread"], stores["process"]
    assert p.store.paths == t.store.paths and len(p.store.paths) == len(records) - 3
    np.testing.assert_array_equal(p.store.features, t.store.features)
    assert [(s["path"], s["reason"]) for s in p.skipped] == [(s["path"], s["reason"]) for s in t.skipped]
    again = pipeline.featurize(tmp_path / "imgs", model, "penultimate", out=tmp_path / "process", input_size=SIZE,
                               scaling="tf", decode="process", progress=False, report=True)
    assert again.computed == 0 and again.reused == len(records) - 3 and len(again.skipped) == 2  # the vanished file is no longer listed
    # a renamed file, hashed by a worker and found in the contents it was handed: copied, not featurized
    (tmp_path / "imgs" / "a00.jpg").rename(tmp_path / "imgs" / "z_renamed.jpg")
    moved = pipeline.featurize(tmp_path / "imgs", model, "penultimate", out=tmp_path / "process", input_size=SIZE,
                               scaling="tf", decode="process", workers=2, prune=True, progress=False, report=True)
    assert (moved.computed, len(moved.copied), moved.pruned) == (0, 1, 1)
    rows = dict(zip(moved.store.paths, moved.store.features))
    np.testing.assert_array_equal(rows["z_renamed.jpg"], dict(zip(t.store.paths, t.store.features))["a00.jpg"])


def test_ring_fits_in_the_shared_memory_there_is(tmp_path):
    from pipeline.featurizer.decodepool import _fit_to_shm

    assert _fit_to_shm(512, 100, str(tmp_path)) == 512  # plenty of room
    assert _fit_to_shm(512, 1 << 40, str(tmp_path / "absent")) == 512  # no such folder: no limit known
    st = os.statvfs(tmp_path)
    assert _fit_to_shm(512, st.f_bavail * st.f_frsize // 9, str(tmp_path)) == 4  # half the free space: 4 images
    with pytest.raises(Exception, match="too little for decoding in processes; use --decode thread"):
        _fit_to_shm(512, 1 << 50, str(tmp_path))


def _shm_names() -> set:
    try:
        return {n for n in os.listdir("/dev/shm") if n.startswith("psm_")}
    except OSError:
        return set()


@pytest.mark.slow
def test_sigkill_with_process_decode_resumes_and_leaves_no_shared_memory(tmp_path, capsys, saved_model):
    import signal
    import subprocess
    import time

    from models_for_tests import SIZE

    import pipeline
    from pipeline.cli import main

    model = saved_model
    data = tmp_path / "data"
    data.mkdir()
    n = 500  # commits every 0.1 s (pipeline_cmd): the first lands while the workers still have most to decode
    for i in range(50):
        noise_image(i, (320, 240)).save(data / f"{i:04d}.jpg")
    for i in range(50, n):
        (data / f"{i:04d}.jpg").write_bytes((data / f"{i % 50:04d}.jpg").read_bytes())
    args = ["featurize", str(data), "--backbone", model, "--input-size", str(SIZE), "--scaling", "tf",
            "--out", str(tmp_path / "store"), "--batch-size", "4", "--decode", "process", "--workers", "2",
            "--no-progress", "--layer", "penultimate"]  # one store: the rows counted are the rows reused
    cmd = pipeline_cmd(*args)
    before = _shm_names()
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    rows, deadline = tmp_path / "store" / "rows.jsonl", time.time() + 180
    during = set()
    while time.time() < deadline and proc.poll() is None:
        during = _shm_names() - before
        if during and rows.exists() and rows.read_bytes().count(b"\n") >= 40:
            break
        time.sleep(0.005)
    proc.send_signal(signal.SIGKILL)
    assert during, "the run's ring of decoded images should be in /dev/shm"
    proc.wait()
    partial = pipeline.FeatureStore.open(tmp_path / "store")
    assert 40 <= len(partial) < n, "the run was not interrupted mid-way"
    capsys.readouterr()
    assert main(args) == 0  # the resumed run: in this process (only the killed one needs a process of its own)
    # the rows committed are reused, and so is every other file of the same content (10 copies of each image)
    new = (50 - len(set(partial.sha256))) * 10
    assert f"{new} featurized, {n - new} reused" in capsys.readouterr().out
    clean = pipeline.featurize(data, model, "penultimate", out=tmp_path / "clean", input_size=SIZE, scaling="tf",
                               decode="thread", progress=False)
    store = pipeline.FeatureStore.open(tmp_path / "store")
    order = np.argsort(store.paths)
    assert sorted(store.paths) == clean.paths
    np.testing.assert_array_equal(store.features[order], clean.features)
    deadline = time.time() + 30  # the killed run's ring is unlinked by multiprocessing's resource tracker
    while time.time() < deadline and during & _shm_names():
        time.sleep(0.2)
    assert not during & _shm_names(), "the killed run left its shared memory behind"
