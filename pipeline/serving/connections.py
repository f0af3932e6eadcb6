"""uvicorn's HTTP/1.1 protocol (h11) with the two connection guards uvicorn lacks.

uvicorn closes an idle keep-alive connection (``timeout_keep_alive``) only after it has answered a
request, and stops that timer at the first byte of the next one; ``limit_concurrency`` answers 503
to a *request* while too many connections are open, but never closes one; h11 caps the size of
incomplete headers (16 KiB) but not the time they take. So a client sending its headers one byte a
second holds a connection forever. This protocol adds:

* a header deadline: a connection must complete its request headers within ``header_timeout_s`` of
  opening, and of each response sent on it (the next request, or the rest of a body the server
  stopped reading); otherwise it is closed, whatever bytes keep trickling in;
* a connection cap: a connection opened while ``max_connections`` are already open is answered 503
  (``Retry-After: 1``, ``Connection: close``) and closed without reading anything.

The body of a request in progress is bounded by the request's own time limit (504), not here.
"""
from __future__ import annotations

import json

from uvicorn.protocols.http.h11_impl import H11Protocol


def _refusal() -> bytes:
    body = json.dumps({"code": "too_many_connections", "message": "too many open connections; retry shortly"}).encode()
    return (b"HTTP/1.1 503 Service Unavailable\r\nRetry-After: 1\r\nConnection: close\r\n"
            b"Content-Type: application/json\r\nContent-Length: %d\r\n\r\n" % len(body)) + body


REFUSAL = _refusal()


class GuardedH11Protocol(H11Protocol):
    """H11Protocol with a header deadline and a connection cap (set by :func:`guarded_protocol`)."""

    header_timeout_s: float = 10.0
    max_connections: int = 256

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self._deadline = None

    def connection_made(self, transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        if len(self.connections) > self.max_connections:  # this one included
            transport.write(REFUSAL)
            transport.close()
            return
        self._arm()

    def connection_lost(self, exc) -> None:
        self._disarm()
        super().connection_lost(exc)

    def handle_events(self) -> None:
        cycle = self.cycle
        super().handle_events()
        if self.cycle is not cycle:  # a request's headers are complete: its own time limit takes over
            self._disarm()

    def on_response_complete(self) -> None:
        self._arm()  # before super(), which may start a pipelined request (and disarm again)
        super().on_response_complete()

    def _arm(self) -> None:
        self._disarm()
        self._deadline = self.loop.call_later(self.header_timeout_s, self._expired)

    def _disarm(self) -> None:
        if self._deadline is not None:
            self._deadline.cancel()
            self._deadline = None

    def _expired(self) -> None:
        self._deadline = None
        if not self.transport.is_closing():
            self.transport.close()


def guarded_protocol(header_timeout_s: float, max_connections: int) -> type:
    """The protocol class to hand uvicorn (``uvicorn.Config(http=...)``) for these limits."""
    return type("GuardedH11Protocol", (GuardedH11Protocol,),
                {"header_timeout_s": float(header_timeout_s), "max_connections": int(max_connections)})
