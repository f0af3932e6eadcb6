"""The Ray engine (``engine="ray"``, :class:`RayEngine`): featurize on Ray Data: partitions of the sorted
listing, decoding in CPU tasks, the network in an actor pool, and every finished partition committed
to the store by the driver. :class:`RayEngine` also holds what only this engine checks and its
command-line flags (``--address``, ``--partitions`` -> :class:`RayCluster`).

The listing is today's sorted one (:func:`pipeline.dataset.listing.list_images`, or
:func:`pipeline.dataset.sources.list_uri` for ``s3://``, ``gs://``, ``file://``). Partition k holds images
[k*n/P, (k+1)*n/P) of it, so the same command splits the same folder the same way on every run.
The driver first asks the store what needs no work, exactly as the local engine does (a
file whose stat is unchanged keeps its row, or is skipped again, or with a new label takes its own
row's features); the other files flow through
Ray Data in listing order: ``map_batches`` tasks read, hash and decode them (1 CPU each; a file whose
content the store holds under another path, moved or copied, is hashed but not decoded, and takes
that row's features as in-process; on a
cluster without GPUs Ray Data fuses them into the actors, see :func:`actor_pool`), and a pool of
actors (a callable class that builds the backbone once from its request, never pickled
to it; one GPU each when the cluster has GPUs) featurizes the decoded images. As partition k
completes, the driver books its files in listing order (reused, skipped with a reason, or a new
row) and appends its rows with :meth:`pipeline.store.StoreWriter.append` (staging, rename,
commit log). A killed driver or a lost worker loses at most the partitions in flight; the same
command resumes where the committed rows end. The store equals the in-process store of the
same folder: same rows in the same order, same skipped files and reasons, same report (its
``stages`` describe the cluster).
"""
from __future__ import annotations

import bisect
import json
import logging
import os
import sys
import time
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass

import numpy as np

from ..backbones import Backbone, backbone_from_spec
from ..dataset.sources import is_uri, list_uri, read_uri, stat_uri
from ..decode.images import decode, read_bytes
from ..errors import ImageError, PipelineError, UsageError
from ..featurizer.committer import Committer
from ..featurizer.mapper import Mapper
from ..featurizer.prepare import (
    content_index,
    content_source,
    file_stat,
    holds,
    known_files,
    known_row,
    relabelled,
)
from ..featurizer.prepare import cached as cached_row
from ..featurizer.stages import StageClock
from ..machine import usable_cores
from ..options import FeaturizeOptions
from ..preprocess import Preprocess
from .base import Engine, account, progress
from .report import RunReport

log = logging.getLogger(__name__)
LOOPBACK_ONLY = "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"  # "0": Ray takes 127.0.0.1 as the node's address, and binds there
IMAGES_PER_PARTITION = 1000  # default partition size when --partitions is not given


@dataclass(frozen=True)
class RayCluster:
    """Where a Ray run goes: `address` None (or "local") starts a local cluster sized to the cores this process
    may use ("auto" or "ray://HOST:PORT" joins one); `partitions` None gives one per IMAGES_PER_PARTITION
    images. `loopback`: that local cluster listens on 127.0.0.1 only (what the command line asks for; it
    takes effect where Ray is not imported yet, see :func:`loopback_env`)."""

    address: str | None = None
    partitions: int | None = None
    loopback: bool = False

    @property
    def local(self) -> bool:
        return self.address in (None, "", "local")

    def __post_init__(self):
        if self.partitions is not None and int(self.partitions) < 1:
            raise UsageError(f"partitions={self.partitions!r} must be a positive number")


def partition_bounds(n: int, partitions: int | None) -> list[tuple[int, int]]:
    """[lo, hi) of each partition of n listed images: contiguous, deterministic, none empty."""
    p = partitions or -(-n // IMAGES_PER_PARTITION)
    p = max(1, min(int(p), n))
    return [(k * n // p, (k + 1) * n // p) for k in range(p)]


class RayEngine(Engine):
    """featurize on a Ray cluster (``options.cluster``: a :class:`RayCluster`, default a local one): the same
    store and report as in-process. DATA_DIR may also be an ``s3://``, ``gs://`` or ``file://`` URI."""

    name = "ray"
    flags = ("address", "partitions")

    @classmethod
    def check(cls, options: FeaturizeOptions) -> None:
        if options.workers is not None:
            raise UsageError("workers= sets decoding threads of engine=local; Ray sizes its tasks to the cluster")
        if options.multi_label:
            raise UsageError("multi_label=True runs on engine=local only for now")
        if options.decode != "auto":
            raise UsageError("decode= chooses threads or processes of engine=local; Ray decodes in its own tasks")

    @classmethod
    def add_arguments(cls, parser) -> None:
        parser.add_argument("--address", help="with --engine ray: join this cluster (auto, or ray://HOST:PORT); "
                                              "default: start a local one sized to this machine")
        parser.add_argument("--partitions", type=int, help="with --engine ray: split the sorted listing into N "
                                                           "partitions, each committed when done (default: one "
                                                           "per 1000 images)")

    @classmethod
    def cluster_from_args(cls, args) -> RayCluster:
        # the command's own local cluster (no --address), shut down at its end, listens on 127.0.0.1 only
        return RayCluster(args.address, args.partitions, loopback=True)

    def list(self, data_dir, labels):
        if is_uri(data_dir):
            return list_uri(data_dir, self.options.labelled, labels)
        return super().list(data_dir, labels)

    def work(self, listing, data_dir, bb: Backbone, writer, run: RunReport) -> None:
        cluster = self.options.cluster or RayCluster()
        _run(listing, data_dir if is_uri(data_dir) else None, bb, writer, cluster, self.options.progress, run)


# --- what runs on the cluster ------------------------------------------------------------------

def _read(uri: str | None, path: str, listed: str, into: dict):
    """(bytes, sha256) of a local file or an object below `uri`; its stat goes to into["stat"] first
    (an object's as the listing gave it, `listed` as JSON: no request per object but the read)."""
    if uri is None:
        into["stat"] = file_stat(path)
        return read_bytes(path)
    into["stat"] = json.loads(listed) if listed else stat_uri(uri, path)
    return read_uri(uri, path, into["stat"][0])


def _decode_one(uri, path: str, old_sha: str, listed: str, pre: Preprocess, shas, out: dict, j: int) -> None:
    """Read, hash and decode one file into row j of `out` (status ok, reused, copy or skipped). A file whose
    content the store holds under another path (`shas`, :func:`~pipeline.featurizer.prepare.content_index`) is
    not decoded: "copy"."""
    notes, t0 = [], time.perf_counter()
    status, sha, reason, detail, t1, got = "skipped", "", "", "", None, {"stat": None}
    try:
        data, sha = _read(uri, path, listed, got)
        t1 = time.perf_counter()
        if sha == old_sha:
            status = "reused"
        elif holds(shas, sha):
            status = "copy"
        else:
            out["image"][j] = decode(data, pre, path, notes)
            status = "ok"
    except OSError as e:
        reason, detail = f"io_error:{type(e).__name__}", e.strerror or str(e)
    except ImageError as e:
        reason, detail = e.reason, e.detail
    t2 = time.perf_counter()
    t1 = t1 or t2
    for key, value in (("status", status), ("sha", sha), ("stat", json.dumps(got["stat"])), ("reason", reason),
                       ("detail", detail), ("notes", json.dumps(notes)), ("read_s", t1 - t0), ("decode_s", t2 - t1)):
        out[key].append(value)


def decode_batch(batch: dict, pre: dict, uri: str | None, shas=None) -> dict:
    """Ray Data task: a batch of files (idx, path, old_sha, stat) -> decoded uint8 images and their status.
    `shas`: the contents the store holds (:func:`~pipeline.featurizer.prepare.content_index`, or a Ray reference
    to them), or None."""
    if shas is not None and not isinstance(shas, np.ndarray):
        import ray

        shas = ray.get(shas)  # from the node's object store, not copied
    pre = Preprocess.from_dict(pre)
    n = len(batch["idx"])
    out = {k: [] for k in ("status", "sha", "stat", "reason", "detail", "notes", "read_s", "decode_s")}
    out["image"] = np.zeros((n, *pre.size, 3), np.uint8)
    for j, (path, old, listed) in enumerate(zip(batch["path"], batch["old_sha"], batch["stat"])):
        _decode_one(uri, str(path), str(old), str(listed), pre, shas, out, j)
    return {"idx": np.asarray(batch["idx"], np.int64), **{k: np.asarray(v) for k, v in out.items()}}


class Forward:
    """Ray Data actor: builds the backbone once from its request, then featurizes decoded batches.
    The first row of every output batch carries the loaded backbone's spec (JSON) for the store,
    and every row the time the actor became ready (the run's ``startup_s``)."""

    def __init__(self, request: dict, batch_size: int):
        self.bb = backbone_from_spec(request)
        self.bb.fix_batch_size(batch_size)
        self.spec = json.dumps({"spec": self.bb.spec(),  # builds the network
                                "layers": [self.bb.layer_spec(i) for i in range(len(self.bb.layers))]})
        self.ready = time.time()  # wall clock: the driver compares it with its own

    def __call__(self, batch: dict) -> dict:
        ok = np.flatnonzero(batch["status"] == "ok")
        n = len(batch["status"])
        feats = np.zeros((n, self.bb.dim), np.float32)
        start = time.perf_counter()
        if len(ok):
            images = batch["image"][ok]
            feats[ok] = (np.stack([self.bb.featurize_one(im) for im in images]) if self.bb.per_image
                         else self.bb(images))
        out = {k: v for k, v in batch.items() if k != "image"}
        out["features"] = feats
        out["forward_s"] = np.full(n, (time.perf_counter() - start) / max(1, n))
        out["spec"] = np.array([self.spec] + [""] * (n - 1), dtype=object)
        out["ready"] = np.full(n, self.ready)
        return out


# --- the driver ----------------------------------------------------------------------------------

@contextmanager
def loopback_env(cluster: RayCluster, ray_imported: bool):
    """While a local cluster with `loopback` is imported and started: RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0, which
    makes Ray take 127.0.0.1 as the node's address and bind every server there (read when Ray is imported: too
    late once it is, and left as it is when set already). Its processes keep it; this process's environment is
    restored after (a later `ray start` child of a program calling the CLI would refuse to join other nodes)."""
    set_here = cluster.loopback and cluster.local and not ray_imported and LOOPBACK_ONLY not in os.environ
    if set_here:
        os.environ[LOOPBACK_ONLY] = "0"
    try:
        yield
    finally:
        if set_here:
            os.environ.pop(LOOPBACK_ONLY, None)


@contextmanager
def connected(cluster: RayCluster):
    """Ray, initialised: an existing session as it is, else the cluster at `address`, else a new local one
    with the cores this process may use (on 127.0.0.1 only with ``cluster.loopback``)."""
    with loopback_env(cluster, "ray" in sys.modules):
        import ray

        started = not ray.is_initialized()
        if started:
            try:
                if not cluster.local:
                    ray.init(address=cluster.address, logging_level=logging.WARNING, log_to_driver=False)
                else:
                    ray.init(address="local", num_cpus=usable_cores(), include_dashboard=False,
                             logging_level=logging.WARNING, log_to_driver=False)
            except ConnectionError as e:
                raise PipelineError(f"cannot reach the Ray cluster at {cluster.address!r}: {e}; start one with "
                                    f"`ray start --head`, or give no address= for a local one") from e
    try:
        yield ray
    finally:
        if started:
            ray.shutdown()


class _ClusterSpec:
    """What the Mapper needs of a backbone: a flush size, and the spec an actor sent with its first
    batch (no extra task, no model on the driver: the Mapper asks only once a computed row is back);
    for a multi-layer run also each layer's spec and width (pipeline/featurizer/layers.py)."""

    def __init__(self, batch_size: int):
        self.batch_size, self.sent = batch_size, None

    def spec(self) -> dict:
        return json.loads(self.sent)["spec"]

    def layer_spec(self, i: int) -> dict:
        return json.loads(self.sent)["layers"][i]

    @property
    def dims(self) -> list[int]:
        return [int(s["dim"]) for s in json.loads(self.sent)["layers"]]


def _plan(records, known: dict, uri: str | None, listed: dict):
    """({index: prepared item} the store settles without reading, [files for the cluster]).

    An object's stat is the one its listing gave (`listed`: path -> [size, mtime_ns]), so a rerun over
    millions of objects asks the store nothing per object; a local file is stat'ed here. A file unchanged
    since its row but with a new label (a corrected labels CSV) is settled as a :class:`Copy` of that row,
    as in-process; the tasks turn a file whose content the store holds under another path into one too."""
    settled, todo = {}, []
    for i, r in enumerate(records):
        old, stat = known_row(r, known), listed.get(str(r.path))
        if r.relpath in known["rows"] or r.relpath in known["bad"]:  # under another label too: relabelled
            try:
                stat = stat or (file_stat(r.path) if uri is None else stat_uri(uri, r.path))
            except OSError:
                stat = None  # the task reports why
            hit = (cached_row(r, stat, known) or relabelled(r, stat, known)) if stat is not None else None
            if hit is not None:
                settled[i] = (r, hit[0], stat, hit[1], [])
                continue
        todo.append({"idx": i, "path": str(r.path), "old_sha": old[0] if old else "",
                     "stat": json.dumps(stat) if stat is not None and uri is not None else ""})
    return settled, todo


def _dataset(ray, todo: list[dict], blocks: int, uri, bb: Backbone, shas: np.ndarray | None):
    """The Ray Data pipeline: decode tasks, then the backbone's actor pool, in listing order (on CPU
    clusters Ray Data fuses the two: see :func:`actor_pool`)."""
    ctx = ray.data.DataContext.get_current()
    ctx.execution_options.preserve_order = True
    ctx.enable_progress_bars = False
    logging.getLogger("ray.data").setLevel(logging.WARNING)
    actors, decode_cpus = actor_pool(ray.cluster_resources(), bb.per_image)
    cpus = int(ray.cluster_resources().get("CPU", 1))
    # a block per partition with work, and enough blocks of a batch or more to keep every worker busy
    blocks = max(1, min(len(todo), max(blocks, min(-(-len(todo) // bb.batch_size), 8 * cpus))))
    ds = ray.data.from_items(todo, override_num_blocks=blocks)
    # a lost worker costs time only: Ray Data reruns a decode task whose worker died, restarts a lost
    # actor and reruns its batches (its defaults; setting them goes through the deprecated ray_remote_args)
    shas = None if shas is None else ray.put(shas)  # once in the object store, read there by every task
    ds = ds.map_batches(decode_batch, fn_kwargs={"pre": bb.preprocess.to_dict(), "uri": uri, "shas": shas},
                        batch_size=bb.batch_size, batch_format="numpy", num_cpus=decode_cpus)
    batches = -(-len(todo) // bb.batch_size)
    pool = ray.data.ActorPoolStrategy(size=min(actors.pop("size"), blocks, batches))  # no idle actor on tiny runs
    ds = ds.map_batches(Forward, fn_constructor_kwargs={"request": bb.request(), "batch_size": bb.batch_size},
                        batch_size=bb.batch_size, batch_format="numpy", compute=pool, **actors)
    decoders = (pool.max_size if fused(actors, decode_cpus)
                else max(1, int((cpus - actors.get("num_cpus", 0) * pool.max_size) / decode_cpus)))
    workers = {"read": decoders, "forward": pool.max_size}
    return ds, workers, "num_gpus" in actors


def actor_pool(resources: dict, per_image: bool) -> tuple[dict, float]:
    """(the backbone's actor pool: its size and resources per actor, CPUs per decode task) for a cluster.

    With GPUs: one actor per GPU, decode tasks of 1 CPU on every core. CPU only, a backbone run one
    image at a time on one thread (TFLite): one actor per core (1 CPU), and decode tasks that ask for
    the same, so that Ray Data fuses them into the actors: each core reads, decodes and featurizes
    its batches in one process, as the local engine's threads do, and no decoded image crosses
    the object store (half the worker processes to start per run; BENCHMARKS.md, "Ray"). A
    TensorFlow backbone on CPUs uses every core of its node through its own threads: one actor
    (1 CPU) per 2 CPUs, with the decode tasks fused into it the same way.
    """
    gpus, cpus = int(resources.get("GPU", 0)), max(1, int(resources.get("CPU", 1)))
    if gpus:
        return {"num_gpus": 1, "size": gpus}, 1.0
    if per_image:
        return {"num_cpus": 1, "size": cpus}, 1.0
    return {"num_cpus": 1, "size": max(1, cpus // 2)}, 1.0


def fused(actors: dict, decode_cpus: float) -> bool:
    """Whether Ray Data fuses the decode tasks into the backbone's actors (same resources, no GPU)."""
    return "num_gpus" not in actors and actors.get("num_cpus") == decode_cpus


class _Results:
    """Rows of the cluster's output by listing index, pulled from the stream as they are needed."""

    def __init__(self, batches, clock: StageClock, spec: _ClusterSpec):
        self.batches, self.clock, self.spec, self.rows = batches, clock, spec, {}
        self.ready = None  # when the first backbone actor was ready (wall clock)

    def get(self, i: int) -> dict:
        while i not in self.rows:
            b = next(self.batches)
            self.ready = min(self.ready or np.inf, float(np.min(b["ready"])))
            self.spec.sent = self.spec.sent or str(b["spec"][0])
            for stage in ("read", "decode", "forward"):
                self.clock.busy[stage] += float(np.sum(b[f"{stage}_s"]))
            for j, idx in enumerate(b["idx"]):
                self.rows[int(idx)] = {k: b[k][j] for k in ("status", "sha", "stat", "reason", "detail",
                                                            "notes", "features")}
        return self.rows.pop(i)


def _item(record, row: dict, known: dict):
    """A cluster row as the reader's prepared item: (record, sha256, stat, result, notes)."""
    stat, notes = json.loads(str(row["stat"])), json.loads(str(row["notes"]))
    status, sha = str(row["status"]), str(row["sha"])
    if status == "skipped":
        return record, None, stat, ImageError(record.path, str(row["reason"]), str(row["detail"])), notes
    if status == "copy":
        return record, sha, stat, content_source(record, sha, known), notes
    return record, sha, stat, (row["features"] if status == "ok" else None), notes


def _run(listing, uri, bb: Backbone, writer, cluster: RayCluster, show: bool, run: RunReport) -> None:
    records, known = listing.records, known_files(writer, run.sources)
    settled, todo = _plan(records, known, uri, listing.stats)
    bounds = partition_bounds(len(records), cluster.partitions)
    clock, start, started = StageClock(), time.perf_counter(), time.time()
    if not todo:  # a rerun, a corrected labels CSV: settled by the driver alone, no cluster
        log.info("every file is settled by the store: the Ray cluster (%s) is not asked", cluster.address or "local")
    with connected(cluster) if todo else nullcontext() as ray:
        workers = {"read": 1, "forward": 1}
        gpu = False
        stream = (b for b in ())
        if todo:
            los = [lo for lo, _ in bounds]
            busy = {bisect.bisect_right(los, t["idx"]) - 1 for t in todo}  # partitions with work
            ds, workers, gpu = _dataset(ray, todo, len(busy), uri, bb, content_index(known))
            stream = ds.iter_batches(batch_size=None, batch_format="numpy").__iter__()
        try:
            spec = _ClusterSpec(max(hi - lo for lo, hi in bounds))
            if hasattr(writer, "layers_from"):  # one store per layer: their specs as the actors loaded them
                writer.layers_from(spec)
            results = _Results(stream, clock, spec)
            batcher = _commit_partitions(records, bounds, settled, results, known,
                                         Mapper(spec, Committer(writer, run.skipped, clock), clock), run,
                                         f"featurize {bb.name} on ray" if show else None)
        finally:
            if hasattr(stream, "close"):
                stream.close()  # before Ray shuts down
    run.computed = batcher.computed
    # Ray sizes the workers, so the hints speak of cores and backbones, never of --workers
    run.stages = clock.report(run.computed, time.perf_counter() - start,
                              {"read": workers["read"], "decode": workers["read"], "forward": workers["forward"],
                               "write": 1},
                              {"cores": workers["read"], "gpu": gpu, "per_image": False, "kind": bb.kind})
    if results.ready is not None:  # Ray (and a local cluster) starting, up to the first backbone built
        run.stages["startup_s"] = round(max(0.0, results.ready - started), 4)


def _commit_partitions(records, bounds, settled: dict, results: _Results, known: dict, batcher: Mapper, run: RunReport,
                       title: str | None) -> Mapper:
    """Book every file in listing order and commit each partition's new rows as one part (`title`: the
    progress bar's, None for no bar)."""
    with progress(len(records), title is not None, title or "") as bar:
        for lo, hi in bounds:
            for i in range(lo, hi):
                account(settled.pop(i) if i in settled else _item(records[i], results.get(i), known), batcher, run)
            batcher.flush()  # the partition's rows: one part, one commit
            bar.update(hi - lo)
    return batcher
