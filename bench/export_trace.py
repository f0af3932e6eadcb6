"""SavedModel export time: the serving functions traced once, or traced again by tf.saved_model.save.

    .venv/bin/python bench/export_trace.py [--repeat 2]

A calibrated linear SVM over the tests' tiny CNN (tests/models_for_tests.py, registered as a Keras
application as tests/conftest.py does) is exported as a SavedModel, interleaved:
  before  the module keeps `serve` and `predict_bytes` as tf.functions: the save traces each of them
          again in its own context (predict_bytes' TensorFlow decoder is most of an export's time)
  after   pipeline/export/exporter.py: the module keeps the concrete functions already traced
after one warm-up export. For each it prints the wall and CPU seconds of the export (CPU time of this
process: less disturbed by a busy machine than wall time) and how many times predict_bytes' decoder was
traced (deterministic: 2 before, 1 after). Ratios are computed within this one run; absolute figures vary.
"""
from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))


def _before(exporter):
    import tensorflow as tf

    def write(out: Path, module, info: dict) -> Path:  # exporter._write_saved_model as it was
        tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
        tf.saved_model.save(module, str(tmp), signatures={
            "serving_default": module.serve.get_concrete_function(),
            "predict_bytes": module.predict_bytes.get_concrete_function()})
        exporter.write_saved_model_info(tmp, info)
        tmp.replace(out)
        return out
    return write


def _count_decoder_traces() -> list:
    """A list that grows by one each time TensorFlow traces pipeline.decode.tfdecode.decode_image."""
    from pipeline.decode import tfdecode

    calls, decode_image = [], tfdecode.decode_image

    def counted(*args, **kwargs):
        calls.append(1)
        return decode_image(*args, **kwargs)
    tfdecode.decode_image = counted  # exporter._module imports it when it builds the module
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
        ways = {"before": _before(exporter), "after": exporter._write_saved_model}
        traces = _count_decoder_traces()
        wall, cpu = ({name: [] for name in ways} for _ in range(2))
        for i in range(args.repeat):
            for name, write in ways.items():
                exporter._write_saved_model = write
                traces.clear()
                t, c = time.perf_counter(), time.process_time()
                clf.export(tmp / f"{name}-{i}", format="saved_model")
                wall[name].append(time.perf_counter() - t)
                cpu[name].append(time.process_time() - c)
                print(f"{name:6s} wall {wall[name][-1]:6.1f} s  cpu {cpu[name][-1]:6.1f} s  "
                      f"decoder traced {len(traces)}x", flush=True)
        for what, secs in (("wall", wall), ("cpu", cpu)):
            b, a = sum(secs["before"]), sum(secs["after"])
            print(f"export {what}, mean of {args.repeat}: before {b / args.repeat:.1f} s, after {a / args.repeat:.1f} s, "
                  f"after/before {a / b:.2f}")
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
