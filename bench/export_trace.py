"""SavedModel export time: a process's first export of a preprocessing, and each later one.

    .venv/bin/python bench/export_trace.py [--repeat 2]

A calibrated linear SVM over the tests' tiny CNN (tests/models_for_tests.py, registered as a Keras
application as tests/conftest.py does) is exported as a SavedModel, interleaved:
  first   the decoder cache of pipeline/export/exporter.py emptied before the export: predict_bytes'
          TensorFlow decoder is traced, as in a process's first export of this preprocessing
  again   the cache kept: the decoder traced by an earlier export is called, not traced (another head
          over the same backbone, a sweep of exports in one process)
after one warm-up export. For each it prints the wall and CPU seconds of the export (CPU time of this
process: less disturbed by a busy machine than wall time) and how many times predict_bytes' decoder was
traced (deterministic: 1 first, 0 again). Ratios are computed within this one run; absolute figures vary.
(An earlier version compared the save tracing the serving functions again with keeping them as traced;
its figures are in BENCHMARKS.md, "Test suite".)
"""
from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))


def _count_decoder_traces() -> list:
    """A list that grows by one each time TensorFlow traces pipeline.decode.tfdecode.decode_image."""
    from pipeline.decode import tfdecode

    calls, decode_image = [], tfdecode.decode_image

    def counted(*args, **kwargs):
        calls.append(1)
        return decode_image(*args, **kwargs)
    tfdecode.decode_image = counted  # exporter._decoder imports it when it traces a decoder (a cache miss)
    return calls


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeat", type=int, default=2)
    args = ap.parse_args()
    import keras
    from models_for_tests import (
        SIZE,
        calibrated_classifier,
        colour_files,
        tiny_keras_model,
    )

    from pipeline.backbones import create_backbone
    from pipeline.backbones.keras_apps import KERAS_APPS, KerasApp
    from pipeline.export import exporter

    def TinyCNN(weights=None, include_top=True, classifier_activation=None):
        model = tiny_keras_model()
        return keras.Model(model.input, model.get_layer("logits").output)

    KERAS_APPS["tiny_cnn"] = KerasApp("TinyCNN", SIZE, "tf", "mobilenet")
    keras.applications.TinyCNN = TinyCNN
    tmp = Path(tempfile.mkdtemp())
    try:
        paths, labels = colour_files(tmp)
        clf = calibrated_classifier(create_backbone("tiny_cnn", "penultimate", weights="random"), paths, labels)
        clf.export(tmp / "warm-up", format="saved_model")
        ways = ("first", "again")
        traces = _count_decoder_traces()
        wall, cpu = ({name: [] for name in ways} for _ in range(2))
        for i in range(args.repeat):
            for name in ways:
                if name == "first":
                    exporter._decoder.cache_clear()
                traces.clear()
                t, c = time.perf_counter(), time.process_time()
                clf.export(tmp / f"{name}-{i}", format="saved_model")
                wall[name].append(time.perf_counter() - t)
                cpu[name].append(time.process_time() - c)
                print(f"{name:6s} wall {wall[name][-1]:6.1f} s  cpu {cpu[name][-1]:6.1f} s  "
                      f"decoder traced {len(traces)}x", flush=True)
        for what, secs in (("wall", wall), ("cpu", cpu)):
            b, a = sum(secs["first"]), sum(secs["again"])
            print(f"export {what}, mean of {args.repeat}: first {b / args.repeat:.1f} s, again {a / args.repeat:.1f} s, "
                  f"again/first {a / b:.2f}")
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
