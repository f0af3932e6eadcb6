"""Issue 30's CPU figures, side by side in one run (``bench/bench.py --models cpu``, part of ``make bench``).

On the bundled TFLite model (mobilenet_v2_quant) and the same n images, interleaved over rounds:
  plain_1     the plain loop in one process: Pillow open/convert/centre-crop/resize +
              Interpreter(num_threads=1).invoke() per image, timed from its first image (imports and
              interpreter built before the clock starts)
  plain_2     two such loops in two processes at once, each on half of the images, started together:
              the machine's limit for this work (aggregate img/s from the first start to the last end)
  cli         ``python -m pipeline featurize`` cold (a fresh store), as a user runs it (the package's bytecode
              compiled, as after ``pip install``): wall clock from
              the process start to its exit (start-up included), and the run's own figure (images / the
              report's stages.wall_s: start-up, closing the store and exit excluded)
  noop        the same command again on the now complete store: nothing to featurize (start-up, listing,
              stat of every file, exit: what a run costs before and around its work)
and the CPU seconds per image of each (getrusage of the children: user + system), which a loaded
machine inflates far less than wall clock. ``startup_imports`` runs one cold featurize of 8 images under
``python -X importtime``: the import seconds and whether TensorFlow, Keras or pandas were imported.
"""
from __future__ import annotations

import json
import os
import resource
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]

_PLAIN_CHILD = r"""
import json, sys, time
import numpy as np
from PIL import Image
from ai_edge_litert.interpreter import Interpreter

model, listing, shard, shards = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
paths = open(listing).read().split("\n")[shard::shards]
it = Interpreter(model, num_threads=1)
it.allocate_tensors()
inp, outp = it.get_input_details()[0], it.get_output_details()[0]
print("ready", flush=True)
sys.stdin.readline()
clock = lambda: time.clock_gettime(time.CLOCK_MONOTONIC)  # one clock for every process of the machine
start, cpu = clock(), time.process_time()
for p in paths:
    im = Image.open(p).convert("RGB")
    s = min(im.size)
    left, top = (im.width - s) // 2, (im.height - s) // 2
    im = im.resize((224, 224), Image.BILINEAR, box=(left, top, left + s, top + s))
    it.set_tensor(inp["index"], np.asarray(im, np.uint8)[None])
    it.invoke()
    it.get_tensor(outp["index"])
print(json.dumps({"start": start, "end": clock(), "n": len(paths), "cpu": time.process_time() - cpu}), flush=True)
"""


def _children_cpu() -> float:
    r = resource.getrusage(resource.RUSAGE_CHILDREN)
    return r.ru_utime + r.ru_stime


def plain_loops(model: Path, listing: Path, processes: int) -> dict:
    """img/s of `processes` plain loops at once, each on 1/processes of the images, started together."""
    procs = [subprocess.Popen([sys.executable, "-c", _PLAIN_CHILD, str(model), str(listing), str(k), str(processes)],
                              stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for k in range(processes)]
    for p in procs:
        if p.stdout.readline().strip() != "ready":
            raise RuntimeError(f"a plain loop did not start: {p.communicate()[1]}")
    for p in procs:  # as close together as two writes go
        p.stdin.write("go\n")
        p.stdin.flush()
    outs = [p.communicate() for p in procs]  # stderr: LiteRT's "Created ... XNNPACK delegate" notice
    if any(p.returncode for p in procs):
        raise RuntimeError("a plain loop failed: " + " ".join(err for _, err in outs))
    runs = [json.loads(out) for out, _ in outs]
    n = sum(r["n"] for r in runs)
    return {"ips": n / (max(r["end"] for r in runs) - min(r["start"] for r in runs)),
            "cpu_ms": 1000 * sum(r["cpu"] for r in runs) / n}


def cli_run(folder: Path, store: Path, fresh: bool) -> dict:
    """Wall seconds and CPU seconds (user + system) of one ``python -m pipeline featurize`` process."""
    if fresh:
        shutil.rmtree(store, ignore_errors=True)
    cmd = [sys.executable, "-m", "pipeline", "featurize", str(folder), "--out", str(store), "--no-progress"]
    cpu, t = _children_cpu(), time.perf_counter()
    subprocess.run(cmd, cwd=REPO, check=True, capture_output=True)
    return {"wall_s": time.perf_counter() - t, "cpu_s": _children_cpu() - cpu}


def featurize_cli(folder: Path, store: Path, n: int) -> dict:
    cold = cli_run(folder, store, fresh=True)
    stages = json.loads((store / "report.json").read_text())["stages"]
    if stages["images"] != n:
        raise RuntimeError(f"featurize computed {stages['images']} of {n} images")
    noop = cli_run(folder, store, fresh=False)
    return {"cli_ips": n / cold["wall_s"], "cli_own_ips": n / stages["wall_s"],
            "cli_outside_s": cold["wall_s"] - stages["wall_s"], "cli_cpu_ms": 1000 * cold["cpu_s"] / n,
            "noop_s": noop["wall_s"]}


_IMPORTS_CHILD = r"""
import sys
from pipeline.cli import main
rc = main(["featurize", sys.argv[1], "--out", sys.argv[2], "--no-progress"])
print(rc, ",".join(sorted({m.split(".")[0] for m in sys.modules} & {"tensorflow", "keras", "tf_keras", "pandas"}))
      or "-")
"""


def _import_seconds(importtime: str) -> dict:
    """{top-level module: cumulative import seconds} from ``python -X importtime``'s report."""
    top = {}
    for line in importtime.splitlines():
        if line.startswith("import time:") and "[us]" not in line:
            _, cumulative, name = line[len("import time:"):].split("|")
            if name.startswith(" ") and not name.startswith("  "):
                top[name.strip()] = int(cumulative) / 1e6
    return top


def startup_imports(folder: Path, work: Path) -> dict:
    """Import seconds of a cold featurize of the first 8 images (python -X importtime), and what heavy
    packages it imported (none is the goal: TFLite needs only LiteRT)."""
    tiny = work / "cpu-tiny"
    for k, p in enumerate(sorted(folder.rglob("*.jpg"))[:8]):
        (tiny / p.parent.name).mkdir(parents=True, exist_ok=True)
        shutil.copyfile(p, tiny / p.parent.name / f"{k}-{p.name}")
    store = work / "cpu-tiny-store"
    shutil.rmtree(store, ignore_errors=True)
    out = subprocess.run([sys.executable, "-X", "importtime", "-c", _IMPORTS_CHILD, str(tiny), str(store)], cwd=REPO,
                         check=True, capture_output=True, text=True)
    top = _import_seconds(out.stderr)
    largest = sorted(top.items(), key=lambda kv: -kv[1])[:5]
    return {"imports_s": sum(top.values()), "heavy_imports": out.stdout.split()[-1],
            "top_imports": ", ".join(f"{k} {v:.2f} s" for k, v in largest),
            "tiny_cold_s": cli_run(tiny, store, fresh=True)["wall_s"]}


_PHASES_CHILD = r"""
import sys, time
clock = lambda: time.clock_gettime(time.CLOCK_MONOTONIC)
stamps = {"python": clock()}
from pipeline.cli import console_main
import pipeline.engines.base as base, pipeline.engines.local as local
stamps["imports"] = clock()

def stamped(owner, name, start, end):
    f = getattr(owner, name)
    def wrapper(*a, **k):
        stamps.setdefault(start, clock())
        try:
            return f(*a, **k)
        finally:
            stamps[end] = clock()
    setattr(owner, name, wrapper)

stamped(local.LocalEngine, "work", "work_start", "work_end")
stamped(base, "commit_run", "commit_start", "closed")
sys.argv[1:] = ["featurize", sys.argv[1], "--out", sys.argv[2], "--no-progress"]
rc = console_main()
stamps["main_done"] = clock()
print(" ".join(f"{k}={v!r}" for k, v in stamps.items()), flush=True)
sys.exit(rc)
"""


def startup_phases(folder: Path, store: Path) -> dict:
    """Where the seconds of one cold ``featurize`` outside its own figure go: the process from its start to
    the first line of Python, the imports, then up to the first image (arguments, model, listing, stores
    opened), the run itself, closing the stores (the parts merged into one segment, checksums, fsync) and
    the exit (the process's end as its parent sees it)."""
    shutil.rmtree(store, ignore_errors=True)
    shutil.rmtree(store.with_name(store.name + "-predictions"), ignore_errors=True)
    start = time.clock_gettime(time.CLOCK_MONOTONIC)
    out = subprocess.run([sys.executable, "-c", _PHASES_CHILD, str(folder), str(store)], cwd=REPO, check=True,
                         capture_output=True, text=True)
    end = time.clock_gettime(time.CLOCK_MONOTONIC)
    t = {k: float(v) for k, v in (kv.split("=") for kv in out.stdout.strip().split("\n")[-1].split())}
    return {"phase_interpreter_s": t["python"] - start, "phase_imports_s": t["imports"] - t["python"],
            "phase_before_run_s": t["work_start"] - t["imports"], "phase_run_s": t["work_end"] - t["work_start"],
            "phase_close_s": t["closed"] - t["work_end"], "phase_exit_s": end - t["closed"]}


def bench_cpu(folder: Path, model: Path, work: Path, repeat: int) -> dict:
    """The issue-30 comparison on `folder`: medians over `repeat` interleaved rounds.

    The package's bytecode is compiled first, as ``pip install`` does: where PYTHONDONTWRITEBYTECODE is
    set (this development machine sets it) a checkout would otherwise compile every module it imports
    in every run (~0.1-0.2 s of CPU per cold run), which no installed copy does."""
    subprocess.run([sys.executable, "-m", "compileall", "-q", str(REPO / "pipeline")], check=True)
    paths = sorted(str(p) for p in folder.rglob("*") if p.is_file())
    listing = work / "cpu-listing.txt"
    listing.write_text("\n".join(paths))
    runs: dict[str, list[float]] = {}
    for _ in range(repeat):
        for name, fn in (("plain_1", lambda: plain_loops(model, listing, 1)),
                         ("plain_2", lambda: plain_loops(model, listing, 2)),
                         ("cli", lambda: featurize_cli(folder, work / "cpu-store", len(paths)))):
            for key, value in fn().items():
                runs.setdefault(f"{name}_{key}" if name != "cli" else key, []).append(value)
    res = {k: float(np.median(v)) for k, v in runs.items()}
    res.update(n=len(paths), repeat=repeat, cores=len(os.sched_getaffinity(0)),
               load_avg=os.getloadavg()[0])
    res.update(startup_imports(folder, work))
    res.update(startup_phases(folder, work / "cpu-phases-store"))
    return res


def cpu_report(r: dict) -> str:
    limit = r["plain_2_ips"]
    return "\n".join([
        (f"\nthe CPU limit (mobilenet_v2_quant TFLite, {r['n']} images, {r['cores']} usable cores, median of "
         f"{r['repeat']} interleaved rounds; load average {r['load_avg']:.1f} at the end)"),
        f"  {'method':<58} {'img/s':>8} {'x limit':>8} {'CPU ms/img':>11}",
        (f"  {'plain loop, one process':<58} {r['plain_1_ips']:8.1f} {r['plain_1_ips'] / limit:8.2f} "
         f"{r['plain_1_cpu_ms']:11.2f}"),
        (f"  {'two plain loops in two processes at once (the limit)':<58} {limit:8.1f} {1:8.2f} "
         f"{r['plain_2_cpu_ms']:11.2f}"),
        (f"  {'featurize CLI cold, wall clock incl. start-up (target 0.92)':<58} {r['cli_ips']:8.1f} "
         f"{r['cli_ips'] / limit:8.2f} {r['cli_cpu_ms']:11.2f}"),
        (f"  {'featurize, the run own figure, excl. start-up (target 0.97)':<58} {r['cli_own_ips']:8.1f} "
         f"{r['cli_own_ips'] / limit:8.2f}"),
        (f"  two processes / one: {limit / r['plain_1_ips']:.2f}x; featurize CPU per image / plain loop's: "
         f"{r['cli_cpu_ms'] / r['plain_2_cpu_ms']:.2f}x (start-up included)"),
        (f"  start-up: {r['cli_outside_s']:.2f} s of the cold run outside its own figure (imports, model, listing, "
        f"closing, exit); a no-op run on the complete store {r['noop_s']:.2f} s; 8 images cold "
        f"{r['tiny_cold_s']:.2f} s, of it imports {r['imports_s']:.2f} s (largest: {r['top_imports']}); "
        f"heavy packages imported: {r['heavy_imports']}"),
        ("  one more cold run, its phases: " + ", ".join(
            f"{k[len('phase_'):-2].replace('_', ' ')} {r[k]:.3f} s" for k in r if k.startswith("phase_"))),
    ])
