"""Serving load test: `python -m pipeline serve` on loopback against batch `score`, in one run.

    make bench-serve
    .venv/bin/python bench/serve_bench.py --n 200 --requests 400 --repeat 3

Steps, all on 127.0.0.1 and each bounded by a fixed number of requests:
  score        pipeline.score on a folder of N JPEGs into a fresh cache: batch img/s
  16 clients   16 threads, one keep-alive connection each, --requests raw-body POSTs of those JPEGs
               in all: throughput, p50/p99 latency, 5xx count
               (score and the 16-client run alternate for --repeat rounds; the median ratio is kept)
  CPU          CPU seconds per image of score (this process) and of the server process (/proc), which
               the share of the cores that other processes leave does not change
  1 client     one thread, --single requests of one 500x375 JPEG: p50/p99 latency, and the same
               photo through clf.predict_proba(bytes) in this process (the floor without HTTP)
  overload     a second server with --max-in-flight 4 under 32 clients: 503s (with Retry-After),
               other 5xx, and that the server still answers afterwards
The server runs in its own process (`python -m pipeline serve`), as a user would start it.
Images: ../shared/data/catsdogs/train when present, else generated 500x375 JPEGs.
"""
from __future__ import annotations

import argparse
import http.client
import json
import os
import platform
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import pipeline  # noqa: E402
from pipeline.dataset.listing import list_images  # noqa: E402

DEFAULT_DATA = REPO.parent / "shared" / "data" / "catsdogs" / "train"


def images(data: Path, n: int, dest: Path) -> tuple[Path, Path]:
    """(labelled folder of n images, half per class; the same images unlabelled in one folder)."""
    labelled, flat = dest / "labelled", dest / "flat"
    flat.mkdir(parents=True)
    if data.is_dir():
        by_class: dict[str, list] = {}
        for r in list_images(data).records:
            by_class.setdefault(r.label, []).append(r.path)
        for label, paths in by_class.items():
            (labelled / label).mkdir(parents=True)
            for p in paths[: n // len(by_class)]:
                content = p.read_bytes()
                (labelled / label / p.name).write_bytes(content)
                (flat / f"{label}.{p.name}").write_bytes(content)
        return labelled, flat
    from PIL import Image

    rng = np.random.default_rng(0)
    for label, tint in (("red", (220, 40, 40)), ("blue", (40, 40, 220))):
        (labelled / label).mkdir(parents=True)
        for i in range(n // 2):
            arr = (0.5 * rng.integers(0, 256, (375, 500, 3)) + 0.5 * np.asarray(tint)).astype(np.uint8)
            Image.fromarray(arr).save(labelled / label / f"{i}.jpg", quality=85)
            (flat / f"{label}.{i}.jpg").write_bytes((labelled / label / f"{i}.jpg").read_bytes())
    return labelled, flat


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Server:
    """`python -m pipeline serve MODEL` in a subprocess on a free loopback port."""

    def __init__(self, model: Path, *flags: str):
        self.port = free_port()
        self.proc = subprocess.Popen([sys.executable, "-m", "pipeline", "serve", str(model), "--port", str(self.port),
                                      *flags], cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        for _ in range(1200):
            try:
                if self.request("GET", "/health")[0] == 200:
                    return
            except OSError:
                time.sleep(0.05)
        self.close()
        raise RuntimeError("the server did not start: " + self.proc.stderr.read().decode()[-2000:])

    def request(self, method: str, path: str, body: bytes | None = None) -> tuple[int, dict]:
        c = http.client.HTTPConnection("127.0.0.1", self.port, timeout=60)
        try:
            c.request(method, path, body=body)
            r = c.getresponse()
            return r.status, dict(r.getheaders()) | {"body": r.read()}
        finally:
            c.close()

    def cpu_s(self) -> float:
        """CPU seconds (user + system, all threads) the server process has used so far."""
        fields = Path(f"/proc/{self.proc.pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")

    def rss_mib(self) -> float:
        """Resident memory of the server process now."""
        status = Path(f"/proc/{self.proc.pid}/status").read_text()
        return round(int(next(l for l in status.splitlines() if l.startswith("VmRSS:")).split()[1]) / 1024, 1)

    def close(self):
        self.proc.terminate()
        self.proc.wait(30)


def load(server: "Server", bodies: list[bytes], clients: int, total: int) -> dict:
    """`total` POST /predict over `clients` threads with keep-alive connections: latencies, statuses, CPU."""
    port = server.port
    latencies, statuses, retry_after = [], [], []
    lock, counter = threading.Lock(), iter(range(total))

    def client():
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
        while True:
            with lock:
                i = next(counter, None)
            if i is None:
                break
            t = time.perf_counter()
            try:
                conn.request("POST", "/predict", body=bodies[i % len(bodies)], headers={"Content-Type": "image/jpeg"})
                r = conn.getresponse()
                r.read()
                status = r.status
                if status == 503:
                    retry_after.append(r.getheader("Retry-After"))
            except (OSError, http.client.HTTPException):
                status = -1
                conn.close()
                conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
            with lock:
                latencies.append(time.perf_counter() - t)
                statuses.append(status)
        conn.close()

    threads = [threading.Thread(target=client) for _ in range(clients)]
    cpu_server, cpu_client = server.cpu_s(), time.process_time()
    start = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    wall = time.perf_counter() - start
    cpu_server, cpu_client = server.cpu_s() - cpu_server, time.process_time() - cpu_client
    ms = np.asarray(latencies) * 1000
    ok = [s for s in statuses if s == 200]
    return {"clients": clients, "requests": total, "wall_s": round(wall, 2), "ok": len(ok),
            "img_per_s": round(len(ok) / wall, 1), "p50_ms": round(float(np.percentile(ms, 50)), 1),
            "p99_ms": round(float(np.percentile(ms, 99)), 1),
            "status_503": statuses.count(503), "retry_after": sorted(set(retry_after)),
            "other_5xx": sum(1 for s in statuses if s >= 500 and s != 503),
            "failed_connections": statuses.count(-1),
            "server_cpu_ms_per_img": round(1000 * cpu_server / max(1, len(ok)), 2),
            "client_cpu_ms_per_img": round(1000 * cpu_client / max(1, len(ok)), 2)}


def score_rate(clf, flat: Path, work: Path, tag: str) -> tuple[float, float]:
    """(img/s, CPU ms per image) of pipeline.score on `flat` into a fresh cache (every image featurized)."""
    n = len(list(flat.iterdir()))
    t, cpu = time.perf_counter(), time.process_time()
    pipeline.score(clf, flat, work / f"pred-{tag}.csv", cache=work / f"cache-{tag}", progress=False)
    return round(n / (time.perf_counter() - t), 1), round(1000 * (time.process_time() - cpu) / n, 2)


def in_process(clf, photo: bytes, n: int) -> dict:
    """p50/p99 of clf.predict_proba(photo bytes) in this process: the latency floor without HTTP."""
    clf.predict_proba(photo)
    ms = []
    for _ in range(n):
        t = time.perf_counter()
        clf.predict_proba(photo)
        ms.append(1000 * (time.perf_counter() - t))
    return {"p50_ms": round(float(np.percentile(ms, 50)), 1), "p99_ms": round(float(np.percentile(ms, 99)), 1)}


def one_photo(flat: Path) -> bytes:
    """One 500x375 (or 500x374) JPEG of the set."""
    from PIL import Image

    for p in sorted(flat.iterdir()):
        if Image.open(p).size[0] == 500 and Image.open(p).size[1] in (374, 375):
            return p.read_bytes()
    raise RuntimeError("no 500x375 JPEG in the set")


def run(args) -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        labelled, flat = images(args.data, args.n, work / "data")
        store = pipeline.featurize(labelled, "mobilenet_v2_quant", out=work / "train", progress=False)
        clf = pipeline.train(store, head="logreg", C=1.0)
        model = clf.save(work / "head.joblib")
        bodies = [p.read_bytes() for p in sorted(flat.iterdir())]
        out = {"machine": f"{platform.machine()}, {os.cpu_count()} cores, python {platform.python_version()}",
               "load_average_before": round(os.getloadavg()[0], 1), "images": len(bodies),
               "source": str(args.data) if args.data.is_dir() else "generated 500x375", "rounds": []}
        server = Server(model)
        try:
            load(server, bodies[:64], args.clients, 64)  # warm-up
            for r in range(args.repeat):  # interleaved, so the machine's slow moments hit both alike
                score, score_cpu = score_rate(clf, flat, work, str(r))
                served = load(server, bodies, args.clients, args.requests)
                out["rounds"].append({"score_img_per_s": score, "score_cpu_ms_per_img": score_cpu,
                                      "clients16": served, "ratio": round(served["img_per_s"] / score, 2),
                                      "cpu_ratio": round(score_cpu / served["server_cpu_ms_per_img"], 2)})
            out["single"] = load(server, [one_photo(flat)], 1, args.single)
            out["single_in_process"] = in_process(clf, one_photo(flat), args.single)
        finally:
            server.close()
        server = Server(model, "--max-in-flight", "4")
        try:
            rss = server.rss_mib()
            out["overload"] = load(server, bodies, 2 * args.clients, args.requests)
            out["overload"].update(health_after=server.request("GET", "/health")[0], rss_mib_before=rss,
                                   rss_mib_after=server.rss_mib())
        finally:
            server.close()
    out["load_average_after"] = round(os.getloadavg()[0], 1)  # other work on the machine skews every figure
    out["throughput_ratio"] = float(np.median([r["ratio"] for r in out["rounds"]]))
    # CPU per image does not depend on the share of the cores other processes leave: score's CPU ms per
    # image over the server's is the throughput ratio both would reach on two otherwise idle cores
    out["cpu_ratio"] = float(np.median([r["cpu_ratio"] for r in out["rounds"]]))
    return out


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data", type=Path, default=Path(os.environ.get("TFP_BENCH_DATA", DEFAULT_DATA)))
    p.add_argument("--n", type=int, default=200, help="images (half per class)")
    p.add_argument("--requests", type=int, default=400, help="requests of each 16-client run")
    p.add_argument("--clients", type=int, default=16)
    p.add_argument("--single", type=int, default=200, help="requests of the single-client run")
    p.add_argument("--repeat", type=int, default=3, help="interleaved rounds of score and the 16-client run")
    p.add_argument("--json", type=Path, help="also write the figures here")
    args = p.parse_args(argv)
    out = run(args)
    print(json.dumps(out, indent=2))
    if args.json:
        args.json.write_text(json.dumps(out, indent=2))
    s, o = out["single"], out["overload"]
    print(f"\nload average {out['load_average_before']} -> {out['load_average_after']} on {out['machine']}")
    for r in out["rounds"]:
        c = r["clients16"]
        print(f"batch score {r['score_img_per_s']} img/s ({r['score_cpu_ms_per_img']} CPU ms/img); {c['clients']} "
              f"clients {c['img_per_s']} img/s = {r['ratio']}x ({c['server_cpu_ms_per_img']} server + "
              f"{c['client_cpu_ms_per_img']} client CPU ms/img: {r['cpu_ratio']}x), p50 {c['p50_ms']} ms, "
              f"p99 {c['p99_ms']} ms, 5xx {c['other_5xx'] + c['status_503']}")
    d = out["single_in_process"]
    print(f"median ratio {out['throughput_ratio']}x (by CPU per image {out['cpu_ratio']}x); "
          f"1 client p50 {s['p50_ms']} ms, "
          f"p99 {s['p99_ms']} ms (in process, no HTTP: p50 {d['p50_ms']} ms, p99 {d['p99_ms']} ms); overload "
          f"(--max-in-flight 4, {o['clients']} clients): {o['status_503']} x 503 (Retry-After {o['retry_after']}), "
          f"{o['other_5xx']} other 5xx, {o['ok']} answered, health after {o['health_after']}, server RSS "
          f"{o['rss_mib_before']} -> {o['rss_mib_after']} MiB")
    return 0


if __name__ == "__main__":
    sys.exit(main())
