"""Time and peak memory of `import-features` on a small file of many rows, for this checkout and
optionally others (issue 27: a 2 MB Parquet file of 3 M rows x 8 took minutes and 2 GB).

It writes one Parquet file (ids "0".."N-1", zero vectors of D float32, zstd, row groups of 1 M rows),
then runs `python -m pipeline import-features FILE --out STORE` in a fresh process per checkout,
alternating checkouts, and reads the process's peak resident memory (/usr/bin/time's "Maximum
resident set size"). With --bomb it also imports an .npz whose features.npy inflates about 1000 times
(20,000 x 1,000 zeros, deflated): this checkout refuses it from the zip header.

    .venv/bin/python bench/import_memory.py --n 3000000 --dim 8 [--bomb] [--other /path/to/old/checkout]
"""
from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
import zipfile
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "bench"))

from score_memory import peak_rss_mib


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
    p.add_argument("--n", type=int, default=3_000_000)
    p.add_argument("--dim", type=int, default=8)
    p.add_argument("--repeat", type=int, default=1)
    p.add_argument("--bomb", action="store_true", help="also an .npz of 20,000 x 1000 zeros deflated (~1000x)")
    p.add_argument("--other", type=Path, action="append", default=[], help="another checkout to compare")
    a = p.parse_args()
    repos = [REPO, *[o.resolve() for o in a.other]]
    with tempfile.TemporaryDirectory(prefix="tfp-importmem-") as tmp:
        tmp = Path(tmp)
        files = {"parquet": tmp / "rows.parquet"}
        write_parquet(files["parquet"], a.n, a.dim)
        if a.bomb:
            files["npz bomb"] = tmp / "bomb.npz"
            write_bomb(files["npz bomb"], 20_000, 1000)
        for name, f in files.items():
            print(f"import-features of {name} ({f.stat().st_size / 2**20:.1f} MiB), peak RSS and time per run:")
            results = {r: [] for r in repos}
            for k in range(a.repeat):
                for i, r in enumerate(repos):
                    out = tmp / f"store-{k}-{i}"
                    results[r].append(peak_rss_mib(r, ["-m", "pipeline", "import-features", str(f), "--out", str(out)]))
                    shutil.rmtree(out, ignore_errors=True)
            for r in repos:
                print(f"  {r}: " + ", ".join(f"{m:.0f} MiB ({s:.1f} s)" for m, s in results[r]))
    return 0


if __name__ == "__main__":
    sys.exit(main())
