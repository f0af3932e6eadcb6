"""GPU benchmark without TensorFlow: decode img/s, featurize end to end from JPEG, forward bound, GPU/CPU cosine.

Runs on a bare GPU machine that has Python, JAX (and PyTorch) for CUDA but no TensorFlow, with the
small wheels and JPEGs that ``make bench-gpu-prepare`` puts in ``.gpu/`` (BENCHMARKS.md says how):

    make bench-gpu                                   # on the GPU machine
    python3 bench/gpu.py --images .gpu/imgs --smoke  # here, on CPU: checks that the script runs

For each model (Keras application, random weights saved once to a .weights.h5 file and loaded by
both sides), precision and decode mode it prints:
  bound        img/s of the backbone's own batched call on uint8 images already in memory
  e2e          pipeline.featurize on a folder of JPEGs into a fresh store: --decode process (Pillow in
               worker processes) and --decode gpu with each GPU JPEG library that loads (nvimgcodec,
               torchvision), side by side
  cosine_min   lowest cosine between this run's features and float32 features of the same files
               computed on the CPU from Pillow's pixels (a subprocess with JAX_PLATFORMS=cpu)
and, once, the decode stage's img/s (read + sha256 + decode at 299 px) with threads and processes, and
per GPU library the pixel parity with Pillow (max and mean |delta| of the network-sized uint8 images) and
whether the JAX resize on the GPU gives Pillow's pixels exactly for the same decoded input.
TensorFlow is never imported; the script fails if it was.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

os.environ["KERAS_BACKEND"] = "jax"
os.environ.setdefault("XLA_PYTHON_CLIENT_PREALLOCATE", "false")
REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import numpy as np  # noqa: E402

import pipeline  # noqa: E402
from pipeline.backbones import create_backbone  # noqa: E402
from pipeline.backbones.keras_apps import KERAS_APPS  # noqa: E402
from pipeline.dataset.listing import list_images  # noqa: E402
from pipeline.decode import gpujpeg, jaxresize  # noqa: E402
from pipeline.decode.images import crop_box, decode  # noqa: E402
from pipeline.featurizer.decodepool import DecodePool, default_workers  # noqa: E402
from pipeline.machine import usable_cores  # noqa: E402
from pipeline.featurizer.prepare import prepare as _prepare  # noqa: E402
from pipeline.featurizer.reader import bounded_map  # noqa: E402
from pipeline.featurizer.stages import line as stages_line  # noqa: E402
from pipeline.preprocess import Preprocess  # noqa: E402

# Featurize FOLDER with MODEL and WEIGHTS in float32 on the CPU (JAX_PLATFORMS=cpu) into STORE.
_CPU_REFERENCE = """
import sys, pipeline
folder, model, weights, store = sys.argv[1:]
pipeline.featurize(folder, model, weights=weights, out=store, keras_backend="jax", decode="thread", progress=False)
"""


def rate(n: int, seconds: float) -> float:
    return n / seconds if seconds > 0 else float("inf")


def timed(fn):
    t = time.perf_counter()
    out = fn()
    return time.perf_counter() - t, out


def replicate(images: Path, n: int, dest: Path) -> Path:
    """A flat folder of n files, hard links (or copies) cycling over the JPEGs of `images`."""
    sources = [r.path for r in list_images(images, labelled=False).records]
    if not sources:
        raise SystemExit(f"no images in {images}: run make bench-gpu-prepare (BENCHMARKS.md)")
    dest.mkdir(parents=True)
    for i in range(n):
        src = sources[i % len(sources)]
        try:
            os.link(src, dest / f"{i:06d}-{src.name}")
        except OSError:
            shutil.copyfile(src, dest / f"{i:06d}-{src.name}")
    return dest


class _DecodeOnly:
    per_image = False

    def __init__(self, pre):
        self.preprocess = pre


def decode_rates(folder: Path, workers: int) -> dict:
    """img/s of the decode stage alone at 299 px: a thread pool and the process pool, `workers` each."""
    records = list_images(folder, labelled=False).records
    pre, known = Preprocess(size=(299, 299), scaling="tf"), {"rows": {}, "bad": {}}
    out = {}
    t, got = timed(lambda: sum(1 for _ in bounded_map(lambda r: _prepare(r, _DecodeOnly(pre), known), records,
                                                      workers, 4 * workers)))
    out["decode_threads"] = rate(got, t)
    sum(1 for _ in DecodePool(pre, workers, window=512).map(records[:64], known))  # starts the forkserver once
    t, got = timed(lambda: sum(1 for _ in DecodePool(pre, workers, window=512).map(records, known, views=True)))
    out["decode_processes"] = rate(got, t)
    return out


def random_weights(model: str, path: Path) -> Path:
    """The application with seeded random weights, saved: both the GPU and the CPU side load this file."""
    import keras

    from pipeline.backbones.keras_apps import _seed

    _seed(keras, "jax")  # keras.utils.set_random_seed would import TensorFlow where it is installed
    ctor = getattr(keras.applications, KERAS_APPS[model].constructor)
    ctor(weights=None, classifier_activation=None).save_weights(path)
    keras.backend.clear_session()
    return path


def cpu_reference(model: str, weights: Path, folder: Path, store: Path) -> dict:
    """path -> float32 features computed on the CPU, in a subprocess that sees no GPU."""
    env = {**os.environ, "JAX_PLATFORMS": "cpu", "PYTHONPATH": os.pathsep.join(
        [str(REPO), os.environ.get("PYTHONPATH", "")])}
    subprocess.run([sys.executable, "-c", _CPU_REFERENCE, str(folder), model, str(weights), str(store)],
                   env=env, check=True, cwd=REPO)
    ref = pipeline.FeatureStore.open(store)
    return dict(zip(ref.paths, ref.features))


def cosine_min(store, ref: dict) -> float:
    feats = dict(zip(store.paths, store.features))
    a = np.stack([feats[p] for p in ref]).astype(np.float64)
    b = np.stack(list(ref.values())).astype(np.float64)
    return float(np.min(np.sum(a * b, 1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1))))


def gpu_libraries(names: str) -> list[str]:
    """The GPU JPEG libraries of `names` that load here (pillow-full, the CPU stand-in, always does)."""
    usable = []
    for name in names.split(","):
        try:
            gpujpeg.find_library(name)
            usable.append(name)
        except Exception as e:  # noqa: BLE001 - a library that does not load is reported and left out
            print(f"{name}: not usable here ({type(e).__name__}: {e})", flush=True)
    return usable


def pixel_parity(folder: Path, library: str, pre: Preprocess) -> dict:
    """The GPU path's network-sized pixels against Pillow's (decode + crop + resize on the CPU), and the JAX
    resize on the device against Pillow's resize of the same decoded pixels (expected: 0 values differ)."""
    blobs = [r.path.read_bytes() for r in list_images(folder, labelled=False).records]
    items = [gpujpeg.inspect(b, pre) for b in blobs]
    jpegs = [(b, it) for b, it in zip(blobs, items) if isinstance(it, gpujpeg.Encoded)]
    batch, failed, fell_back = gpujpeg.GpuDecoder(gpujpeg.find_library(library), pre)([it for _, it in jpegs],
                                                                                     [str(i) for i in range(len(jpegs))])
    ok = [i for i in range(len(jpegs)) if i not in {j for j, _ in failed}]
    cpu = np.stack([decode(jpegs[i][0], pre) for i in ok]).astype(np.int16)
    delta = np.abs(np.asarray(batch).astype(np.int16) - cpu)
    # the resize alone: Pillow's full-size decode (no DCT scaling) resized on the device vs by Pillow
    from PIL import Image, ImageOps

    import io
    uprights = [np.asarray(ImageOps.exif_transpose(Image.open(io.BytesIO(b))).convert("RGB")) for b, _ in jpegs[:64]]
    boxes = [crop_box(u.shape[1], u.shape[0], pre) for u in uprights]
    on_device = np.asarray(jaxresize.resize_batch(uprights, boxes, pre))
    resample = {"bilinear": Image.BILINEAR, "bicubic": Image.BICUBIC, "nearest": Image.NEAREST, "lanczos": Image.LANCZOS}
    pillow = np.stack([np.asarray(Image.fromarray(u).resize(pre.size[::-1], resample[pre.resample], box=bx))
                       for u, bx in zip(uprights, boxes)])
    return {"library": library, "size": pre.size[0], "jpegs": len(jpegs), "failed": len(failed), "fell_back": len(fell_back),
            "pixel_max_abs": int(delta.max()), "pixel_mean_abs": float(delta.mean()),
            "resize_values_differing": int((on_device != pillow).sum())}


def bench_model(model: str, precision: str, a, folder: Path, ref: dict, weights: Path, work: Path) -> dict:
    bb = create_backbone(model, "penultimate", weights=str(weights), keras_backend="jax", precision=precision,
                         batch_size=a.batch)
    build, _ = timed(bb.load)
    bs = bb.batch_size
    records = list_images(folder, labelled=False).records[:bs]
    images = np.stack([_prepare(r, _DecodeOnly(bb.preprocess), {"rows": {}, "bad": {}})[3] for r in records])
    for _ in range(2):
        bb(images)  # compiles this batch shape
    t, _ = timed(lambda: [bb(images) for _ in range(a.bound_rounds)])
    res = {"model": model, "precision": precision, "batch": bs, "device": bb.device, "build_s": build,
           "bound": rate(bs * a.bound_rounds, t)}
    n = len(list_images(folder, labelled=False).records)
    res["runs"] = []
    for decode_mode, library in [("process", None)] + [("gpu", lib) for lib in a.libraries]:
        bb.decoder = library  # None: the run decides (Pillow for process); a library name: that GPU decoder
        store = work / f"{model}-{precision}-{library or decode_mode}-store"
        t, run = timed(lambda: pipeline.featurize(folder, bb, out=store, decode=decode_mode, workers=a.workers,
                                                  progress=False, report=True))
        assert run.computed == n, run.summary()
        res["runs"].append({"decode": library or decode_mode, "e2e": rate(n, t), "e2e_over_bound": rate(n, t) / res["bound"],
                            "cosine_min": cosine_min(run.store, ref), "stages": run.stages})
        print(stages_line(run.stages), flush=True)
    return res


def report(results: list[dict], extra: dict) -> str:
    lines = [f"\n{extra['header']}",
             f"decode stage, 299 px, {extra['workers']} workers, {extra['n']} JPEGs: threads "
             f"{extra['decode_threads']:.0f} img/s, processes {extra['decode_processes']:.0f} img/s",
             f"{'model':<14} {'precision':<9} {'batch':>5} {'device':>6} {'bound':>8} {'decode':>11} {'e2e':>8} "
             f"{'e2e/bound':>9} {'cos vs CPU fp32':>15}"]
    for r in results:
        for run in r["runs"]:
            lines.append(f"{r['model']:<14} {r['precision']:<9} {r['batch']:>5} {r['device']:>6} {r['bound']:8.0f} "
                         f"{run['decode']:>11} {run['e2e']:8.0f} {run['e2e_over_bound']:9.2f} {run['cosine_min']:15.5f}")
    for p in extra.get("parity", []):
        lines.append(f"pixels at {p['size']} px, {p['library']} vs Pillow on {p['jpegs']} JPEGs: max |delta| {p['pixel_max_abs']}, mean "
                     f"{p['pixel_mean_abs']:.3f} ({p['failed']} unreadable, {p['fell_back']} fell back to the CPU); "
                     f"JAX resize vs Pillow, same decoded pixels: {p['resize_values_differing']} values differ")
    return "\n".join(lines)


def parse(argv):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--images", type=Path, default=REPO / ".gpu" / "imgs", help="JPEGs (make bench-gpu-prepare)")
    p.add_argument("--models", default="inception_v3,resnet50")
    p.add_argument("--precisions", default="float32,bfloat16")
    p.add_argument("--n", type=int, default=16384, help="JPEGs featurized end to end (a multiple of --batch)")
    p.add_argument("--batch", type=int, default=256)
    p.add_argument("--workers", type=int, default=default_workers("process"),
                   help="decode processes (default: the pipeline's own, usable cores - 1)")
    p.add_argument("--bound-rounds", type=int, default=10)
    p.add_argument("--reference-n", type=int, default=64, help="images also featurized on the CPU for the cosine")
    p.add_argument("--gpu-libraries", default="nvimgcodec,torchvision",
                   help="GPU JPEG libraries to measure --decode gpu with (those that load; none: CPU decode only)")
    p.add_argument("--smoke", action="store_true", help="a tiny run that only checks the script (CPU is fine; the GPU "
                   "decoder is replaced by its CPU stand-in, pillow-full)")
    p.add_argument("--json", type=Path, help="also write the figures here")
    a = p.parse_args(argv)
    if a.smoke:
        a.models, a.precisions, a.n, a.batch, a.bound_rounds, a.reference_n = "mobilenet_v2", "float32", 16, 8, 1, 4
        a.workers, a.gpu_libraries = min(a.workers, 2), "pillow-full"
    return a


def main(argv=None) -> int:
    a = parse(argv)
    import jax

    work = Path(tempfile.mkdtemp(prefix="tfp-gpu-"))
    try:
        folder = replicate(a.images, a.n, work / "jpegs")
        ref_folder = replicate(folder, a.reference_n, work / "reference")
        a.libraries = gpu_libraries(a.gpu_libraries) if a.gpu_libraries else []
        sizes = [Preprocess(size=(s, s)) for s in (299, 224)]  # InceptionV3's input and ResNet50's
        extra = {"n": a.n, "workers": a.workers, **decode_rates(folder, a.workers),
                 "parity": [pixel_parity(a.images, lib, pre) for lib in a.libraries for pre in sizes],
                 "header": f"{time.strftime('%Y-%m-%d')} {platform.node()}, {usable_cores()} usable cores, "
                           f"jax {jax.__version__} on {jax.devices()[0].device_kind}, python {platform.python_version()}"}
        results = []
        for model in a.models.split(","):
            weights = random_weights(model, work / f"{model}.weights.h5")
            ref = cpu_reference(model, weights, ref_folder, work / f"{model}-cpu-store")
            ref = {p.split("-", 1)[1]: v for p, v in ref.items()}  # NNNNNN-<name in folder>: links to its first files
            for precision in a.precisions.split(","):
                results.append(bench_model(model, precision, a, folder, ref, weights, work))
                print(report(results[-1:], extra), flush=True)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    print("\n==== summary" + report(results, extra))
    if a.json:
        a.json.write_text(json.dumps({**extra, "results": results}, indent=1))
    if any(m == "tensorflow" or m.startswith("tensorflow.") for m in sys.modules):
        print("TensorFlow was imported: the Keras path on jax must not import it", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
