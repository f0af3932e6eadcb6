"""CPU seconds to trace predict_bytes' TensorFlow decoder (pipeline/decode/tfdecode.py), as a process's first export of a preprocessing does.

    git show REV:pipeline/decode/tfdecode.py > /tmp/old_tfdecode.py
    .venv/bin/python bench/decoder_trace.py [--old /tmp/old_tfdecode.py] [--repeat 3]

Traces ``decode_image`` into a tf.function for each filter (bilinear, bicubic, nearest, Lanczos; 12x10, crop
0.875), interleaved: this tree's decoder traced with autograph off (as pipeline/export/exporter.py traces it),
the same with autograph on, and, with --old, that older tfdecode.py with autograph on (as exports traced it
before). Prints the CPU seconds of this process per way (the median over --repeat rounds of the sum over the
filters; CPU time is less disturbed by a busy machine than wall time) and the ops each graph holds.
Ratios are computed within this one run; absolute figures vary.
"""
from __future__ import annotations

import argparse
import importlib.util
import statistics
import time


def _trace(decode_image, pre, autograph: bool) -> tuple[float, int]:
    import tensorflow as tf

    fn = tf.function(lambda data: decode_image(data, pre), autograph=autograph)
    start = time.process_time()
    graph = fn.get_concrete_function(tf.TensorSpec([], tf.string)).graph.as_graph_def()
    return time.process_time() - start, len(graph.node) + sum(len(f.node_def) for f in graph.library.function)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--old", help="an older pipeline/decode/tfdecode.py to trace too")
    ap.add_argument("--repeat", type=int, default=3)
    args = ap.parse_args()
    from pipeline.decode import tfdecode
    from pipeline.preprocess import RESAMPLING, Preprocess

    ways = {"now, autograph off": (tfdecode.decode_image, False), "now, autograph on": (tfdecode.decode_image, True)}
    if args.old:
        spec = importlib.util.spec_from_file_location("pipeline.decode._tfdecode_old", args.old)  # beside tfdecode
        old = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(old)
        ways["old, autograph on"] = (old.decode_image, True)
    _trace(tfdecode.decode_image, Preprocess(size=(8, 8)), True)  # warm-up: TensorFlow's own lazy imports
    seconds = {way: [] for way in ways}
    ops = {}
    for _ in range(args.repeat):
        for way, (decode_image, autograph) in ways.items():
            total = 0.0
            for resample in RESAMPLING:
                s, ops[way] = _trace(decode_image, Preprocess(size=(12, 10), crop_fraction=0.875, resample=resample),
                                     autograph)
                total += s
            seconds[way].append(total)
    base = statistics.median(seconds["now, autograph off"])
    for way, values in seconds.items():
        median = statistics.median(values)
        print(f"{way:20s} {median:6.2f} s CPU for {len(RESAMPLING)} traces ({median / base:.2f}x)  "
              f"{ops[way]} ops in the {RESAMPLING[-1]} graph")


if __name__ == "__main__":
    main()
