"""What a server may be asked for (:class:`ServeLimits`, one CLI flag per field) and how a request is refused
(:class:`ServeError`: an HTTP status, a stable code, a message for the client)."""
from __future__ import annotations

from dataclasses import dataclass

from ..decode.formats import MAX_PIXELS
from ..errors import UsageError


@dataclass(frozen=True)
class ServeLimits:
    """What one request, and the server as a whole, may ask for; each has a CLI flag of the same name."""

    max_body_bytes: int = 20 << 20  # request body; more: 413 body_too_large
    max_pixels: int = 40_000_000  # per image, checked before decoding; more: 422 too_many_pixels
    max_images: int = 64  # images per request; more: 413 too_many_images
    timeout_s: float = 30.0  # per request, reading the body included; longer: 504 timeout
    max_in_flight: int = 64  # requests admitted at once; more: 503 overloaded, with Retry-After
    batch_wait_ms: float = 5.0  # how long the batcher waits for requests still being decoded
    batch_size: int | None = None  # images per network call (default: the backbone's batch size)
    # the server as a whole: what all requests together may hold, and how long one waits for it
    max_pixels_in_flight: int = 48_000_000  # decoded pixels, all requests; spent: wait, then 503 overloaded
    max_body_bytes_in_flight: int = 128 << 20  # request bodies held, all requests; spent: wait, then 503
    queue_wait_s: float = 5.0  # how long a request waits for the pixel or body budget before its 503
    max_connections: int = 256  # open connections; one more: 503 too_many_connections, closed at once
    header_timeout_s: float = 10.0  # to send complete request headers (after connecting or a response)
    keep_alive_s: float = 5.0  # an idle keep-alive connection is closed after this (uvicorn timeout_keep_alive)

    def __post_init__(self):
        for name in ("max_body_bytes", "max_pixels", "max_images", "max_in_flight", "max_connections"):
            if int(getattr(self, name)) < 1:
                raise UsageError(f"{name} must be at least 1, got {getattr(self, name)!r}")
        if self.max_pixels > MAX_PIXELS:
            raise UsageError(f"max_pixels must be at most featurize's limit of {MAX_PIXELS}, got {self.max_pixels}")
        for total, one in (("max_pixels_in_flight", "max_pixels"), ("max_body_bytes_in_flight", "max_body_bytes")):
            if getattr(self, total) < getattr(self, one):
                raise UsageError(f"{total} must be at least {one} ({getattr(self, one)}), or the largest request "
                                 f"allowed could never run; got {getattr(self, total)}")
        if not self.timeout_s > 0 or self.batch_wait_ms < 0:
            raise UsageError(f"timeout_s must be > 0 and batch_wait_ms >= 0, got {self.timeout_s!r}, "
                             f"{self.batch_wait_ms!r}")
        for name in ("queue_wait_s", "header_timeout_s", "keep_alive_s"):
            if not getattr(self, name) > 0:
                raise UsageError(f"{name} must be > 0 seconds, got {getattr(self, name)!r}")
        if self.batch_size is not None and self.batch_size < 1:
            raise UsageError(f"batch_size must be at least 1, got {self.batch_size!r}")


class ServeError(Exception):
    """A refused request: HTTP status, stable code, a message for the client, optional per-image errors."""

    def __init__(self, status: int, code: str, message: str, errors: list | None = None,
                 headers: dict | None = None):
        super().__init__(message)
        self.status, self.code, self.message = status, code, message
        self.errors, self.headers = errors, headers
