"""featurize/score --engine ray on a Ray cluster of two nodes on this machine (a head and a worker node, 1 CPU
each, started once for the module, this process its driver): the same store, report and CSV as in-process,
resumable after a SIGKILL of the driver, a backbone actor killed or a whole node lost mid-run, features taken from
another store (--reuse-from) as in-process, images read
through file:// and s3:// URIs.

The nodes and the driver use 127.0.0.1 only (tests/conftest.py sets RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0,
which makes Ray take the loopback address as each node's address, and Ray binds its servers to it); the first
Ray test checks the addresses and every listening socket of the cluster's processes.
One cluster for every test: starting one takes seconds, and two clusters at once on a 2-core machine (the
tests of this file ran on one, the two-node tests on another) slowed both."""
from __future__ import annotations

import hashlib
import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest
from conftest import (
    descendants_named,
    kill_once_committed,
    listening_addresses,
    make_class_tree,
    noise_class_tree,
    noise_image,
)

import pipeline
from pipeline import FeatureStore
from pipeline.cli import main
from pipeline.engines.ray import RayCluster, partition_bounds

ray = pytest.importorskip("ray", reason="the Ray engine needs ray[data]: pip install -e '.[ray]'")
cluster_utils = pytest.importorskip("ray.cluster_utils")
pytestmark = pytest.mark.slow  # a Ray cluster: seconds to start, seconds per run

ACTOR = "ray::MapWorker("  # a backbone actor of the Ray engine (on CPUs the decode tasks are fused into it)


@pytest.fixture(scope="module")
def two_nodes():
    """A Ray cluster of a head node and one worker node, 1 CPU each, started by this process for the whole
    module, with this process connected as its driver (the runs of the tests use that session)."""
    quick = {"health_check_period_ms": 500, "health_check_failure_threshold": 3}  # a lost node noticed in ~2 s
    cluster = cluster_utils.Cluster(initialize_head=True, head_node_args={"num_cpus": 1, "include_dashboard": False,
                                                                          "_system_config": quick})
    cluster.add_node(num_cpus=1)
    cluster.wait_for_nodes()
    ray.init(address=cluster.address, log_to_driver=False)
    yield cluster
    ray.shutdown()
    cluster.shutdown()


@pytest.fixture(scope="module")
def cluster(two_nodes):
    """The cluster's address (what --address takes)."""
    return two_nodes.address


def _folder(root: Path) -> Path:
    """Two classes of 5 images, a file that is not an image, one that is ignored, one hidden, a hidden folder."""
    data = make_class_tree(root / "data", per_class=5)
    (data / "red" / "broken.jpg").write_bytes(b"not a jpeg at all")
    (data / "blue" / "notes.txt").write_text("not an image")
    (data / "blue" / ".hidden.jpg").write_bytes(b"x")
    (data / "blue" / ".thumbnails").mkdir()
    (data / "blue" / ".thumbnails" / "t.jpg").write_bytes(b"x")  # a hidden folder is not walked
    return data


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    """`_folder`, built once for the module: the tests that read it do not change it."""
    return _folder(tmp_path_factory.mktemp("folder"))


@pytest.fixture(scope="module")
def local(folder, tmp_path_factory):
    """The in-process store of `folder`, featurized once for the module: what the Ray runs must equal."""
    return pipeline.featurize(folder, out=tmp_path_factory.mktemp("local") / "store", progress=False)


def _report(store) -> dict:
    r = json.loads((store.root / "report.json").read_text())
    r.pop("stages")  # busy seconds: not the same in two runs
    return r


def _worker_raylet(cluster) -> tuple[object, int]:
    """(the worker node, the PID of its raylet: the ancestor of the worker processes it starts)."""
    node = next(iter(cluster.worker_nodes))
    return node, node.all_processes["raylet"][0].process.pid


def _assert_same_store(store, local) -> None:
    assert store.rows == local.rows  # paths, labels, sha256 and stat, in the same order
    assert store.paths == local.paths and store.sha256 == local.sha256 and list(store.labels) == list(local.labels)
    np.testing.assert_allclose(store.features, local.features, rtol=1e-6, atol=1e-6)


def _watching_the_worker_node(two_nodes, run):
    """(run's result, the backbone actors seen on the worker node while it ran): `run` in a thread while this
    one looks for the actors under the worker node's raylet."""
    _, raylet = _worker_raylet(two_nodes)
    on_worker, result = set(), {}

    def drive():
        try:
            result["run"] = run()
        except BaseException as e:  # noqa: BLE001 - raised again below
            result["error"] = e

    driver = threading.Thread(target=drive)
    driver.start()
    # the actors live from the run's start to its end: 20 looks a second see them; each look is a walk of /proc
    # (CPU the run would miss), so the looking stops once one is seen on the worker node
    while driver.is_alive() and not on_worker:
        on_worker.update(descendants_named(ACTOR, raylet))
        time.sleep(0.05)
    driver.join()
    if "error" in result:
        raise result["error"]
    return result["run"], on_worker


def test_score_cache_of_a_uri_is_keyed_by_the_uri_not_the_working_directory(tmp_path, monkeypatch):
    from pipeline.backbones import create_backbone
    from pipeline.scoring.batch import score_cache_path

    request = create_backbone("mobilenet_v2_quant").request()
    first = score_cache_path("s3://bucket/photos/", request, tmp_path)
    monkeypatch.chdir(tmp_path)
    assert score_cache_path("s3://bucket/photos", request, tmp_path) == first
    assert first.name.startswith("photos-mobilenet_v2_quant-penultimate-")
    assert score_cache_path("gs://bucket/photos", request, tmp_path) != first


def test_the_command_lines_local_cluster_listens_on_loopback_only(monkeypatch):
    """`--engine ray` without --address starts a cluster of this machine alone: the command asks Ray for
    127.0.0.1 (the setting the two-node cluster below runs with, whose every listening socket is checked)
    while Ray is imported and started, and gives this process its environment back; joining a cluster, or
    Ray imported already (too late to matter), leaves the environment as it is."""
    import argparse

    from pipeline.engines.ray import LOOPBACK_ONLY, RayEngine, loopback_env

    monkeypatch.delenv(LOOPBACK_ONLY, raising=False)
    for address in (None, "local"):
        cluster = RayEngine.cluster_from_args(argparse.Namespace(address=address, partitions=None))
        with loopback_env(cluster, ray_imported=False):
            assert os.environ[LOOPBACK_ONLY] == "0"
        assert LOOPBACK_ONLY not in os.environ
    for cluster, imported in ((RayCluster("ray://head:10001", loopback=True), False),
                              (RayCluster(loopback=True), True), (RayCluster(), False)):
        with loopback_env(cluster, ray_imported=imported):
            assert LOOPBACK_ONLY not in os.environ


def test_a_new_local_cluster_is_sized_to_the_cores_this_process_may_use(monkeypatch):
    """Ray counts the machine's CPUs, not the affinity mask (taskset, a cpuset): the local cluster it starts
    gets the mask's count, so as many backbone actors as cores to run them; an address joins as given."""
    from pipeline.engines.ray import connected

    calls = []
    monkeypatch.setattr(ray, "is_initialized", lambda: False)
    monkeypatch.setattr(ray, "init", lambda **kw: calls.append(kw))
    monkeypatch.setattr(ray, "shutdown", lambda: None)
    monkeypatch.setattr("pipeline.engines.ray.usable_cores", lambda: 1)
    with connected(RayCluster()):
        pass
    with connected(RayCluster("ray://head:10001")):
        pass
    assert calls[0]["address"] == "local" and calls[0]["num_cpus"] == 1
    assert calls[1]["address"] == "ray://head:10001" and "num_cpus" not in calls[1]


def test_partitions_are_contiguous_deterministic_and_cover_the_listing():
    assert partition_bounds(10, 3) == [(0, 3), (3, 6), (6, 10)]
    assert partition_bounds(2, 5) == [(0, 1), (1, 2)]  # never an empty partition
    assert partition_bounds(2500, None) == [(0, 833), (833, 1666), (1666, 2500)]  # 1000 images each at most


@pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="finds Ray's processes through /proc (Linux)")
def test_two_nodes_write_the_local_store_row_for_row(two_nodes, cluster, tmp_path, monkeypatch):
    """engine="ray" on two nodes, a backbone actor on each, writes the store engine="local" writes, row for
    row; run again it recomputes nothing, and a touched or rewritten file is handled as in-process."""
    from pipeline.backbones.tflite import TFLiteBackbone

    assert two_nodes.address.startswith("127.0.0.1:") and all(
        n.node_ip_address == "127.0.0.1" for n in [two_nodes.head_node, *two_nodes.worker_nodes])
    # and every server of the cluster (GCS, raylets, workers, agents) listens there only
    listening = listening_addresses(descendants_named(""))
    assert listening and listening <= {"127.0.0.1", "::1"}, listening
    folder = _folder(tmp_path)  # its own copy: this test changes files in it
    local = pipeline.featurize(folder, out=tmp_path / "local", progress=False)
    with monkeypatch.context() as m:  # the network is built in the actors only, never on the driver
        m.setattr(TFLiteBackbone, "_load", lambda self: pytest.fail("the driver built the network"))
        # batches of 2: blocks enough for Ray Data to start the second actor (on the worker node) for 10 images
        run, on_worker = _watching_the_worker_node(two_nodes, lambda: pipeline.featurize(
            folder, out=tmp_path / "ray", batch_size=2, progress=False, report=True, engine="ray",
            cluster=RayCluster(partitions=3)))
    assert on_worker, "no backbone actor ran on the worker node"
    store = run.store
    _assert_same_store(store, local)  # paths, labels, sha256 and stat, in the same order
    # the default pass: the class scores beside it, as in-process
    scores, local_scores = (FeatureStore.open(tmp_path / f"{n}-predictions") for n in ("ray", "local"))
    assert scores.rows == local_scores.rows and scores.spec == local_scores.spec
    np.testing.assert_allclose(scores.features, local_scores.features, rtol=1e-6, atol=1e-6)
    assert store.meta["layers"] == {"penultimate": ".", "predictions": "../ray-predictions"}
    assert _report(store) == _report(local)
    assert [s["path"] for s in run.skipped] == ["red/broken.jpg"] and run.skipped[0]["reason"] == "not_an_image"
    assert len(list((tmp_path / "ray" / "segments").iterdir())) == 1  # the partitions' parts merged at the end
    with monkeypatch.context() as m:  # nothing to read: the driver settles the run without the cluster
        m.setattr("pipeline.engines.ray.connected", lambda cluster: pytest.fail("the cluster was asked"))
        again = pipeline.featurize(folder, out=tmp_path / "ray", progress=False, report=True, engine="ray",
                                   cluster=RayCluster(partitions=3))
    assert (again.computed, again.reused, len(again.store)) == (0, 10, 10)  # nothing recomputed
    assert again.skipped[0]["path"] == "red/broken.jpg"

    # a touched file keeps its row, a rewritten one gets a new row, one moved to the other class folder (a new
    # path and label) takes its content's features, hashed on the cluster but not featurized, and a new file
    # whose content another store holds takes that store's features (--reuse-from): as in-process
    st = (folder / "red" / "red_0.jpg").stat()
    os.utime(folder / "red" / "red_0.jpg", ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))
    noise_image(999, (80, 60), (230, 30, 30)).save(folder / "red" / "red_1.jpg")
    (folder / "blue" / "blue_2.jpg").rename(folder / "red" / "was_blue_2.jpg")
    elsewhere = tmp_path / "elsewhere" / "blue"
    elsewhere.mkdir(parents=True)
    noise_image(998, (80, 60), (30, 30, 230)).save(elsewhere / "b.jpg")
    pipeline.featurize(elsewhere.parent, out=tmp_path / "other", progress=False)  # the default pass, as this one
    (folder / "blue" / "from_elsewhere.jpg").write_bytes((elsewhere / "b.jpg").read_bytes())
    changed = pipeline.featurize(folder, out=tmp_path / "ray", progress=False, report=True, engine="ray",
                                 cluster=RayCluster(partitions=3), reuse_from=tmp_path / "other")
    local_changed = pipeline.featurize(folder, out=tmp_path / "local", progress=False, report=True,
                                       reuse_from=tmp_path / "other")
    assert (changed.computed, changed.reused) == (local_changed.computed, local_changed.reused) == (1, 10)
    assert [row for row, _ in changed.copied] == [row for row, _ in local_changed.copied]
    assert [(row["path"], row["label"], source) for row, source in changed.copied] == [
        ("red/was_blue_2.jpg", "red", "blue/blue_2.jpg")]
    assert changed.taken == local_changed.taken and [row["path"] for row, _ in changed.taken] == [
        "blue/from_elsewhere.jpg"]
    assert changed.store.rows == local_changed.store.rows
    np.testing.assert_allclose(changed.store.features, local_changed.store.features, rtol=1e-6, atol=1e-6)
    moved = changed.store.paths.index("red/was_blue_2.jpg")
    np.testing.assert_array_equal(changed.store.features[moved], store.features[store.paths.index("blue/blue_2.jpg")])


def test_images_through_a_file_uri_and_score_on_ray(cluster, folder, local, tmp_path, capsys):
    """A file:// URI featurized from the command line, then scored, on Ray. On a dozen images most of the run is
    Ray starting its workers: the report measures it (`stages.startup_s`), and the summary says that
    --engine local is faster for such a folder."""
    uri = folder.resolve().as_uri()  # file:///... read through pyarrow.fs, as s3:// and gs:// would be
    assert main(["featurize", uri, "--engine", "ray", "--out", str(tmp_path / "uri")]) == 0
    out = capsys.readouterr()
    assert "--engine local is faster" in out.out + out.err
    store = FeatureStore.open(tmp_path / "uri")
    stages = store.report["stages"]
    assert 0 < stages["startup_s"] <= stages["wall_s"]
    assert "startup_s" not in local.report["stages"]
    assert store.paths == local.paths and list(store.labels) == list(local.labels)
    assert store.sha256 == local.sha256
    np.testing.assert_allclose(store.features, local.features, rtol=1e-6, atol=1e-6)
    assert [s["reason"] for s in store.skipped] == ["not_an_image"]
    assert store.report["ignored"] == local.report["ignored"]  # the same files ignored, for the same reasons
    assert store.meta["data_dir"] == uri

    head = tmp_path / "head.joblib"
    pipeline.train(local, head="logreg", C=1.0).save(head)
    assert main(["score", str(head), str(folder), "--out", str(tmp_path / "local.csv"), "--no-cache",
                 "--no-progress"]) == 0
    assert main(["score", str(head), str(folder), "--out", str(tmp_path / "ray.csv"), "--no-cache",
                 "--no-progress", "--engine", "ray", "--partitions", "2"]) == 0
    assert (tmp_path / "ray.csv").read_text() == (tmp_path / "local.csv").read_text()


def test_engine_flags_are_checked(tmp_path, folder, capsys):
    assert main(["featurize", str(folder), "--out", str(tmp_path / "s"), "--partitions", "2"]) == 2
    assert "--engine ray" in capsys.readouterr().err
    assert main(["featurize", str(folder), "--out", str(tmp_path / "s"), "--engine", "ray", "--workers", "2"]) == 2
    assert "--workers" in capsys.readouterr().err
    assert main(["featurize", str(folder), "--out", str(tmp_path / "s"), "--engine", "ray",
                 "--partitions", "0"]) == 2
    assert main(["featurize", "nosuchscheme://bucket/x", "--out", str(tmp_path / "s"), "--engine", "ray"]) == 2
    assert "nosuchscheme://bucket/x" in capsys.readouterr().err
    assert not (tmp_path / "s").exists()


def test_sigkill_of_the_driver_then_rerun_equals_a_clean_run(cluster, tmp_path):
    data = tmp_path / "data"
    n = 24  # 6 partitions of 4: killed after the first, with most of the run still to do
    noise_class_tree(data, n, (320, 240))
    out = tmp_path / "store"
    cmd = [sys.executable, "-m", "pipeline", "featurize", str(data), "--out", str(out), "--engine", "ray",
           "--address", cluster, "--partitions", "6", "--no-progress", "--layer", "penultimate"]  # one store
    kill_once_committed(cmd, out / "rows.jsonl", 4)  # once a first partition is committed
    partial = pipeline.FeatureStore.open(out)
    assert 4 <= len(partial) < n, "the driver was not killed mid-run"
    assert len(partial) % 4 == 0  # whole partitions only

    resumed = pipeline.featurize(data, "mobilenet_v2_quant", "penultimate", out=out, progress=False, report=True,
                                 engine="ray", cluster=RayCluster(partitions=6))
    assert resumed.reused == len(partial) and resumed.computed == n - len(partial)
    clean = pipeline.featurize(data, "mobilenet_v2_quant", "penultimate", out=tmp_path / "clean", progress=False)
    store = pipeline.FeatureStore.open(out)
    assert store.paths == clean.paths  # exactly one row per image, in listing order
    np.testing.assert_allclose(store.features, clean.features, rtol=1e-6, atol=1e-6)


@pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="finds the actor's process through /proc (Linux)")
def test_a_backbone_actor_killed_mid_run_is_restarted_and_the_store_equals_in_process(cluster, tmp_path):
    import threading

    data = tmp_path / "data"
    n = 96  # 8 partitions of 12, 3 batches: both actors busy, the run long enough to kill one mid-way
    noise_class_tree(data, n, (96, 72))
    out, result = tmp_path / "store", {}

    def drive():
        try:
            result["run"] = pipeline.featurize(data, out=out, progress=False, report=True, engine="ray",
                                               cluster=RayCluster(partitions=8))
        except BaseException as e:  # noqa: BLE001 - reported by the assertion below
            result["error"] = e

    driver = threading.Thread(target=drive)
    driver.start()
    rows, deadline, killed = out / "rows.jsonl", time.time() + 300, None
    while time.time() < deadline and driver.is_alive():
        # a partition in (the commit log: a stat), then the backbone actors (decode fused into them): /proc is
        # walked only once the first holds, not every 5 ms, which took CPU from the run
        if rows.exists() and rows.read_bytes().count(b"\n") >= n // 8 and (
                actors := descendants_named(ACTOR)):
            committed = rows.read_bytes().count(b"\n")
            os.kill(actors[0], signal.SIGKILL)
            killed = actors[0]
            break
        time.sleep(0.005)
    driver_was_running = driver.is_alive()
    driver.join(300)
    assert killed is not None and driver_was_running and committed < n, "no actor was killed mid-run"
    assert "error" not in result, f"the run failed after an actor was killed: {result.get('error')!r}"
    run = result["run"]
    assert (run.computed, run.reused, len(run.store)) == (n, 0, n)  # one run, every image, nothing lost
    clean = pipeline.featurize(data, out=tmp_path / "clean", progress=False)
    assert run.store.rows == clean.rows
    np.testing.assert_allclose(run.store.features, clean.features, rtol=1e-6, atol=1e-6)
    assert _report(run.store) == _report(clean)


@pytest.fixture(scope="module")
def s3_folder(folder):
    """`folder` uploaded to a moto S3 server on 127.0.0.1 (the real S3 API over HTTP); its s3:// URI.

    The endpoint and the (fake) keys travel in the URI, as pyarrow reads them, so the cluster's
    workers reach the server without any environment of their own."""
    pytest.importorskip("moto.server", reason="the s3:// test needs moto's server: pip install -e '.[test]'")
    from moto.server import ThreadedMotoServer
    from pyarrow import fs

    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    uri = (f"s3://key:secret@photos/catalog/in?endpoint_override={host}:{port}&scheme=http&region=us-east-1"
           f"&allow_bucket_creation=true")
    s3, _ = fs.FileSystem.from_uri(uri)
    s3.create_dir("photos")
    for path in sorted(folder.rglob("*")):
        if path.is_file():
            with s3.open_output_stream(f"photos/catalog/in/{path.relative_to(folder).as_posix()}") as f:
                f.write(path.read_bytes())
    yield uri
    server.stop()


def test_images_from_s3_through_pyarrow_on_ray_equal_the_local_folder(cluster, local, s3_folder, tmp_path,
                                                                        monkeypatch):
    run = pipeline.featurize(s3_folder, out=tmp_path / "s3", progress=False, report=True, engine="ray",
                             cluster=RayCluster(partitions=2))
    store = run.store
    assert store.paths == local.paths and list(store.labels) == list(local.labels)
    assert store.sha256 == local.sha256
    np.testing.assert_allclose(store.features, local.features, rtol=1e-6, atol=1e-6)
    assert [(s["path"], s["reason"]) for s in store.skipped] == [("red/broken.jpg", "not_an_image")]
    assert store.report["ignored"] == local.report["ignored"]
    assert store.meta["data_dir"] == s3_folder
    assert FeatureStore.open(tmp_path / "s3-predictions").meta["data_dir"] == s3_folder  # the default's other store


    def no_request_per_object(uri, path):
        raise AssertionError(f"{path} was asked for its stat: the listing gave it")

    monkeypatch.setattr("pipeline.engines.ray.stat_uri", no_request_per_object)
    again = pipeline.featurize(s3_folder, out=tmp_path / "s3", progress=False, report=True, engine="ray",
                               cluster=RayCluster(partitions=2))
    assert (again.computed, again.reused) == (0, 10)  # objects' [size, mtime] unchanged: nothing read again


def test_a_cluster_task_reads_an_object_with_the_stat_its_listing_gave(s3_folder, monkeypatch):
    """One request per new object (the read), none for its stat: over millions of objects a HEAD
    each would double the requests."""
    from pipeline.dataset.sources import list_uri
    from pipeline.engines.ray import decode_batch
    from pipeline.preprocess import Preprocess

    listing = list_uri(s3_folder)
    monkeypatch.setattr("pipeline.engines.ray.stat_uri", lambda uri, path: pytest.fail(f"HEAD of {path}"))
    paths = [str(r.path) for r in listing.records]
    out = decode_batch({"idx": np.arange(len(paths)), "path": paths, "old_sha": [""] * len(paths),
                        "stat": [json.dumps(listing.stats[p]) for p in paths]},
                       Preprocess(size=(32, 32)).to_dict(), s3_folder)
    assert list(out["status"]).count("ok") == 10 and [json.loads(s) for s in out["stat"]] == [
        listing.stats[p] for p in paths]


def test_a_relabelled_file_is_settled_by_the_driver_and_a_moved_one_by_its_task_without_decoding(tmp_path,
                                                                                                monkeypatch):
    """The store's rows and contents, as the Ray engine plans and its tasks read: a file unchanged since its row
    but labelled anew is a copy of its own row before any task; a task hashes a file whose content the store
    holds under another path and returns it undecoded, as a copy of that row (the driver names the row)."""
    from pipeline.dataset.listing import ImageRecord
    from pipeline.engines.ray import _item, _plan, decode_batch
    from pipeline.featurizer.prepare import Copy, content_index, file_stat
    from pipeline.preprocess import Preprocess

    root = make_class_tree(tmp_path / "data", per_class=2)
    paths = sorted(root.rglob("*.jpg"))
    sha = {p: hashlib.sha256(p.read_bytes()).hexdigest() for p in paths}
    rel = {p: p.relative_to(root).as_posix() for p in paths}
    moved = root / "red" / "moved.jpg"
    moved.write_bytes(paths[0].read_bytes())  # blue/blue_0.jpg's bytes under a new path
    known = {"rows": {rel[p]: (sha[p], file_stat(p), p.parent.name) for p in paths}, "bad": {},
             "by_sha": {sha[p]: rel[p] for p in paths}}
    records = [ImageRecord(paths[0], rel[paths[0]], "red"),  # relabelled: its stat unchanged
               ImageRecord(paths[1], rel[paths[1]], "blue"),  # as stored
               ImageRecord(moved, "red/moved.jpg", "red")]
    settled, todo = _plan(records, known, None, {})
    assert settled[0][3] == Copy(rel[paths[0]]) and settled[0][1] == sha[paths[0]]
    assert settled[1][3] is None  # reused as it is
    assert [t["path"] for t in todo] == [str(moved)] and todo[0]["old_sha"] == ""

    monkeypatch.setattr("pipeline.engines.ray.decode", lambda *a: pytest.fail("a known content was decoded"))
    shas = content_index(known)
    out = decode_batch({"idx": np.array([2]), "path": [str(moved)], "old_sha": [""], "stat": [""]},
                       Preprocess(size=(32, 32)).to_dict(), None, shas)
    assert list(out["status"]) == ["copy"] and out["sha"][0] == sha[paths[0]]
    row = {k: out[k][0] for k in ("status", "sha", "stat", "reason", "detail", "notes")}
    assert _item(records[2], {**row, "features": None}, known)[3] == Copy(rel[paths[0]])
    assert content_index({"by_sha": {}}) is None
    # an imported store's ids that are no lowercase sha256 match no file (as in-process), and break nothing
    assert content_index({"by_sha": {"img-001": "a.jpg", sha[paths[0]].upper(): "b.jpg"}}) is None
    assert len(content_index({"by_sha": {}, "other": {sha[paths[0]]: 0}})) == 1  # --reuse-from stores' contents too
    monkeypatch.undo()
    other = decode_batch({"idx": np.array([2]), "path": [str(moved)], "old_sha": [""], "stat": [""]},
                         Preprocess(size=(32, 32)).to_dict(), None, content_index({"by_sha": {"0" * 64: "x"}}))
    assert list(other["status"]) == ["ok"] and other["image"].any()  # a content the store lacks is decoded


def test_a_corrected_labels_csv_on_ray_copies_every_row_without_a_cluster(tmp_path, monkeypatch):
    """Every file unchanged, every label new: the Ray engine's driver books each file as a copy of its own row
    and commits them to both stores of the default pass, as the local engine does, and never starts or joins a
    cluster."""
    data = make_class_tree(tmp_path / "data", per_class=3)
    names = sorted(p.relative_to(data).as_posix() for p in data.rglob("*.jpg"))
    first, fixed = tmp_path / "first.csv", tmp_path / "fixed.csv"
    first.write_text("id,label\n" + "".join(f"{n},{n.split('/')[0]}\n" for n in names))
    fixed.write_text("id,label\n" + "".join(f"{n},{'cat' if i % 2 else 'dog'}\n" for i, n in enumerate(names)))
    runs = {}
    for engine in ("local", "ray"):
        out = tmp_path / engine
        pipeline.featurize(data, labels=first, out=out, progress=False)
        with monkeypatch.context() as m:
            m.setattr("pipeline.engines.ray.connected", lambda cluster: pytest.fail("the cluster was asked"))
            runs[engine] = pipeline.featurize(data, labels=fixed, out=out, progress=False, report=True,
                                              engine=engine)
    ray_run, local_run = runs["ray"], runs["local"]
    assert (ray_run.computed, len(ray_run.copied)) == (local_run.computed, len(local_run.copied)) == (0, 6)
    assert ray_run.copied == local_run.copied
    assert ray_run.store.rows == local_run.store.rows and list(ray_run.store.labels)[:2] == ["dog", "cat"]
    np.testing.assert_array_equal(ray_run.store.features, local_run.store.features)
    scores = {e: FeatureStore.open(tmp_path / f"{e}-predictions") for e in runs}  # the class scores beside it
    assert scores["ray"].rows == scores["local"].rows and list(scores["ray"].labels)[:2] == ["dog", "cat"]
    np.testing.assert_array_equal(scores["ray"].features, scores["local"].features)


def test_cpu_clusters_decode_inside_the_backbone_actors_and_gpu_clusters_beside_them():
    """On CPUs the decode tasks ask for the actors' resources, so Ray Data fuses them (one process per
    core, no decoded image through the object store); with GPUs every core decodes for the GPU actors."""
    from pipeline.engines.ray import actor_pool, fused

    actors, decode = actor_pool({"CPU": 4.0}, per_image=True)  # TFLite: one actor per core
    assert actors.pop("size") == 4 and fused(actors, decode)
    actors, decode = actor_pool({"CPU": 8.0}, per_image=False)  # TensorFlow threads over 2 cores
    assert actors.pop("size") == 4 and fused(actors, decode)
    actors, decode = actor_pool({"CPU": 16.0, "GPU": 2.0}, per_image=False)
    assert actors.pop("size") == 2 and actors["num_gpus"] == 1 and not fused(actors, decode)


# ---- a node lost: the engine seam across machines ------------------------------------------------------
@pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="finds Ray's processes through /proc (Linux)")
def test_a_worker_node_lost_mid_run_loses_nothing_once_run_again(two_nodes, tmp_path):
    data, n = tmp_path / "data", 64  # 16 partitions of 4: the node is lost with most of them still to do
    noise_class_tree(data, n, (96, 72))
    out, partitions = tmp_path / "store", 16
    node, raylet = _worker_raylet(two_nodes)
    cmd = [sys.executable, "-m", "pipeline", "featurize", str(data), "--out", str(out), "--engine", "ray",
           "--address", two_nodes.address, "--partitions", str(partitions), "--batch-size", "2", "--no-progress"]
    driver = subprocess.Popen(cmd, env=dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3"), stdout=subprocess.DEVNULL,
                              stderr=subprocess.DEVNULL)
    rows, deadline, committed = out / "rows.jsonl", time.time() + 180, None
    try:
        while time.time() < deadline and driver.poll() is None:
            # the commit log first (a stat): /proc is walked only once a partition is in, not every 5 ms
            if rows.exists() and rows.read_bytes().count(b"\n") >= n // partitions and descendants_named(ACTOR, raylet):
                committed = rows.read_bytes().count(b"\n")  # a first partition is in, the worker node is busy
                two_nodes.remove_node(node, allow_graceful=False)  # every process of the node SIGKILLed
                break
            time.sleep(0.005)
        if committed is not None:  # two nodes again: for the driver's lost actor, or for the rerun
            two_nodes.add_node(num_cpus=1)
        driver.wait(timeout=120)  # the run may complete on the new node, or fail: either way nothing is lost
    except subprocess.TimeoutExpired:
        pass  # a driver that waits on and on: it is killed below, the rerun finishes the store
    finally:
        if driver.poll() is None:
            driver.kill()
            driver.wait()
    assert committed is not None and committed < n, "the worker node was not lost mid-run"

    rerun = pipeline.featurize(data, out=out, batch_size=2, progress=False, report=True, engine="ray",
                               cluster=RayCluster(two_nodes.address, partitions=partitions))
    assert rerun.reused >= committed and rerun.reused + rerun.computed == n and len(rerun.store) == n
    assert driver.returncode != 0 or rerun.computed == 0  # a run that went on without the node finished the store
    local = pipeline.featurize(data, out=tmp_path / "local", batch_size=2, progress=False)
    _assert_same_store(rerun.store, local)
