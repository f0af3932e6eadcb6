"""What closing a run's stores costs: featurize N catsdogs images (the default pass: two stores) into fresh
stores, ROUNDS times, and report the milliseconds spent in the writers' close and in the piece functions
(parts written during the run and the segment at close, parts checked, read back and removed).

    .venv/bin/python bench/store_close.py [--n 256] [--rounds 3]

Run it from two checkouts in turn (each imports its own package) to compare them side by side.
"""
from __future__ import annotations

import argparse
import json
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import pipeline  # noqa: E402
from pipeline.store import writer  # noqa: E402

DEFAULT_DATA = REPO.parent / "shared" / "data" / "catsdogs" / "train"
TIMED = ("_write_piece", "_check_part", "_read_piece", "_remove_part")


def _timing(spent: dict):
    """Wrap the writer's close and piece functions so each adds its seconds to `spent`."""
    def wrap(owner, name):
        fn = getattr(owner, name)

        def timed(*a, **k):
            start = time.perf_counter()
            try:
                return fn(*a, **k)
            finally:
                spent[name] = spent.get(name, 0.0) + time.perf_counter() - start
        setattr(owner, name, timed)
    for name in TIMED:
        if hasattr(writer, name):
            wrap(writer, name)
    wrap(writer.StoreWriter, "close")


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--data", default=str(DEFAULT_DATA))
    p.add_argument("--n", type=int, default=256, help="images per class (default 256: 512 images)")
    p.add_argument("--rounds", type=int, default=3)
    a = p.parse_args(argv)
    work = Path(tempfile.mkdtemp(prefix="store-close-"))
    try:
        data = work / "data"
        for cls in sorted(d for d in Path(a.data).iterdir() if d.is_dir()):
            (data / cls.name).mkdir(parents=True)
            for f in sorted(cls.iterdir())[:a.n]:
                shutil.copy(f, data / cls.name / f.name)
        spent, runs = {}, []
        _timing(spent)
        for r in range(a.rounds):
            spent.clear()
            start = time.perf_counter()
            pipeline.featurize(data, out=work / f"run{r}" / "{layer}", progress=False)
            runs.append({"run_s": time.perf_counter() - start, **{k: v * 1000 for k, v in spent.items()}})
        keys = ["run_s", "close", *[k for k in TIMED if any(k in r for r in runs)]]
        median = {k: round(statistics.median(r.get(k, 0.0) for r in runs), 3 if k == "run_s" else 1) for k in keys}
        print(json.dumps({"checkout": str(REPO), "images": sum(1 for _ in data.rglob("*.*")), "rounds": a.rounds,
                          "median (ms; run_s in s)": median}))
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
