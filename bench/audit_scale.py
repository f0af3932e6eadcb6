"""`audit` at scale: 100,000 x 1280 synthetic features, time and peak memory, and the recall of the
approximate index against the exact search.

Features: `--n` rows of `--dim` non-negative floats (like a ReLU network's penultimate layer) drawn
around 200 class centres, with 1% of rows near-copies of others (planted near-duplicates). They
become a store with `import-features`, then
``python -m pipeline audit STORE --checks near_duplicate,outlier --json`` runs in a fresh process
under /usr/bin/time (wall time, CPU time, peak resident memory). Then, on the first `--subset` rows,
the same neighbour search is made exactly and with the approximate index: recall@k (the share of
the exact k nearest neighbours the index also returns) and the recall of the near-duplicate pairs.

    .venv/bin/python bench/audit_scale.py [--n 100000] [--dim 1280] [--subset 20000] [--work DIR]

Figures: BENCHMARKS.md, "Audit at scale". On a shared machine, the CPU time (user + system) is the
steadier figure: wall time grows with the other processes' load.
"""
from __future__ import annotations

import argparse
import json
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

CLASSES = 200
PLANTED = 0.01


def synthetic(n: int, dim: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(features, labels, planted (copy row, original row) pairs)."""
    rng = np.random.default_rng(seed)
    centres = np.maximum(rng.normal(0, 1, (CLASSES, dim)), 0).astype(np.float32)
    labels = rng.integers(0, CLASSES, n)
    x = np.empty((n, dim), np.float32)
    for s in range(0, n, 8192):
        e = min(n, s + 8192)
        x[s:e] = np.maximum(centres[labels[s:e]] + rng.normal(0, 0.8, (e - s, dim)), 0)
    copies = rng.choice(n, int(n * PLANTED), replace=False)
    originals = (copies + rng.integers(1, n, len(copies))) % n
    x[copies] = x[originals] * rng.uniform(0.9, 1.1, (len(copies), 1)) + np.abs(rng.normal(0, 0.05, (len(copies), dim)))
    labels[copies] = labels[originals]
    return x, labels.astype(str), np.stack([copies, originals], axis=1)


def timed(cmd: list[str]) -> dict:
    """Run `cmd` under /usr/bin/time -v: wall and CPU seconds, peak RSS (MiB), its stdout."""
    t = time.perf_counter()
    p = subprocess.run(["/usr/bin/time", "-v", *cmd], capture_output=True, text=True, cwd=REPO)  # noqa: S603
    wall = time.perf_counter() - t
    if p.returncode:
        raise SystemExit(f"{' '.join(cmd)} failed:\n{p.stderr[-3000:]}")

    def field(name):
        return float(re.search(rf"{name}: ([0-9.]+)", p.stderr).group(1))
    return {"wall_s": round(wall, 1), "cpu_s": round(field("User time \\(seconds\\)") + field("System time \\(seconds\\)"), 1),
            "peak_rss_mib": round(field("Maximum resident set size \\(kbytes\\)") / 1024), "stdout": p.stdout}


def recall(x: np.ndarray, k: int, threshold: float, nprobe: int) -> dict:
    """Exact against approximate neighbours of the rows of `x`, each searched against all of them."""
    from pipeline.audit.neighbours import Lookup, search

    chunks = lambda: (x[s:s + 4096] for s in range(0, len(x), 4096))  # noqa: E731
    out = {}
    for method in ("exact", "approximate"):
        t = time.process_time()
        out[method] = search(chunks, chunks, k, self_search=True, lookup=Lookup(method, nprobe=nprobe))
        out[method + "_cpu_s"] = round(time.process_time() - t, 1)
    ex, ap = out["exact"], out["approximate"]
    hits = sum(len(set(a) & set(b)) for a, b in zip(ex.index.tolist(), ap.index.tolist()))
    pairs = lambda nb: {(min(i, j), max(i, j)) for i, row in enumerate(nb.index.tolist())  # noqa: E731
                        for j, v in zip(row, nb.similarity[i].tolist()) if v >= threshold and j >= 0}
    exact_pairs, approx_pairs = pairs(ex), pairs(ap)
    return {"rows": len(x), "k": k, "recall_at_k": hits / ex.index.size, "method": ap.method,
            "near_duplicate_pairs_exact": len(exact_pairs),
            "near_duplicate_pair_recall": len(exact_pairs & approx_pairs) / max(len(exact_pairs), 1),
            "exact_cpu_s": out["exact_cpu_s"], "approximate_cpu_s": out["approximate_cpu_s"]}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--n", type=int, default=100_000)
    p.add_argument("--dim", type=int, default=1280)
    p.add_argument("--subset", type=int, default=20_000)
    p.add_argument("--work", type=Path, default=None, help="folder for the store (default: a temporary one)")
    p.add_argument("--nprobe", type=int, default=None, help="audit --nprobe (default: audit's)")
    a = p.parse_args(argv)
    from pipeline.audit.checks import NEAR_DUPLICATE, NEIGHBOURS
    from pipeline.audit.neighbours import NPROBE

    work = a.work or Path(tempfile.mkdtemp(prefix="tfp-audit-scale-"))
    x, labels, planted = synthetic(a.n, a.dim)
    store = work / "store"
    if not (store / "meta.json").exists():
        np.savez(work / "features.npz", id=np.array([f"c{l}/img{i:07d}.jpg" for i, l in enumerate(labels)]),
                 features=x, label=labels)
        subprocess.run([sys.executable, "-m", "pipeline", "import-features", str(work / "features.npz"),
                        "--out", str(store)], check=True, cwd=REPO, stdout=subprocess.DEVNULL)
        (work / "features.npz").unlink()
    run = timed([sys.executable, "-m", "pipeline", "audit", str(store), "--checks", "near_duplicate,outlier",
                 "--json"] + (["--nprobe", str(a.nprobe)] if a.nprobe else []))
    result = json.loads(run.pop("stdout"))
    found = {tuple(sorted((int(f["path"].split("img")[1][:7]), int(f["other_path"].split("img")[1][:7]))))
             for f in result["findings"] if f["kind"] == "near_duplicate"}
    wanted = {tuple(sorted(map(int, pq))) for pq in planted}
    report = {"n": a.n, "dim": a.dim, "audit": run, "method": result["method"], "counts": result["counts"],
              "planted_found": len(wanted & found) / len(wanted),
              "recall": recall(x[:a.subset], NEIGHBOURS, NEAR_DUPLICATE, a.nprobe or NPROBE)}
    print(json.dumps(report, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
