"""Can a flood exhaust `serve`? Peak RSS of the server process under three floods, before/after in one run.

    .venv/bin/python bench/serve_flood.py --code /work/main --code .
    .venv/bin/python bench/serve_flood.py --code . --big 40 --bodies 50 --slow 50 --slow-s 20

For every code root given (`--code`, a checkout whose `pipeline` package is served, e.g. main for the
"before" figure), each flood runs against a fresh `python -m pipeline serve HEAD` on 127.0.0.1
(PYTHONPATH = that root, its default limits), and reports the server's peak RSS (VmHWM), the
statuses it answered and whether the next ordinary request then answers 200:
  big PNGs      --big concurrent POSTs of one 6000x6000 PNG (a smooth picture, about 100 kB)
  20 MB bodies  --bodies concurrent POSTs of 20,000,000 random bytes (under the 20 MiB body limit)
  slow headers  --slow connections sending their request headers one byte every --drip-s seconds:
                how many the server still holds open after --slow-s seconds
and, once, the slow-header flood against plain uvicorn (a trivial app) with its own settings turned
tight: timeout_keep_alive=2, limit_concurrency, h11_max_incomplete_event_size=4096.
Every flood is bounded in count and time (--request-timeout per request). The head is a logreg head
over the bundled mobilenet_v2_quant, trained here on a few generated images.
"""
from __future__ import annotations

import argparse
import http.client
import json
import os
import platform
import select
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


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def proc_status(pid: int, key: str) -> float:
    """A /proc/PID/status memory figure (VmRSS, VmHWM) in MiB."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(key + ":"):
            return round(int(line.split()[1]) / 1024, 1)
    raise KeyError(key)


class Server:
    """`python -m pipeline serve MODEL` from the checkout `code`, in a subprocess on a free loopback port."""

    def __init__(self, code: Path, model: Path, *flags: str):
        self.port = free_port()
        env = {**os.environ, "PYTHONPATH": str(code)}
        self.proc = subprocess.Popen([sys.executable, "-m", "pipeline", "serve", str(model), "--port", str(self.port),
                                      *flags], cwd=code, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            try:
                if self.request("GET", "/health")[0] == 200:
                    return
            except OSError:
                time.sleep(0.1)
        self.close()
        raise RuntimeError("the server did not start: " + self.proc.stderr.read().decode()[-2000:])

    def request(self, method: str, path: str, body: bytes | None = None, timeout: float = 60) -> tuple[int, str]:
        """(status, Retry-After header or ''); status -1 when the connection failed."""
        c = http.client.HTTPConnection("127.0.0.1", self.port, timeout=timeout)
        try:
            c.request(method, path, body=body, headers={"Content-Type": "application/octet-stream"})
            r = c.getresponse()
            r.read()
            return r.status, r.getheader("Retry-After") or ""
        finally:
            c.close()

    def close(self):
        self.proc.terminate()
        try:
            self.proc.wait(30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(30)


def concurrent_posts(server: Server, body: bytes, n: int, timeout: float) -> dict:
    """n POST /predict of `body` started together: how they were answered."""
    statuses, retry = [], set()
    barrier = threading.Barrier(n)

    def client():
        barrier.wait()
        try:
            status, ra = server.request("POST", "/predict", body, timeout)
        except (OSError, http.client.HTTPException):
            status, ra = -1, ""
        statuses.append(status)
        if ra:
            retry.add(ra)

    threads = [threading.Thread(target=client) for _ in range(n)]
    start = time.monotonic()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    counts = {str(s): statuses.count(s) for s in sorted(set(statuses))}
    return {"statuses": counts, "retry_after": sorted(retry), "wall_s": round(time.monotonic() - start, 1)}


def slow_headers(server: Server, n: int, seconds: float, drip_s: float) -> dict:
    """n connections that send a request line and headers one byte at a time; how many stay open."""
    head = b"POST /predict HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Slow: " + b"a" * 10_000
    socks = {socket.create_connection(("127.0.0.1", server.port), timeout=10): 0 for _ in range(n)}
    closed_at, start = [], time.monotonic()
    while time.monotonic() - start < seconds and socks:
        for s in list(socks):
            if _closed(s) or not _send_byte(s, head[socks[s] % len(head)]):
                closed_at.append(round(time.monotonic() - start, 1))
                s.close()
                del socks[s]
            else:
                socks[s] += 1
        time.sleep(drip_s)
    out = {"connections": n, "open_after_s": round(time.monotonic() - start, 1), "still_open": len(socks),
           "closed_by_server_after_s": [min(closed_at), max(closed_at)] if closed_at else None}
    out["next_request"] = server.request("POST", "/predict", SMALL[0])[0]  # while the survivors are still open
    for s in socks:
        s.close()
    return out


def _closed(s: socket.socket) -> bool:
    """True when the server closed (or answered and closed) the connection."""
    readable, _, _ = select.select([s], [], [], 0)
    if not readable:
        return False
    try:
        s.recv(65536)  # b"" (closed) or an answer before the headers are complete: a refusal either way
    except OSError:
        pass
    return True


def _send_byte(s: socket.socket, byte: int) -> bool:
    try:
        s.sendall(bytes([byte]))
        return True
    except OSError:
        return False


SMALL: list[bytes] = []  # one ordinary JPEG, made in run()


def make_head(work: Path) -> Path:
    from PIL import Image

    rng = np.random.default_rng(0)
    for label, tint in (("red", (220, 40, 40)), ("blue", (40, 40, 220))):
        (work / "data" / label).mkdir(parents=True)
        for i in range(4):
            arr = (0.5 * rng.integers(0, 256, (240, 320, 3)) + 0.5 * np.asarray(tint)).astype(np.uint8)
            Image.fromarray(arr).save(work / "data" / label / f"{i}.jpg", quality=85)
    SMALL.append((work / "data" / "red" / "0.jpg").read_bytes())
    store = pipeline.featurize(work / "data", "mobilenet_v2_quant", out=work / "feat", progress=False)
    return pipeline.train(store, head="logreg", C=1.0).save(work / "flood.head.npz")


def big_png(side: int) -> bytes:
    """A side x side RGB PNG of a smooth picture (compresses to about 100 kB at 6000 x 6000)."""
    import io

    from PIL import Image

    x = np.arange(side, dtype=np.uint32)
    arr = np.empty((side, side, 3), np.uint8)
    arr[..., 0] = (x[None, :] // 24) % 256
    arr[..., 1] = (x[:, None] // 24) % 256
    arr[..., 2] = 128
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, "PNG")
    return buf.getvalue()


def flood(code: Path, model: Path, action) -> dict:
    server = Server(code, model)
    try:
        rss = proc_status(server.proc.pid, "VmRSS")
        out = action(server)
        out.update(rss_before_mib=rss, peak_rss_mib=proc_status(server.proc.pid, "VmHWM"))
        if "next_request" not in out:
            out["next_request"] = server.request("POST", "/predict", SMALL[0])[0]
        return out
    finally:
        server.close()


class PlainUvicorn:
    """uvicorn's own guards alone, on a trivial app in a thread of this process: `timeout_keep_alive`,
    `limit_concurrency` and h11's `h11_max_incomplete_event_size` (does any of them close a slow-header client?)."""

    def __init__(self, connections: int):
        import uvicorn

        async def hello(scope, receive, send):
            if scope["type"] == "http":
                await send({"type": "http.response.start", "status": 200, "headers": [(b"content-length", b"0")]})
                await send({"type": "http.response.body", "body": b""})

        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.port = self.sock.getsockname()[1]
        self.settings = {"timeout_keep_alive": 2, "limit_concurrency": connections + 2,
                         "h11_max_incomplete_event_size": 4096}
        self.server = uvicorn.Server(uvicorn.Config(hello, log_level="error", http="h11", **self.settings))
        self.thread = threading.Thread(target=self.server.run, kwargs={"sockets": [self.sock]}, daemon=True)
        self.thread.start()
        while not self.server.started:
            time.sleep(0.01)

    request = Server.request

    def close(self):
        self.server.should_exit = True
        self.thread.join(10)
        self.sock.close()


def uvicorn_alone(args) -> dict:
    server = PlainUvicorn(args.slow)
    try:
        return {"settings": server.settings, **slow_headers(server, args.slow, args.slow_s, args.drip_s)}
    finally:
        server.close()


def run(args) -> dict:
    out = {"machine": f"{platform.machine()}, {os.cpu_count()} cores, python {platform.python_version()}",
           "load_average_before": [round(x, 1) for x in os.getloadavg()], "runs": {}}
    with tempfile.TemporaryDirectory() as tmp:
        model = make_head(Path(tmp))
        png, body = big_png(args.side), os.urandom(20_000_000)
        out["big_png_bytes"] = len(png)
        for code in args.code:
            key = str(code.resolve())
            res = out["runs"][key] = {}
            res["big_png"] = flood(code, model, lambda s: concurrent_posts(s, png, args.big, args.request_timeout))
            res["bodies_20mb"] = flood(code, model,
                                       lambda s: concurrent_posts(s, body, args.bodies, args.request_timeout))
            res["slow_headers"] = flood(code, model, lambda s: slow_headers(s, args.slow, args.slow_s, args.drip_s))
            print(json.dumps({key: res}, indent=1), flush=True)
        out["slow_headers_uvicorn_alone"] = uvicorn_alone(args)
    out["load_average_after"] = [round(x, 1) for x in os.getloadavg()]
    return out


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--code", type=Path, action="append", help="checkout to serve from (repeatable; default: this one)")
    p.add_argument("--big", type=int, default=40, help="concurrent big-PNG requests")
    p.add_argument("--side", type=int, default=6000, help="the big PNG's width and height")
    p.add_argument("--bodies", type=int, default=50, help="concurrent 20 MB bodies")
    p.add_argument("--slow", type=int, default=50, help="slow-header connections")
    p.add_argument("--slow-s", type=float, default=30.0, help="how long the slow clients drip")
    p.add_argument("--drip-s", type=float, default=1.0, help="seconds between two bytes of a slow client")
    p.add_argument("--request-timeout", type=float, default=180.0, help="client timeout per request")
    p.add_argument("--json", type=Path, help="also write the figures here")
    args = p.parse_args(argv)
    args.code = args.code or [REPO]
    out = run(args)
    print(json.dumps(out, indent=2))
    if args.json:
        args.json.write_text(json.dumps(out, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
