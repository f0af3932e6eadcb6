"""The connection guards of `serve` (header deadline, connection cap) on a tiny ASGI app, over real sockets
on 127.0.0.1 (RELIABILITY D07 (4), slow-loris). Waits are generous upper bounds for "the server closed it",
never speed thresholds."""
from __future__ import annotations

import http.client
import select
import socket
import threading
import time
from contextlib import contextmanager

import pytest

uvicorn = pytest.importorskip("uvicorn", reason="serve needs the [serve] extra: FastAPI, uvicorn, python-multipart")
from pipeline.serving.connections import guarded_protocol  # noqa: E402

REQUEST = b"GET / HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n"


async def hello(scope, receive, send):
    if scope["type"] != "http":
        return
    await send({"type": "http.response.start", "status": 200, "headers": [(b"content-length", b"2")]})
    await send({"type": "http.response.body", "body": b"ok"})


@contextmanager
def served(header_timeout_s=1.0, max_connections=100, keep_alive_s=30):
    """`hello` behind uvicorn with the guarded protocol on a free loopback port; yields (port, server)."""
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    config = uvicorn.Config(hello, log_level="warning", http=guarded_protocol(header_timeout_s, max_connections),
                            timeout_keep_alive=keep_alive_s, limit_concurrency=max_connections + 1)
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started and time.monotonic() < deadline:
        time.sleep(0.01)
    try:
        yield sock.getsockname()[1], server
    finally:
        server.should_exit = True
        thread.join(10)
        sock.close()


def closed_within(conn: socket.socket, seconds: float, drip: bytes = b"") -> bool:
    """True when the server closes `conn` within `seconds` while the client sends `drip` one byte at a time."""
    deadline, i = time.monotonic() + seconds, 0
    while time.monotonic() < deadline:
        readable, _, _ = select.select([conn], [], [], 0.2)
        if readable:
            try:
                if conn.recv(65536) == b"":
                    return True
            except OSError:
                return True
        elif drip:
            try:
                conn.sendall(drip[i % len(drip):i % len(drip) + 1])
            except OSError:
                return True
            i += 1
    return False


def get(port: int) -> bytes:
    with socket.create_connection(("127.0.0.1", port), timeout=30) as c:
        c.sendall(REQUEST)
        return c.recv(65536)


def test_a_client_sending_headers_one_byte_at_a_time_is_closed_after_the_header_timeout():
    with served(header_timeout_s=1.0) as (port, _):
        slow = socket.create_connection(("127.0.0.1", port), timeout=30)
        assert closed_within(slow, 30, drip=b"GET / HTTP/1.1\r\nX-Slow: " + b"a" * 1000)
        slow.close()
        assert get(port).startswith(b"HTTP/1.1 200")  # the server goes on serving


def test_a_connection_that_never_sends_anything_is_closed():
    with served(header_timeout_s=1.0) as (port, _):
        with socket.create_connection(("127.0.0.1", port), timeout=30) as idle:
            assert closed_within(idle, 30)


def test_the_deadline_restarts_after_each_response_and_covers_the_next_request():
    with served(header_timeout_s=1.0) as (port, _):
        with socket.create_connection(("127.0.0.1", port), timeout=30) as c:
            c.sendall(REQUEST)
            assert c.recv(65536).startswith(b"HTTP/1.1 200")  # one request served on it, then a slow second one
            assert closed_within(c, 30, drip=b"GET / HTTP/1.1\r\nX-Slow: " + b"a" * 1000)


def test_a_complete_request_in_time_is_answered_and_kept_alive():
    with served(header_timeout_s=5.0) as (port, _):
        c = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
        statuses, sockets = [], set()
        for _ in range(3):
            c.request("GET", "/")
            r = c.getresponse()
            statuses.append((r.status, r.read()))
            sockets.add(c.sock.getsockname())
        c.close()
    assert statuses == [(200, b"ok")] * 3 and len(sockets) == 1  # one connection, never reopened


def test_a_connection_beyond_the_cap_gets_503_with_retry_after_and_is_closed():
    with served(header_timeout_s=60, max_connections=2) as (port, server):
        held = [socket.create_connection(("127.0.0.1", port), timeout=30) for _ in range(2)]
        deadline = time.monotonic() + 30
        while len(server.server_state.connections) < 2 and time.monotonic() < deadline:
            time.sleep(0.01)
        with socket.create_connection(("127.0.0.1", port), timeout=30) as extra:
            answer = extra.recv(65536)
            assert closed_within(extra, 30)
        assert answer.startswith(b"HTTP/1.1 503") and b"Retry-After: 1" in answer
        assert b"too_many_connections" in answer
        held[0].sendall(REQUEST)  # an admitted connection is served
        assert held[0].recv(65536).startswith(b"HTTP/1.1 200")
        held[1].close()
        deadline = time.monotonic() + 30
        while len(server.server_state.connections) > 1 and time.monotonic() < deadline:
            time.sleep(0.01)
        assert get(port).startswith(b"HTTP/1.1 200")  # a closed one frees its place
        held[0].close()
