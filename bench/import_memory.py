"""Time and peak memory of `import-features` on a small file of many rows, for this checkout and
optionally others (issue 27: a 2 MB Parquet file of 3 M rows x 8 took minutes and 2 GB).
Several --n give one file each (1 M against 3 M shows whether memory grows with the rows).

It writes one Parquet file (ids "0".."N-1", zero vectors of D float32, zstd, row groups of 1 M rows),
then runs `python -m pipeline import-features FILE --out STORE` in a fresh process per checkout,
alternating checkouts (each with PYTHONPATH set to its own checkout), and reads the process's peak
resident memory, wall time and CPU time (user + system) from /usr/bin/time -v, with the load average
before each run (on a shared machine compare CPU times, and wall times only within one run). With --bomb it also imports an .npz whose features.npy inflates about 1000 times
(20,000 x 1,000 zeros, deflated): this checkout refuses it from the zip header.

    .venv/bin/python bench/import_memory.py --n 1000000 --n 3000000 --dim 8 [--bomb] [--other /path/to/old/checkout]
"""
from __future__ import annotations

import argparse
import os
import re
import shutil
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]


def measure(repo: Path, args: list[str]) -> str:
    """Peak RSS, wall and CPU seconds of `python ARGS` run in `repo` with PYTHONPATH=repo, as text."""
    load = os.getloadavg()[0]
    r = subprocess.run(["/usr/bin/time", "-v", sys.executable, *args], cwd=repo, capture_output=True, text=True,
                       env={**os.environ, "PYTHONPATH": str(repo)})

    def field(name: str) -> str:
        return re.search(rf"{re.escape(name)}: (\S+)", r.stderr).group(1)

    cpu = float(field("User time (seconds)")) + float(field("System time (seconds)"))
    wall = field("Elapsed (wall clock) time (h:mm:ss or m:ss)")
    failed = "" if r.returncode == 0 else f" [exit {r.returncode}: {r.stderr.strip().splitlines()[0][:200]}]"
    return f"{int(field('Maximum resident set size (kbytes)')) / 1024:.0f} MiB, {wall} wall, {cpu:.1f} s CPU, load {load:.1f}{failed}"


def write_parquet(path: Path, n: int, dim: int) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    feats = pa.FixedSizeListArray.from_arrays(pa.array(np.zeros(n * dim, np.float32)), dim)
    pq.write_table(pa.table({"id": pa.array(np.arange(n).astype(str)), "features": feats}), path,
                   compression="zstd", row_group_size=1_000_000)


def write_bomb(path: Path, n: int, dim: int) -> None:
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED, compresslevel=9) as z:
        with z.open("features.npy", "w", force_zip64=True) as m:
            np.lib.format.write_array_header_1_0(m, {"descr": "<f4", "fortran_order": False, "shape": (n, dim)})
            block = bytes(4 * dim * 1000)
            for _ in range(n // 1000):
                m.write(block)
        with z.open("ids.npy", "w") as m:
            np.lib.format.write_array(m, np.arange(n).astype(str))


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--n", type=int, action="append", help="rows (repeat for several files; default 3,000,000)")
    p.add_argument("--dim", type=int, default=8)
    p.add_argument("--repeat", type=int, default=1)
    p.add_argument("--bomb", action="store_true", help="also an .npz of 20,000 x 1000 zeros deflated (~1000x)")
    p.add_argument("--other", type=Path, action="append", default=[], help="another checkout to compare")
    a = p.parse_args()
    a.n = a.n or [3_000_000]
    repos = [REPO, *[o.resolve() for o in a.other]]
    with tempfile.TemporaryDirectory(prefix="tfp-importmem-") as tmp:
        tmp = Path(tmp)
        files = {}
        for n in a.n:
            files[f"parquet {n:,} x {a.dim}"] = tmp / f"rows-{n}.parquet"
            write_parquet(files[f"parquet {n:,} x {a.dim}"], n, a.dim)
        if a.bomb:
            files["npz bomb"] = tmp / "bomb.npz"
            write_bomb(files["npz bomb"], 20_000, 1000)
        for name, f in files.items():
            print(f"import-features of {name} ({f.stat().st_size / 2**20:.1f} MiB), per run:", flush=True)
            results = {r: [] for r in repos}
            for k in range(a.repeat):
                for i, r in enumerate(repos):
                    out = tmp / f"store-{k}-{i}"
                    results[r].append(measure(r, ["-m", "pipeline", "import-features", str(f), "--out", str(out)]))
                    shutil.rmtree(out, ignore_errors=True)
            for r in repos:
                print(f"  {r}: " + "; ".join(results[r]), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
