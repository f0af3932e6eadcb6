"""Featurization benchmark: every way of turning catsdogs into features, side by side in one run.

    make bench                      # inception_v3, vgg16 (random weights) and the bundled TFLite model
    .venv/bin/python bench/bench.py --models tflite --n 400

For each model it times, on the same images and batch size:
  bound       the forward-only bound: the compiled tf.function (or TFLite interpreters, one per
              core) on images already decoded and in memory; no I/O, no decoding
  e2e         the project end to end: pipeline.featurize on the folder into a fresh store
              (model already built; the one-time build is reported apart as `build_s`)
  warm        pipeline.featurize again on the same store: everything is cached
  predict     Keras model.predict on the in-memory batches (Keras models)
  keras_ds    keras.utils.image_dataset_from_directory + model.predict (Keras models)
  one_image   the transfer-learning talk's loop: load one image, preprocess, one predict call each
  plain_loop  (TFLite) one thread: Pillow decode, crop, resize, one invoke per image
  bf16_bound  (--precision bfloat16 models) the bound with bfloat16 compute (Keras mixed_bfloat16),
              and the cosine similarity of its features to fp32
  onednn_bf16_bound  the fp32 model with oneDNN's auto-mixed bfloat16 graph rewrite (grappler option
              auto_mixed_precision_onednn_bfloat16), and its cosine to fp32
  cpu         (--models cpu) issue 30's CPU limit on the bundled TFLite model: the plain loop in one process,
              two plain loops in two processes at once, the featurize CLI cold (start-up included and
              excluded), a no-op run, CPU ms per image of each and the imports of a cold start
              (bench/cpulimit.py)
  decode      (--models decode) the decode stage alone at 299 px, read + sha256 + decode, against the
              number of cores: a thread pool and pipeline.featurizer.decodepool's processes; and featurize end to
              end with --decode thread and --decode process (mobilenet_v2, random weights)
and, for the TFLite model, the peak memory (max RSS of a `featurize` subprocess) for 1000 and
4000 images. `--models layers` times featurize with `--layer penultimate` (one store) and the
default pass (penultimate + predictions: one forward pass, two stores) on the bundled TFLite model,
fresh stores and warm reruns, interleaved (`--n 64`: 256 images). `--models ray` times featurize
in-process (2 threads) and on a local Ray cluster of 2
CPUs (the same model, fresh stores, interleaved). Ratios are computed within this one run: machines are noisy, absolute figures vary.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import pipeline  # noqa: E402
from pipeline.backbones import create_backbone  # noqa: E402
from pipeline.backbones.keras_apps import cpu_has_bf16  # noqa: E402
from pipeline.dataset.listing import list_images  # noqa: E402
from pipeline.decode.images import decode, read_bytes  # noqa: E402
from pipeline.featurizer.decodepool import DecodePool  # noqa: E402
from pipeline.machine import usable_cores  # noqa: E402
from pipeline.featurizer.prepare import prepare as _prepare  # noqa: E402
from pipeline.featurizer.reader import bounded_map  # noqa: E402

from cpulimit import bench_cpu, cpu_report  # noqa: E402 (bench/, this script's folder)

DEFAULT_DATA = REPO.parent / "shared" / "data" / "catsdogs" / "train"


def place(src: Path, dst: Path) -> None:
    """A hard link (or a copy): symlinks leaving the data folder are, rightly, not followed by the walk."""
    try:
        os.link(src, dst)
    except OSError:
        shutil.copyfile(src, dst)


def subset(data: Path, n: int, dest: Path) -> Path:
    """A folder with the first n/2 images of each class of `data`, for every method to share."""
    records = list_images(data).records
    by_class: dict[str, list] = {}
    for r in records:
        by_class.setdefault(r.label, []).append(r)
    per = max(1, n // len(by_class))
    for label, rs in by_class.items():
        (dest / label).mkdir(parents=True, exist_ok=True)
        for r in rs[:per]:
            place(r.path, dest / label / r.path.name)
    return dest


def rate(n: int, seconds: float) -> float:
    return n / seconds if seconds > 0 else float("inf")


def timed(fn):
    t = time.perf_counter()
    out = fn()
    return time.perf_counter() - t, out


def decoded(folder: Path, pre) -> np.ndarray:
    return np.stack([decode(read_bytes(r.path)[0], pre, r.path) for r in list_images(folder).records])


def bound(bb, images: np.ndarray) -> float:
    """img/s of the backbone's own batched call on in-memory uint8 images (after one warm-up batch)."""
    bs = bb.batch_size
    bb(images[:bs])
    t, _ = timed(lambda: [bb(images[i:i + bs]) for i in range(0, len(images), bs)])
    return rate(len(images), t)


def e2e(bb, folder: Path, store: Path) -> tuple[float, float]:
    """(cold img/s, warm img/s) of pipeline.featurize with an already built backbone."""
    n = len(list_images(folder).records)
    shutil.rmtree(store, ignore_errors=True)
    cold, _ = timed(lambda: pipeline.featurize(folder, bb, out=store, progress=False))
    warm, _ = timed(lambda: pipeline.featurize(folder, bb, out=store, progress=False))
    return rate(n, cold), rate(n, warm)


def interleaved(methods: dict, repeat: int) -> dict:
    """Run every method once per round, `repeat` rounds, and keep each one's median img/s.

    Interleaving spreads the machine's slow and fast moments over all methods alike.
    """
    runs: dict[str, list[float]] = {}
    for _ in range(repeat):
        for name, fn in methods.items():
            out = fn()
            for k, v in (out.items() if isinstance(out, dict) else [(name, out)]):
                runs.setdefault(k, []).append(v)
    return {k: float(np.median(v)) for k, v in runs.items()}


def keras_methods(name: str, folder: Path, images: np.ndarray, one_n: int) -> dict:
    """model.predict, image_dataset_from_directory + predict, and the one-image-per-call loop."""
    import keras
    import tensorflow as tf

    from pipeline.backbones.keras_apps import KERAS_APPS

    app = KERAS_APPS[name]
    model = getattr(keras.applications, app.constructor)(weights=None, include_top=False, pooling="avg")
    prep = __import__(f"keras.applications.{app.module}", fromlist=["preprocess_input"]).preprocess_input
    x = prep(images.astype(np.float32))
    model.predict(x[:32], batch_size=32, verbose=0)
    out = {}
    t, _ = timed(lambda: model.predict(x, batch_size=32, verbose=0))
    out["predict"] = rate(len(x), t)
    size = (app.size, app.size)

    def from_directory():
        ds = keras.utils.image_dataset_from_directory(folder, labels=None, image_size=size, batch_size=32,
                                                      shuffle=False, crop_to_aspect_ratio=True, verbose=False)
        return model.predict(ds.map(lambda b: prep(b)), verbose=0)
    t, feats = timed(from_directory)
    out["keras_ds"] = rate(len(feats), t)
    paths = [r.path for r in list_images(folder).records][:one_n]

    def one_by_one():
        for p in paths:
            img = keras.utils.img_to_array(keras.utils.load_img(p, target_size=size))
            model.predict(prep(img[None]), verbose=0)
    t, _ = timed(one_by_one)
    out["one_image"] = rate(len(paths), t)
    model = None  # drop the network before clearing the session
    tf.keras.backend.clear_session()
    return out


def cosine(a: np.ndarray, b: np.ndarray) -> float:
    a, b = a.astype(np.float64), b.astype(np.float64)
    return float(np.min(np.sum(a * b, 1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1))))


def onednn_bf16(name: str, images: np.ndarray, ref: np.ndarray) -> dict:
    """The fp32 model under oneDNN's auto-mixed bfloat16 rewrite (applies to graphs traced while it is on)."""
    import tensorflow as tf

    tf.config.optimizer.set_experimental_options({"auto_mixed_precision_onednn_bfloat16": True})
    try:
        bb = create_backbone(name, "penultimate", weights="random")
        bb.load()
        return {"onednn_bf16_bound": bound(bb, images), "onednn_bf16_cosine_min": cosine(ref, bb(images[:64]))}
    finally:
        tf.config.optimizer.set_experimental_options({"auto_mixed_precision_onednn_bfloat16": False})


def bench_keras(name: str, data: Path, n: int, one_n: int, work: Path, bf16: bool, repeat: int,
                jit: bool = False) -> dict:
    folder = subset(data, n, work / f"{name}-data")
    bb = create_backbone(name, "penultimate", weights="random")
    build, _ = timed(bb.load)
    images = decoded(folder, bb.preprocess)
    res = {"model": name, "n": len(images), "batch": bb.batch_size, "build_s": build, "repeat": repeat}
    store = work / f"{name}-store"
    methods = {"bound": lambda: bound(bb, images),
               "e2e": lambda: dict(zip(("e2e", "warm"), e2e(bb, folder, store)))}
    if jit:
        xla = create_backbone(name, "penultimate", weights="random", jit_compile=True)
        xla.load()
        methods["jit_bound"] = lambda: bound(xla, images)
    res.update(interleaved(methods, repeat))
    if bf16:
        ref = bb(images[:64])
        fast = create_backbone(name, "penultimate", weights="random", precision="bfloat16")  # same seeded weights
        fast.load()
        res["bf16_bound"] = bound(fast, images)
        res["bf16_cosine_min"] = cosine(ref, fast(images[:64]))
        res.update(onednn_bf16(name, images, ref))
        res["native_bf16"] = cpu_has_bf16()
    res.update(keras_methods(name, folder, images, one_n))
    return res


def plain_tflite_loop(path: Path, folder: Path) -> float:
    """One thread: decode, centre-crop, resize and one invoke per image (the usual script)."""
    from ai_edge_litert.interpreter import Interpreter
    from PIL import Image

    it = Interpreter(str(path), num_threads=1)
    it.allocate_tensors()
    inp, outp = it.get_input_details()[0], it.get_output_details()[0]
    paths = [r.path for r in list_images(folder).records]

    def loop():
        for p in paths:
            im = Image.open(p).convert("RGB")
            s = min(im.size)
            left, top = (im.width - s) // 2, (im.height - s) // 2
            im = im.resize((224, 224), Image.BILINEAR, box=(left, top, left + s, top + s))
            it.set_tensor(inp["index"], np.asarray(im, np.uint8)[None])
            it.invoke()
            it.get_tensor(outp["index"])
    t, _ = timed(loop)
    return rate(len(paths), t)


_RSS_CHILD = """
import sys
from pipeline.cli import main
rc = main(sys.argv[1:])
hwm = [l for l in open("/proc/self/status") if l.startswith("VmHWM:")][0].split()[1]
print("VmHWM_KB", hwm)
sys.exit(rc)
"""


def peak_rss_mb(folder: Path, store: Path) -> float:
    """Peak RSS (MiB, VmHWM) of a fresh process featurizing `folder` (measured inside it: a forked
    child's getrusage would inherit this process's high-water mark)."""
    args = ["featurize", str(folder), "--out", str(store), "--no-progress"]
    out = subprocess.run([sys.executable, "-c", _RSS_CHILD, *args], cwd=REPO, check=True, capture_output=True,
                         text=True).stdout
    return int(out.split("VmHWM_KB")[-1].split()[0]) / 1024


def replicate(data: Path, copies: int, dest: Path) -> Path:
    """`copies` x the images of `data` under distinct names."""
    for r in list_images(data).records:
        d = dest / r.label
        d.mkdir(parents=True, exist_ok=True)
        for k in range(copies):
            place(r.path, d / f"{k}-{r.path.name}")
    return dest


def bench_tflite(data: Path, n: int, work: Path, memory: bool, repeat: int) -> dict:
    folder = subset(data, n, work / "tflite-data")
    bb = create_backbone("mobilenet_v2_quant", "penultimate")
    build, _ = timed(bb.load)
    images = decoded(folder, bb.preprocess)
    res = {"model": "mobilenet_v2_quant (TFLite)", "n": len(images), "batch": bb.batch_size, "build_s": build,
           "repeat": repeat}
    store = work / "tflite-store"
    res.update(interleaved({"bound": lambda: bound(bb, images),
                            "e2e": lambda: dict(zip(("e2e", "warm"), e2e(bb, folder, store))),
                            "plain_loop": lambda: plain_tflite_loop(bb.path, folder)}, repeat))
    if memory:
        one = replicate(data, 1, work / "mem1")
        four = replicate(data, 4, work / "mem4")
        res["rss_1000_mb"] = peak_rss_mb(one, work / "mem1-store")
        res["rss_4000_mb"] = peak_rss_mb(four, work / "mem4-store")
    return res


class _DecodeOnly:
    per_image = False

    def __init__(self, pre):
        self.preprocess = pre


def decode_rate(records, pre, mode: str, workers: int) -> float:
    """img/s of the decode stage alone (stat, read + sha256, decode, crop, resize) with nothing cached."""
    known = {"rows": {}, "bad": {}}
    if mode == "process":
        run = lambda: list(DecodePool(pre, workers, window=256).map(records, known))  # noqa: E731
    else:
        run = lambda: list(bounded_map(lambda r: _prepare(r, _DecodeOnly(pre), known), records, workers,  # noqa: E731
                                       max(64, 4 * workers)))
    t, out = timed(run)
    assert len(out) == len(records)
    return rate(len(records), t)


def bench_decode(data: Path, n: int, work: Path, repeat: int) -> dict:
    """Decode img/s against cores (threads vs processes), and featurize end to end with each decode mode."""
    from pipeline.preprocess import Preprocess

    folder = subset(data, n, work / "decode-data")
    records = list_images(folder).records
    pre = Preprocess(size=(299, 299), scaling="tf")
    cores = usable_cores()
    methods = {f"decode_{mode}_{k}": (lambda mode=mode, k=k: decode_rate(records, pre, mode, k))
               for k in sorted({1, cores}) for mode in ("thread", "process")}
    bb = create_backbone("mobilenet_v2", "penultimate", weights="random")
    bb.load()
    for mode in ("thread", "process"):
        methods[f"e2e_{mode}"] = lambda mode=mode: _e2e_decode(bb, folder, work / f"decode-{mode}-store", mode)
    res = {"model": f"decode stage, 299 px ({cores} usable cores)", "n": len(records), "cores": cores,
           "repeat": repeat, "batch": bb.batch_size}
    res.update(interleaved(methods, repeat))
    return res


def _e2e_decode(bb, folder: Path, store: Path, mode: str) -> float:
    n = len(list_images(folder).records)
    shutil.rmtree(store, ignore_errors=True)
    t, _ = timed(lambda: pipeline.featurize(folder, bb, out=store, progress=False, decode=mode))
    return rate(n, t)


_IMPORT_TF = """
import time
t = time.perf_counter()
import tensorflow
print(time.perf_counter() - t, [l for l in open("/proc/self/status") if l.startswith("VmHWM:")][0].split()[1])
"""


def stage_costs(data: Path, n: int = 200) -> dict:
    """ms per image of each stage on one core, and what importing TensorFlow costs (what TFLite runs avoid)."""
    import io

    from PIL import Image

    from pipeline.backbones.tflite import _open_interpreter, with_output

    bb = create_backbone("mobilenet_v2_quant", "penultimate").load()
    records = list_images(data).records[:n]
    blobs = [read_bytes(r.path)[0] for r in records]

    def per_image(fn, items):
        t, _ = timed(lambda: [fn(x) for x in items])
        return 1000 * t / len(items)

    def plain_decode(b):
        im = Image.open(io.BytesIO(b)).convert("RGB")
        side = min(im.size)
        left, top = (im.width - side) // 2, (im.height - side) // 2
        return im.resize((224, 224), Image.BILINEAR, box=(left, top, left + side, top + side))

    image = decode(blobs[0], bb.preprocess)[None]
    invoke = {}
    for key, it in (("invoke_added_output_ms", _open_interpreter(bb.path, with_output(bb.path, bb.tensor), num_threads=1)),
                    ("invoke_preserve_all_ms", _open_interpreter(bb.path, num_threads=1))):
        index = it.get_input_details()[0]["index"]

        def run(_):
            it.set_tensor(index, image)
            it.invoke()
        run(None)
        invoke[key] = per_image(run, range(100))
    out = subprocess.run([sys.executable, "-c", _IMPORT_TF], capture_output=True, text=True, check=True).stdout
    seconds, hwm_kb = out.split()[-2:]
    return {"read_hash_ms": per_image(lambda r: read_bytes(r.path), records),
            "decode_ms": per_image(lambda b: decode(b, bb.preprocess), blobs),
            "plain_decode_ms": per_image(plain_decode, blobs), **invoke,
            "import_tf_s": float(seconds), "import_tf_mb": int(hwm_kb) / 1024}


def bench_layers(data: Path, n: int, work: Path, repeat: int) -> dict:
    """img/s of featurize with --layer penultimate (one store) and with the default pass (penultimate + the
    predictions of the same pass, two stores), bundled TFLite, fresh stores then warm reruns, interleaved.
    Both build their backbone from the name in every run, as the CLI does (the default also reads the
    network's structure to find its classifier)."""
    folder = subset(data, n, work / "layers-data")
    count = len(list_images(folder).records)
    layers = {"one_layer": "penultimate", "default": None}

    def run(name):
        def go():
            out = work / f"layers-{name}"
            for f in work.glob(f"layers-{name}*"):
                shutil.rmtree(f)
            cold, _ = timed(lambda: pipeline.featurize(folder, layer=layers[name], out=out, progress=False))
            warm, _ = timed(lambda: pipeline.featurize(folder, layer=layers[name], out=out, progress=False))
            return {name: rate(count, cold), f"{name}_warm": rate(count, warm)}
        return go

    res = interleaved({name: run(name) for name in layers}, repeat)
    return {"layers_n": count, "layers_one_ips": res["one_layer"], "layers_two_ips": res["default"],
            "layers_cost_ratio": res["one_layer"] / res["default"],
            "layers_warm_s": (count / res["one_layer_warm"], count / res["default_warm"]),
            "layers_warm_ratio": res["one_layer_warm"] / res["default_warm"], "load_average": os.getloadavg()}


def bench_ray(data: Path, n: int, work: Path, repeat: int, cpus: int = 2) -> dict:
    """img/s of featurize in-process (threads on `cpus` cores) and on a local Ray cluster of `cpus` CPUs:
    bundled TFLite model, fresh stores, interleaved; the cluster is started once, outside the timing.

    Timed on n images and on a quarter of them, so that each engine's time is fitted as
    fixed + images / rate; from the fits, the image count above which Ray's overhead is <= 15%."""
    import ray

    from pipeline.engines.ray import RayCluster

    folders = {"large": subset(data, n, work / "ray-data"), "small": subset(data, n // 4, work / "ray-small")}
    counts = {size: len(list_images(f).records) for size, f in folders.items()}
    ray.init(num_cpus=cpus, include_dashboard=False, log_to_driver=False)

    def run(engine, size):
        def go():
            out = work / f"ray-{engine}"
            shutil.rmtree(out, ignore_errors=True)
            kw = {"engine": "ray", "cluster": RayCluster()} if engine == "ray" else {"workers": cpus}
            t, _ = timed(lambda: pipeline.featurize(folders[size], "mobilenet_v2_quant", out=out, progress=False,
                                                    **kw))
            return t
        return go

    try:
        secs = interleaved({f"{e}_{s}": run(e, s) for s in ("large", "small") for e in ("local", "ray")}, repeat)
    finally:
        ray.shutdown()
    fits = {e: _line(counts["small"], secs[f"{e}_small"], counts["large"], secs[f"{e}_large"])
            for e in ("local", "ray")}
    return {"ray_n": counts["large"], "ray_small_n": counts["small"], "ray_cpus": cpus,
            "ray_local_ips": rate(counts["large"], secs["local_large"]), "ray_ray_ips": rate(counts["large"],
                                                                                             secs["ray_large"]),
            "ray_overhead": secs["ray_large"] / secs["local_large"] - 1,
            "ray_small_overhead": secs["ray_small"] / secs["local_small"] - 1,
            "ray_fixed_s": fits["ray"][0] - fits["local"][0], "ray_rate_ratio": fits["ray"][1] / fits["local"][1],
            "ray_n_at_15": _amortized(fits["local"], fits["ray"], 0.15)}


def _line(n1: int, t1: float, n2: int, t2: float) -> tuple[float, float]:
    """(fixed seconds, seconds per image) of the line through two (images, seconds) points."""
    per = (t2 - t1) / (n2 - n1)
    return t1 - n1 * per, per


def _amortized(local: tuple[float, float], ray: tuple[float, float], target: float) -> float:
    """Images from which ray's time is within `target` of local's (inf: Ray's per-image cost alone exceeds it)."""
    margin = (1 + target) * local[1] - ray[1]
    if margin <= 0:
        return float("inf")
    return max(0.0, (ray[0] - (1 + target) * local[0]) / margin)


def cold_cli_vs_cached(data: Path, work: Path, repeat: int) -> dict:
    """Wall time (median) of the CLI, cold (empty store) and fully cached, as a user runs it."""
    store = work / "cli-store"
    cmd = [sys.executable, "-m", "pipeline", "featurize", str(data), "--out", str(store), "--no-progress"]
    colds, warms = [], []
    for _ in range(repeat):
        shutil.rmtree(store, ignore_errors=True)
        colds.append(timed(lambda: subprocess.run(cmd, cwd=REPO, check=True, capture_output=True))[0])
        warms.append(timed(lambda: subprocess.run(cmd, cwd=REPO, check=True, capture_output=True))[0])
    return {"cli_cold_s": float(np.median(colds)), "cli_cached_s": float(np.median(warms))}


def report(results: list[dict], extra: dict) -> str:
    lines = []
    for r in results:
        if "cores" in r:
            lines.append(decode_report(r))
            continue
        b = r["bound"]
        lines.append(f"\n{r['model']}  ({r['n']} images, batch {r['batch']}, model build {r['build_s']:.1f} s, "
                     f"median of {r['repeat']} interleaved rounds)")
        lines.append(f"  {'method':<44} {'img/s':>8} {'x bound':>8}")
        for key, label in (("bound", "forward-only bound (in memory, compiled call)"),
                           ("e2e", "project end to end (featurize)"), ("warm", "warm re-run (all cached)"),
                           ("predict", "Keras model.predict (in memory)"),
                           ("keras_ds", "image_dataset_from_directory + predict"),
                           ("one_image", "one image per predict call (the talk)"),
                           ("plain_loop", "plain TFLite loop, 1 thread"),
                           ("bf16_bound", "bound, bfloat16 (Keras mixed_bfloat16)"),
                           ("onednn_bf16_bound", "bound, oneDNN auto-mixed bfloat16 rewrite"),
                           ("jit_bound", "bound, XLA jit_compile")):
            if key in r:
                lines.append(f"  {label:<44} {r[key]:8.1f} {r[key] / b:8.2f}")
        if "plain_loop" in r:
            lines.append(f"  end to end / plain loop: {r['e2e'] / r['plain_loop']:.2f}x")
        if "one_image" in r:
            lines.append(f"  end to end / one-image loop: {r['e2e'] / r['one_image']:.1f}x; "
                         f"/ image_dataset_from_directory: {r['e2e'] / r['keras_ds']:.2f}x")
        if "bf16_bound" in r:
            lines.append(f"  bfloat16 / fp32 bound: {r['bf16_bound'] / b:.2f}x, min cosine to fp32 "
                         f"{r['bf16_cosine_min']:.5f}")
            lines.append(f"  oneDNN auto-mixed bfloat16 / fp32 bound: {r['onednn_bf16_bound'] / b:.2f}x, min cosine "
                         f"to fp32 {r['onednn_bf16_cosine_min']:.5f}")
            if not r["native_bf16"]:
                lines.append("  this CPU has no native bfloat16 (no avx512_bf16 or amx_bf16 in /proc/cpuinfo): "
                             "bfloat16 is emulated here, so these bf16 figures say nothing of an AMX CPU")
        if "rss_1000_mb" in r:
            lines.append(f"  peak RSS featurizing 1000 images {r['rss_1000_mb']:.0f} MiB, 4000 images "
                         f"{r['rss_4000_mb']:.0f} MiB ({r['rss_4000_mb'] / r['rss_1000_mb']:.3f}x)")
    if "plain_2_ips" in extra:
        lines.append(cpu_report(extra))
    if "layers_cost_ratio" in extra:
        lines.append(f"\nthe default pass (mobilenet_v2_quant, {extra['layers_n']} images, fresh stores): --layer "
                     f"penultimate {extra['layers_one_ips']:.1f} img/s, default (penultimate + predictions) "
                     f"{extra['layers_two_ips']:.1f} img/s: it costs {extra['layers_cost_ratio']:.3f}x one layer; "
                     f"warm reruns {extra['layers_warm_ratio']:.3f}x ({extra['layers_warm_s'][0]:.2f} s vs "
                     f"{extra['layers_warm_s'][1]:.2f} s); load average "
                     f"{', '.join(f'{v:.1f}' for v in extra['load_average'])}")
    if "ray_overhead" in extra:
        lines.append(f"\nin-process vs Ray local (mobilenet_v2_quant, {extra['ray_n']} images, {extra['ray_cpus']} "
                     f"CPUs, fresh stores): in-process {extra['ray_local_ips']:.1f} img/s, Ray "
                     f"{extra['ray_ray_ips']:.1f} img/s: Ray overhead {100 * extra['ray_overhead']:+.0f}% "
                     f"({extra['ray_small_n']} images: {100 * extra['ray_small_overhead']:+.0f}%); fitted: Ray's "
                     f"fixed cost {extra['ray_fixed_s']:.1f} s, per-image cost {extra['ray_rate_ratio']:.2f}x "
                     f"in-process, overhead <= 15% "
                     + (f"from {extra['ray_n_at_15']:.0f} images" if extra["ray_n_at_15"] != float("inf")
                        else "at no size (Ray's per-image cost alone is over 1.15x)"))
    if "cli_cold_s" in extra:
        lines.append(f"\nCLI on the whole folder: cold {extra['cli_cold_s']:.1f} s, fully cached "
                     f"{extra['cli_cached_s']:.2f} s ({extra['cli_cold_s'] / extra['cli_cached_s']:.1f}x faster)")
    if "decode_ms" in extra:
        lines.append(f"\nper image on one core: read+sha256 {extra['read_hash_ms']:.2f} ms, decode+crop+resize "
                     f"{extra['decode_ms']:.2f} ms (plain loop's {extra['plain_decode_ms']:.2f} ms), TFLite invoke "
                     f"{extra['invoke_added_output_ms']:.2f} ms reading the layer as an added output, "
                     f"{extra['invoke_preserve_all_ms']:.2f} ms with every tensor preserved")
        lines.append(f"importing TensorFlow: {extra['import_tf_s']:.1f} s, peak RSS {extra['import_tf_mb']:.0f} MiB")
    return "\n".join(lines)


def decode_report(r: dict) -> str:
    lines = [f"\n{r['model']}  ({r['n']} images, median of {r['repeat']} interleaved rounds)",
             f"  {'decode workers':<44} {'threads':>8} {'procs':>8}"]
    for k in sorted({int(key.rsplit('_', 1)[1]) for key in r if key.startswith("decode_thread_")}):
        lines.append(f"  {k:<44} {r[f'decode_thread_{k}']:8.1f} {r[f'decode_process_{k}']:8.1f}")
    lines.append(f"  featurize mobilenet_v2 end to end (batch {r['batch']}): --decode thread {r['e2e_thread']:.1f} "
                 f"img/s, --decode process {r['e2e_process']:.1f} img/s ({r['e2e_process'] / r['e2e_thread']:.2f}x)")
    return "\n".join(lines)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data", type=Path, default=Path(os.environ.get("TFP_BENCH_DATA", DEFAULT_DATA)))
    p.add_argument("--models", default="inception_v3,vgg16,tflite,cpu,stages,decode,layers,ray",
                   help="Keras names, 'tflite', 'cpu' (plain loops in one and two processes vs the featurize CLI, "
                        "start-up), 'stages' (per-stage costs on one core), 'decode' (decode stage "
                        "against cores, threads vs processes), 'layers' (--layer penultimate vs the default pass: "
                        "two layers from one pass) and "
                        "'ray' (in-process vs a local 2-CPU Ray cluster)")
    p.add_argument("--n", type=int, default=256, help="images per Keras model (TFLite: 4x, cpu: 2x)")
    p.add_argument("--one-image-n", type=int, default=32, help="images for the one-image-per-call loop")
    p.add_argument("--no-memory", action="store_true", help="skip the 1000 vs 4000 images memory runs")
    p.add_argument("--bf16", default="inception_v3", help="Keras models to also time with bfloat16")
    p.add_argument("--jit", default="", help="Keras models to also time with XLA jit_compile")
    p.add_argument("--repeat", type=int, default=3, help="interleaved rounds per method; medians are reported")
    p.add_argument("--json", type=Path, help="also write the figures here")
    a = p.parse_args(argv)
    if not a.data.is_dir():
        print(f"benchmark data {a.data} is absent (it lives in ../shared; set TFP_BENCH_DATA)", file=sys.stderr)
        return 2
    work = Path(tempfile.mkdtemp(prefix="tfp-bench-"))
    results, extra = [], {}
    try:
        for m in a.models.split(","):
            if m == "tflite":
                results.append(bench_tflite(a.data, 4 * a.n, work, not a.no_memory, a.repeat))
                extra.update(cold_cli_vs_cached(a.data, work, a.repeat))
            elif m == "cpu":
                from pipeline.backbones.tflite import BUNDLED_MODELS

                extra.update(bench_cpu(subset(a.data, 2 * a.n, work / "cpu-data"),
                                       BUNDLED_MODELS["mobilenet_v2_quant"].path, work, a.repeat))
                print(cpu_report(extra), flush=True)
            elif m == "stages":
                extra.update(stage_costs(a.data))
            elif m == "decode":
                results.append(bench_decode(a.data, 2 * a.n, work, a.repeat))
            elif m == "layers":
                extra.update(bench_layers(a.data, 4 * a.n, work, a.repeat))
            elif m == "ray":
                extra.update(bench_ray(a.data, 4 * a.n, work, a.repeat))
            else:
                results.append(bench_keras(m, a.data, a.n, a.one_image_n, work, m in a.bf16.split(","), a.repeat,
                                           m in a.jit.split(",")))
            if m not in ("stages", "layers", "ray", "cpu"):
                print(report(results[-1:], {}), flush=True)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    header = (f"{time.strftime('%Y-%m-%d')} {platform.processor() or platform.machine()}, {os.cpu_count()} cores, "
              f"python {platform.python_version()}, max RSS of this process "
              f"{resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024:.0f} MiB")
    print("\n==== summary: " + header + report(results, extra))
    if a.json:
        a.json.write_text(json.dumps({"header": header, "results": results, **extra}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
