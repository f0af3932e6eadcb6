"""Shared fixtures: tiny image folders built on the fly, and the ../shared material (skipped when absent)."""
from __future__ import annotations

import contextlib
import io
import os
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

# Ray clusters the tests start (tests/engines/) use 127.0.0.1 only: with this, Ray takes the loopback
# address as every node's address (binding and connecting there) instead of the machine's own address.
os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")
# and they report no usage statistics: no machine of a test run reaches the network, and Ray Data would
# start an actor (a Python process, ~2 s of CPU) per cluster to gather them
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")

REPO = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("TFP_SHARED", REPO.parent / "shared"))

XLA_LEVEL0 = "--xla_backend_optimization_level=0"


def _xla_level0(flags: str | None) -> str:
    return flags if flags and XLA_LEVEL0 in flags.split() else " ".join(filter(None, [flags, XLA_LEVEL0]))


# JAX in the test processes (tests/decode: jaxresize's programs, compiled per bucket of image sizes, taps and
# filter) at XLA optimisation level 0, as in the children of jax_child_env: the tests compare pixels, integers
# that no optimisation level changes, and level 0 compiles them in less time (test_jaxresize.py: 31 -> 24 s of
# CPU). Set before any test runs, so before JAX first compiles here; TensorFlow's XLA (jit_compile) reads the
# same variable, and no test compiles with it.
os.environ["XLA_FLAGS"] = _xla_level0(os.environ.get("XLA_FLAGS"))


def needs_shared(*parts: str) -> Path:
    """Path inside ../shared, or skip the test with the reason."""
    p = SHARED.joinpath(*parts)
    if not p.exists():
        pytest.skip(f"{p} is absent: real models and data live in ../shared (set TFP_SHARED to point elsewhere)")
    return p


def img_bytes(mode="RGB", size=(64, 48), fmt="JPEG", color=None, **kw) -> bytes:
    buf = io.BytesIO()
    Image.new(mode, size, color).save(buf, fmt, **kw)
    return buf.getvalue()


def noise_image(seed: int, size=(80, 60), base=None) -> Image.Image:
    """A random RGB image; `base` tints it so classes are separable."""
    rng = np.random.default_rng(seed)
    arr = rng.integers(0, 256, (size[1], size[0], 3)).astype(np.float32)
    if base is not None:
        arr = 0.4 * arr + 0.6 * np.asarray(base, np.float32)
    return Image.fromarray(arr.clip(0, 255).astype(np.uint8))


def make_class_tree(root: Path, per_class: int = 6, classes=("red", "blue"), size=(80, 60)) -> Path:
    colours = {"red": (230, 30, 30), "blue": (30, 30, 230), "green": (30, 200, 30)}
    for ci, c in enumerate(classes):
        (root / c).mkdir(parents=True, exist_ok=True)
        for i in range(per_class):
            noise_image(100 * ci + i, size, colours[c]).save(root / c / f"{c}_{i}.jpg", quality=92)
    return root


@pytest.fixture
def class_tree(tmp_path) -> Path:
    return make_class_tree(tmp_path / "data")


def noise_class_tree(data: Path, n: int, size=(320, 240)) -> Path:
    """Two classes a and b (reddish, bluish) of n // 2 distinct noise JPEGs each: a folder worth killing runs in."""
    for c, base in (("a", (200, 40, 40)), ("b", (40, 40, 200))):
        (data / c).mkdir(parents=True)
        for i in range(n // 2):
            noise_image(i + (0 if c == "a" else 10_000), size, base).save(data / c / f"{i:03d}.jpg")
    return data


def pipeline_cmd(*args: str, commit_every_s: float = 0.1) -> list[str]:
    """`python -m pipeline ARGS` with the writer committing every `commit_every_s` seconds instead of every
    second: a run to be killed mid-way is killed right after a first small commit, so its folder can be a few
    times that commit's size instead of a few seconds' worth of images (resuming it and the clean run to compare
    with then take a fraction of the time). The commit path itself is the same."""
    import sys

    code = ("import sys; from pipeline.featurizer.committer import Committer; "
            f"Committer.COMMIT_EVERY_S = {float(commit_every_s)!r}; "
            "from pipeline.cli import main; sys.exit(main(sys.argv[1:]))")
    return [sys.executable, "-c", code, *args]


def kill_once_committed(cmd: list[str], rows_file: Path, lines: int, timeout: float = 180, env=None) -> None:
    """Run `cmd`, then SIGKILL it as soon as `rows_file` (a store's commit log) holds `lines` committed lines
    (or the command ends first, or `timeout` seconds pass): the crash the resume tests recover from."""
    import signal
    import subprocess
    import time

    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3") if env is None else env
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + timeout
    while time.time() < deadline and proc.poll() is None:
        if rows_file.exists() and rows_file.read_bytes().count(b"\n") >= lines:
            break
        time.sleep(0.005)
    proc.send_signal(signal.SIGKILL)
    proc.wait()


def descendants_named(prefix: str, ancestor: int | None = None) -> list[int]:
    """PIDs of the descendants of `ancestor` (default: this process, e.g. its Ray cluster; a Ray node's raylet
    for the workers of that node) whose title starts with `prefix` (Linux: read from /proc)."""
    ancestor = os.getpid() if ancestor is None else ancestor
    parent, titles = {}, {}
    for proc in Path("/proc").iterdir():
        try:
            parent[int(proc.name)] = int((proc / "stat").read_text().rsplit(")", 1)[1].split()[1])
            titles[int(proc.name)] = (proc / "cmdline").read_bytes().split(b"\0")[0].decode(errors="replace")
        except (ValueError, OSError):
            continue  # not a process, or gone

    def below(pid: int) -> bool:
        while pid > 1 and pid != ancestor:
            pid = parent.get(pid, 0)
        return pid == ancestor

    return [pid for pid, title in titles.items() if title.startswith(prefix) and below(pid)]


def listening_addresses(pids) -> set[str]:
    """The addresses the TCP sockets of these processes listen on ('127.0.0.1', '::1', '0.0.0.0', ...), from
    /proc/net/tcp and tcp6 (Linux): every listening socket's inode, matched with the processes' open files."""
    import ipaddress

    inodes = set()
    for pid in pids:
        with contextlib.suppress(OSError):
            for fd in Path(f"/proc/{pid}/fd").iterdir():
                with contextlib.suppress(OSError):
                    target = os.readlink(fd)
                    if target.startswith("socket:["):
                        inodes.add(target[8:-1])
    found = set()
    for table in ("tcp", "tcp6"):
        with contextlib.suppress(OSError):
            for line in Path(f"/proc/net/{table}").read_text().splitlines()[1:]:
                fields = line.split()
                if fields[3] == "0A" and fields[9] in inodes:  # 0A: LISTEN
                    raw = bytes.fromhex(fields[1].split(":")[0])
                    # the kernel writes the address as 32-bit words in host (little-endian) order
                    raw = b"".join(raw[i:i + 4][::-1] for i in range(0, len(raw), 4))
                    address = ipaddress.ip_address(raw)
                    found.add(str(getattr(address, "ipv4_mapped", None) or address))  # ::ffff:127.0.0.1: 127.0.0.1
    return found


def register_tiny_app() -> pytest.MonkeyPatch:
    """Register the tiny test CNN as the Keras application 'tiny_cnn' (32x32, 'tf' scaling) until the
    returned MonkeyPatch is undone."""
    import keras
    from models_for_tests import SIZE, tiny_keras_model

    from pipeline.backbones.keras_apps import KERAS_APPS, KerasApp

    def TinyCNN(weights=None, include_top=True, classifier_activation=None):  # noqa: N802 - a Keras constructor
        model = tiny_keras_model()
        return keras.Model(model.input, model.get_layer("logits").output)

    mp = pytest.MonkeyPatch()
    mp.setitem(KERAS_APPS, "tiny_cnn", KerasApp("TinyCNN", SIZE, "tf", "mobilenet"))
    mp.setattr(keras.applications, "TinyCNN", TinyCNN, raising=False)
    return mp


@pytest.fixture(scope="module")
def tiny_app():
    """The tiny test CNN registered as the Keras application 'tiny_cnn' (32x32, 'tf' scaling)."""
    mp = register_tiny_app()
    yield "tiny_cnn"
    mp.undo()


@pytest.fixture(scope="session")
def tiny_saved_model(tmp_path_factory) -> str:
    """The tiny test CNN (models_for_tests.tiny_keras_model(), seeded: the same weights at every build) as a
    SavedModel folder, exported once per test process for every file that needs one. Tests only read it."""
    from models_for_tests import export_saved_model, tiny_keras_model

    return export_saved_model(tiny_keras_model(), tmp_path_factory.mktemp("tiny-savedmodel") / "sm")


@pytest.fixture(scope="session")
def tiny_frozen_graph(tmp_path_factory) -> tuple[str, str, dict]:
    """The tiny test CNN frozen into a GraphDef .pb once per test process: (path, input tensor, {layer: tensor})."""
    from models_for_tests import frozen_graph_def, tiny_keras_model

    return frozen_graph_def(tiny_keras_model(), tmp_path_factory.mktemp("tiny-frozen") / "frozen.pb")


@pytest.fixture(scope="session")
def tiny_tflite(tmp_path_factory):
    """tiny_tflite(quantized) -> the tiny test CNN converted to a .tflite file (float, or uint8 full-integer),
    each converted once per test process (a conversion takes seconds). Tests only read it."""
    from models_for_tests import tflite_model, tiny_keras_model

    done = {}

    def convert(quantized: bool) -> str:
        if quantized not in done:
            folder = tmp_path_factory.mktemp("tiny-tflite")
            done[quantized] = tflite_model(tiny_keras_model(), folder / ("tinyq.tflite" if quantized else "tiny.tflite"),
                                           quantized=quantized)
        return done[quantized]
    return convert


def run_wide_folder(tmp_path_factory, name: str) -> Path:
    """A folder of this test run that every pytest-xdist worker of it sees (the run's base folder; without
    xdist, this process's): what one worker builds there the others read instead of building it again."""
    base = tmp_path_factory.getbasetemp()
    path = (base.parent if os.environ.get("PYTEST_XDIST_WORKER") else base) / name
    path.mkdir(exist_ok=True)
    return path


@contextlib.contextmanager
def locked(folder: Path):
    """Hold an exclusive lock on `folder` (a lock file beside it) among this run's processes."""
    import fcntl

    with open(folder.parent / f".{folder.name}.lock", "w") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        yield


@pytest.fixture(scope="session")
def tiny_images(tmp_path_factory):
    """12 JPEGs of noise around red, blue and green (4 each, 90x70): (paths, labels), made once per test run
    (shared by the xdist workers)."""
    from models_for_tests import colour_files

    root = run_wide_folder(tmp_path_factory, "tiny-images")
    with locked(root):
        index = root / "index.txt"
        if not index.exists():
            paths, labels = colour_files(root, per_class=4)
            index.write_text("".join(f"{p.name} {c}\n" for p, c in zip(paths, labels)))
    rows = [line.split() for line in index.read_text().splitlines()]
    return [root / name for name, _ in rows], np.asarray([label for _, label in rows])


@pytest.fixture(scope="session")
def catbreeds_features(tmp_path_factory) -> dict:
    """../shared's 1,000 cat-breed photos featurized once per test run (shared by the xdist workers) by the
    bundled MobileNetV2, penultimate and logits from one forward pass, with the CSV's breed labels:
    {layer: store path}. The tests that need these features take them with ``reuse_from`` (their own runs then
    read and hash each photo, and featurize none): one forward pass over the set instead of one per test."""
    import pipeline

    images, labels = needs_shared("data", "catbreeds", "images"), needs_shared("data", "catbreeds", "labels.csv")
    root = run_wide_folder(tmp_path_factory, "catbreeds")
    with locked(root):
        if not (root / "done").exists():
            pipeline.featurize(images, "mobilenet_v2_quant", "penultimate,logits", out=root / "{layer}",
                               labels=labels, progress=False)
            (root / "done").write_text("")
    return {layer: root / layer for layer in ("penultimate", "logits")}


@pytest.fixture(scope="session")
def tiny_head_export(request, tmp_path_factory, tiny_images):
    """tiny_head_export(backbone, head="linear_svm", pca=None, fmt="saved_model") -> (classifier, export): a
    calibrated head trained on tiny_images over `backbone` and exported, each once per test run for every
    test file that only reads it (a worker's first export of a preprocessing traces the whole TensorFlow
    decoder: seconds); an xdist
    worker finding it built by another loads the head file saved beside the export. `backbone`: "keras"
    (the tiny CNN as Keras application 'tiny_cnn'; tests that score with the classifier request the tiny_app
    fixture), "keras_flip" (the same with tta="flip"), "savedmodel" or "graphdef" (the tiny CNN as such a
    graph, conftest's tiny_saved_model / tiny_frozen_graph) or "mobilenet_v2_quant" (the bundled TFLite
    model). The classifier's metrics are those `train` records (head, n_train, features)."""
    from models_for_tests import SIZE, calibrated_classifier

    from pipeline.backbones import create_backbone
    from pipeline.heads.classifier import Classifier

    root = run_wide_folder(tmp_path_factory, "tiny-head-exports")
    done = {}

    def backbone(kind):
        if kind.startswith("keras"):
            return create_backbone("tiny_cnn", "penultimate", weights="random", tta="flip" if "flip" in kind else None)
        if kind == "savedmodel":  # the graph fixtures built only when asked for (seconds each)
            return create_backbone(request.getfixturevalue("tiny_saved_model"), "penultimate", input_size=SIZE,
                                   scaling="tf")
        if kind == "graphdef":
            path, inp, _ = request.getfixturevalue("tiny_frozen_graph")
            return create_backbone(path, "penultimate", input_size=SIZE, scaling="tf", input_tensor=inp)
        return create_backbone(kind, "penultimate")

    def build(kind, head, pca, fmt, folder: Path):
        paths, labels = tiny_images
        mp = register_tiny_app()
        try:
            clf = calibrated_classifier(backbone(kind), paths, labels, head, pca)
            clf.metrics = {"head": head, "n_train": len(paths), "features": str(paths[0].parent)}
            out = clf.export(folder / ("model.tflite" if fmt == "tflite" else "model"), format=fmt, force=True)
            clf.save(folder / "head.head.npz")  # last: its presence says the export is complete
        finally:
            mp.undo()
        return clf, out

    def export(kind="keras", head="linear_svm", pca=None, fmt="saved_model"):
        key = kind, head, pca, fmt
        if key not in done:
            folder = root / f"{kind}-{head}-{pca}-{fmt}"
            folder.mkdir(exist_ok=True)
            with locked(folder):
                if (folder / "head.head.npz").exists():
                    done[key] = (Classifier.load(folder / "head.head.npz"),
                                 folder / ("model.tflite" if fmt == "tflite" else "model"))
                else:
                    done[key] = build(kind, head, pca, fmt, folder)
        return done[key]
    return export


def jax_child_env(**extra: str) -> dict:
    """The environment of a child process that runs Keras on JAX: XLA at optimisation level 0. The children
    compile the initializers of a Keras application with random weights and its forward pass, and compare
    features, not speed: level 0 compiles them in less time (MobileNetV2's child: 40 -> 29 s of CPU; ResNet50's: 22 -> 17 s)."""
    return {**os.environ, "PYTHONPATH": str(REPO), "XLA_FLAGS": _xla_level0(os.environ.get("XLA_FLAGS")), **extra}


# The longest test files first (seconds on 2 cores, measured with --durations): with `--dist loadfile`
# each file goes whole to the next free worker, so a long file left for the end keeps one worker busy
# while the other idles (the Makefile passes --no-loadscope-reorder, which keeps this order).
LONGEST_FILES = ("tests/engines/test_ray.py", "tests/export/test_export.py", "tests/realdata/test_reference.py",
                 "tests/training/test_multilabel.py", "tests/decode/test_tfdecode.py",
                 "tests/backbones/test_registry.py", "tests/backbones/test_backbones.py",
                 "tests/featurizer/test_layers.py", "tests/serving/test_serve.py", "tests/decode/test_jaxresize.py",
                 "tests/backbones/test_keras_backend.py", "tests/serving/test_serve_export.py",
                 "tests/featurizer/test_decodepool.py", "tests/cli/test_first_hour.py",
                 "tests/featurizer/test_gpumapper.py", "tests/serving/test_predictors.py", "tests/cli/test_first_day.py",
                 "tests/training/test_estimator.py", "tests/reports/test_report.py")


def pytest_collection_modifyitems(config, items):
    first = {path: rank for rank, path in enumerate(LONGEST_FILES)}
    items.sort(key=lambda item: first.get(item.nodeid.split("::", 1)[0], len(first)))  # stable: the rest keep order
