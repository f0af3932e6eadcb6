"""The engine seam on a cluster of two Ray nodes on this machine (a head and a worker node, 1 CPU each):
engine="ray" writes the store engine="local" writes, row for row, with a backbone actor on each node;
a worker node lost mid-run loses nothing once the same run is done again.

Both nodes and the driver use 127.0.0.1 only (tests/conftest.py sets RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0,
which makes Ray take the loopback address as each node's address); the first test checks it."""
from __future__ import annotations

import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest
from conftest import descendants_named, make_class_tree, noise_class_tree

import pipeline
from pipeline.engines.ray import RayCluster

ray = pytest.importorskip("ray", reason="the Ray engine needs ray[data]: pip install -e '.[ray]'")
cluster_utils = pytest.importorskip("ray.cluster_utils")

pytestmark = [pytest.mark.slow,  # two Ray nodes to start, and a node to start again: about a minute
              pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="finds Ray's processes through /proc")]

ACTOR = "ray::MapWorker("  # a backbone actor of the Ray engine (on CPUs the decode tasks are fused into it)


@pytest.fixture(scope="module")
def two_nodes():
    """A Ray cluster of a head node and one worker node, 1 CPU each, started by this process."""
    quick = {"health_check_period_ms": 500, "health_check_failure_threshold": 3}  # a lost node noticed in ~2 s
    cluster = cluster_utils.Cluster(initialize_head=True, head_node_args={"num_cpus": 1, "include_dashboard": False,
                                                                          "_system_config": quick})
    cluster.add_node(num_cpus=1)
    cluster.wait_for_nodes()
    yield cluster
    cluster.shutdown()


def _worker_raylet(cluster) -> tuple[object, int]:
    """(the worker node, the PID of its raylet: the ancestor of the worker processes it starts)."""
    node = next(iter(cluster.worker_nodes))
    return node, node.all_processes["raylet"][0].process.pid


def _assert_same_store(store, local) -> None:
    assert store.rows == local.rows  # paths, labels, sha256 and stat, in the same order
    assert store.paths == local.paths and store.sha256 == local.sha256 and list(store.labels) == list(local.labels)
    np.testing.assert_allclose(store.features, local.features, rtol=1e-6, atol=1e-6)


def test_two_nodes_write_the_local_store_row_for_row(two_nodes, tmp_path):
    assert two_nodes.address.startswith("127.0.0.1:") and all(
        n.node_ip_address == "127.0.0.1" for n in [two_nodes.head_node, *two_nodes.worker_nodes])
    data = make_class_tree(tmp_path / "data", per_class=6)
    (data / "red" / "broken.jpg").write_bytes(b"not a jpeg at all")
    local = pipeline.featurize(data, out=tmp_path / "local", batch_size=2, progress=False, report=True)
    _, raylet = _worker_raylet(two_nodes)
    on_worker, result = set(), {}

    def drive():
        try:
            result["run"] = pipeline.featurize(data, out=tmp_path / "ray", batch_size=2, progress=False, report=True,
                                               engine="ray", cluster=RayCluster(two_nodes.address, partitions=3))
        except BaseException as e:  # noqa: BLE001 - reported by the assertion below
            result["error"] = e

    driver = threading.Thread(target=drive)
    driver.start()
    # the actors live from the run's start to its end: 20 looks a second see them; each look is a walk of /proc
    # (CPU the run would miss), so the looking stops once one is seen on the worker node
    while driver.is_alive() and not on_worker:
        on_worker.update(descendants_named(ACTOR, raylet))
        time.sleep(0.05)
    driver.join()
    assert "error" not in result, f"the run failed: {result.get('error')!r}"
    assert on_worker, "no backbone actor ran on the worker node"
    run = result["run"]
    _assert_same_store(run.store, local.store)
    assert [(s["path"], s["reason"]) for s in run.skipped] == [("red/broken.jpg", "not_an_image")]
    assert (run.computed, run.reused) == (local.computed, local.reused) == (12, 0)


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
        two_nodes.add_node(num_cpus=1)  # two nodes again: for the driver's lost actor, or for the rerun
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
