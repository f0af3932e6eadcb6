"""Which approximate index for `audit` above 20,000 rows: faiss inverted lists (IVF) with float32,
float16 or 8-bit vectors, at several numbers of lists probed: CPU time of a batch search and
recall@11 against the exact search, on the synthetic features of bench/audit_scale.py.

    OMP_NUM_THREADS=1 .venv/bin/python bench/audit_index.py [--n 100000] [--queries 2000]

CPU time (one thread) is reported for 100,000 queries (scaled from --queries): a batch self-search
is bound by the bytes of the probed lists streamed from memory per query, which the float16 and
8-bit encodings halve and quarter. Figures: BENCHMARKS.md, "Audit at scale".
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from audit_scale import synthetic  # noqa: E402

ENCODINGS = ("float32", "float16", "int8")


def build(x: np.ndarray, encoding: str, nlist: int, seed: int = 0):
    import faiss

    d = x.shape[1]
    if encoding == "float32":
        index = faiss.IndexIVFFlat(faiss.IndexFlatIP(d), d, nlist, faiss.METRIC_INNER_PRODUCT)
    else:
        qt = faiss.ScalarQuantizer.QT_fp16 if encoding == "float16" else faiss.ScalarQuantizer.QT_8bit
        index = faiss.IndexIVFScalarQuantizer(faiss.IndexFlatIP(d), d, nlist, qt, faiss.METRIC_INNER_PRODUCT)
    index.cp.niter = 10
    rng = np.random.default_rng(seed)
    index.train(x[rng.random(len(x)) < 40 * nlist / len(x)])
    index.add(x)
    return index


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--n", type=int, default=100_000)
    p.add_argument("--dim", type=int, default=1280)
    p.add_argument("--queries", type=int, default=2000)
    p.add_argument("--nprobe", default="4,8")
    a = p.parse_args(argv)
    x = synthetic(a.n, a.dim)[0]
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    q = x[:a.queries]
    exact = np.argsort(-(q @ x.T), axis=1)[:, :11]
    nlist = int(np.sqrt(a.n))
    for encoding in ENCODINGS:
        t = time.process_time()
        index = build(x, encoding, nlist)
        built = time.process_time() - t
        for nprobe in map(int, a.nprobe.split(",")):
            index.nprobe = nprobe
            t = time.process_time()
            found = index.search(q, 11)[1]
            cpu = (time.process_time() - t) * 100_000 / len(q)
            recall = np.mean([len(set(e) & set(f)) / 11 for e, f in zip(exact.tolist(), found.tolist())])
            print(json.dumps({"encoding": encoding, "nlist": nlist, "nprobe": nprobe, "build_cpu_s": round(built, 1),
                              "search_cpu_s_per_100k": round(cpu, 1), "recall_at_11": round(float(recall), 4)}),
                  flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
