"""Peak memory of `score` and `export-features` on a large feature store, for this checkout and
optionally others.

It writes a store of N random D-wide feature rows (import-features from an .npz), fits a logistic
regression head on a small store with the same spec, then runs
`python -m pipeline score HEAD STORE --out CSV` and `export-features STORE --out F.parquet|F.npz`
in a fresh process per checkout, alternating checkouts, and reads the process's peak resident memory (/usr/bin/time's "Maximum resident set
size"). The store's features alone are N x D x 4 bytes.

    .venv/bin/python bench/score_memory.py --n 200000 --dim 1280 [--other /path/to/old/checkout]
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


def write_npz(path: Path, n: int, dim: int, spec: str, labelled: bool, seed: int) -> None:
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((n, dim), dtype=np.float32)
    labels = np.where(np.arange(n) % 2 == 0, "a", "b")
    if labelled:
        x[labels == "a", :8] += 2.0  # something to learn
    arrays = {"id": np.array([f"img{i:09d}.jpg" for i in range(n)]), "features": x, "spec": np.array(spec)}
    if labelled:
        arrays["label"] = labels
    np.savez(path, **arrays)


def peak_rss_mib(repo: Path, args: list[str]) -> tuple[float, float]:
    """(peak RSS in MiB, seconds) of `python ARGS` run from `repo` (nan MiB when it failed)."""
    t = time.perf_counter()
    r = subprocess.run(["/usr/bin/time", "-v", sys.executable, *args], cwd=repo, capture_output=True, text=True)
    kb = int(re.search(r"Maximum resident set size \(kbytes\): (\d+)", r.stderr).group(1))
    if r.returncode != 0:  # an older checkout may fail where this one works: say so, go on
        err = [line for line in r.stderr.splitlines() if line.startswith("error:")]
        print(f"  ({repo}: exit {r.returncode}: {err[0] if err else r.stderr[-300:]})")
        return float("nan"), time.perf_counter() - t
    return kb / 1024, time.perf_counter() - t


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--n", type=int, default=200_000)
    p.add_argument("--dim", type=int, default=1280)
    p.add_argument("--repeat", type=int, default=2)
    p.add_argument("--other", type=Path, action="append", default=[], help="another checkout to compare")
    a = p.parse_args()

    import pipeline
    from pipeline.spec import FeatureSpec
    from pipeline.store.exchange import import_features

    spec = json.dumps(FeatureSpec.imported("bench-score-memory", "0" * 64, a.dim).to_dict())
    with tempfile.TemporaryDirectory(prefix="tfp-scoremem-") as tmp:
        tmp = Path(tmp)
        write_npz(tmp / "train.npz", 400, a.dim, spec, True, 0)
        write_npz(tmp / "big.npz", a.n, a.dim, spec, False, 1)
        import_features(tmp / "train.npz", tmp / "train")
        import_features(tmp / "big.npz", tmp / "big")
        (tmp / "big.npz").unlink()
        head = tmp / "bench.head.npz"
        pipeline.train(tmp / "train", head="logreg", C=1.0).save(head)
        feats = a.n * a.dim * 4 / 2**20
        repos = [REPO, *[o.resolve() for o in a.other]]
        cli, big = ["-m", "pipeline"], str(tmp / "big")
        load = f"from pipeline import FeatureStore; print(FeatureStore.open({big!r}).features.shape)"
        commands = {"score": lambda out: [*cli, "score", str(head), big, "--out", str(out) + ".csv"],
                    "export .parquet": lambda out: [*cli, "export-features", big, "--out", str(out) + ".parquet"],
                    "export .npz": lambda out: [*cli, "export-features", big, "--out", str(out) + ".npz"],
                    "verify": lambda out: [*cli, "verify", big],
                    "FeatureStore.features": lambda out: ["-c", load]}
        for name, argv in commands.items():
            print(f"{name} of a store of {a.n} rows x D={a.dim} (features {feats:.0f} MiB), peak RSS per run:")
            results = {r: [] for r in repos}
            for k in range(a.repeat):
                for i, r in enumerate(repos):
                    out = tmp / f"out-{k}-{i}"
                    results[r].append(peak_rss_mib(r, argv(out)))
                    for f in tmp.glob(f"out-{k}-{i}.*"):
                        f.unlink()
            for r in repos:
                print(f"  {r}: " + ", ".join(f"{m:.0f} MiB ({s:.1f} s)" for m, s in results[r]))
    return 0


if __name__ == "__main__":
    sys.exit(main())
