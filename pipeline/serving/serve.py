"""``python -m pipeline serve MODEL``: a head, or a model written by ``export``, behind HTTP (FastAPI + uvicorn).

``POST /predict`` takes one image as the raw request body, or one or many files as
multipart/form-data, and answers per image its ``filename``, ``prediction`` and ``probabilities``
(an object: class -> probability). ``GET /health`` and ``GET /model`` (classes, feature spec,
metrics, versions; no file-system paths) describe the server, ``/docs`` the API.

The model is a predictor (pipeline/serving/predictors.py: a head file over its backbone, an exported
SavedModel or .tflite), loaded once, before the first request. Images are decoded in worker
threads by :mod:`pipeline.decode.inputs` (the same pixels featurize makes of the same file) and handed
to one :class:`Batcher` thread, which runs the predictor on the images of concurrent requests
together. Every limit is one field of :class:`ServeLimits`; a request beyond
one is refused with a status and a stable ``code``, and error bodies carry no paths, tracebacks or
library versions. Requests are read into memory: nothing touches the file system per request.

What all requests together may hold is bounded too: request bodies and decoded pixels each draw on
one :class:`pipeline.serving.budget.Budget` (a request waits up to ``queue_wait_s``, then gets 503
with ``Retry-After``), and :func:`serve` runs uvicorn with :mod:`pipeline.serving.connections`'s
protocol (a connection cap and a deadline for request headers) and a keep-alive timeout.
"""
from __future__ import annotations

import asyncio
import errno
import io
import logging
import queue
import socket
import threading
import time
import uuid
import warnings
from concurrent.futures import Future
from contextlib import asynccontextmanager
from dataclasses import asdict, dataclass

import numpy as np
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse
from PIL import Image
from starlette.requests import ClientDisconnect

from ..decode.formats import ALLOWED_FORMATS, MAX_PIXELS
from ..decode.inputs import decode_bytes
from ..errors import ImageError, PipelineError, UsageError
from ..export.info import without_paths  # noqa: F401 - kept importable from here
from .budget import Budget
from .predictors import HeadPredictor

log = logging.getLogger(__name__)
MAX_FILENAME = 255  # characters of a client's file name echoed back


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


# ---- batching --------------------------------------------------------------------------------------
@dataclass
class _Job:
    pixels: np.ndarray  # (k, h, w, 3) uint8
    future: Future


class Batcher:
    """One thread running the backbone and the head on the images of concurrent requests together.

    It takes the first waiting job, then keeps gathering up to `batch_size` images while other
    requests are still being decoded (`decoding()` > 0), for at most `wait_s`: a lone request is
    never kept waiting, and under load one network call serves many requests.
    """

    def __init__(self, predictor, batch_size: int, wait_s: float, decoding=lambda: 0):
        self.predictor, self.batch_size, self.wait_s, self.decoding = predictor, batch_size, wait_s, decoding
        self._queue: queue.Queue = queue.Queue()
        self._thread = threading.Thread(target=self._run, name="batcher", daemon=True)

    def start(self) -> "Batcher":
        self._thread.start()
        return self

    def stop(self) -> None:
        self._queue.put(None)
        self._thread.join()

    def submit(self, pixels: np.ndarray) -> Future:
        job = _Job(pixels, Future())
        self._queue.put(job)
        return job.future

    def _gather(self, first: _Job) -> list[_Job]:
        jobs, n = [first], len(first.pixels)
        deadline = time.monotonic() + self.wait_s
        while n < self.batch_size:
            try:
                job = self._queue.get_nowait()
            except queue.Empty:
                left = deadline - time.monotonic()
                if left <= 0 or self.decoding() <= 0:
                    break
                try:
                    job = self._queue.get(timeout=min(left, 0.001))
                except queue.Empty:
                    continue
            if job is None:  # stop() was called: finish this batch, then stop
                self._queue.put(None)
                break
            jobs.append(job)
            n += len(job.pixels)
        return jobs

    def _run(self) -> None:
        while (first := self._queue.get()) is not None:
            jobs = [j for j in self._gather(first) if j.future.set_running_or_notify_cancel()]  # drop timed-out
            if not jobs:
                continue
            try:
                proba = self.predictor.predict_pixels(np.concatenate([j.pixels for j in jobs]))
            except BaseException as e:  # noqa: BLE001 - handed to every waiting request
                for j in jobs:
                    j.future.set_exception(e)
                continue
            start = 0
            for j in jobs:
                j.future.set_result(proba[start:start + len(j.pixels)])
                start += len(j.pixels)


# ---- reading a request -----------------------------------------------------------------------------
async def read_body(request, limit: int) -> bytes:
    """The whole body, refused (413) as soon as it is known to exceed `limit`: by its declared
    Content-Length before reading anything, else while streaming (chunked or lying uploads)."""
    declared = request.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > limit:
        raise ServeError(413, "body_too_large", f"the request body of {declared} bytes exceeds the limit of {limit}")
    chunks, size = [], 0
    try:
        async for chunk in request.stream():
            size += len(chunk)
            if size > limit:
                raise ServeError(413, "body_too_large", f"the request body exceeds the limit of {limit} bytes")
            chunks.append(chunk)
    except ClientDisconnect:
        raise ServeError(400, "client_disconnected", "the client went away before sending the whole body") from None
    return b"".join(chunks)


def _clean_name(raw) -> str | None:
    if raw is None:
        return None
    name = raw.decode("utf-8", "replace") if isinstance(raw, bytes) else str(raw)
    return name[:MAX_FILENAME]


def parse_multipart(body: bytes, content_type: str, max_parts: int) -> list[tuple[str | None, bytes]]:
    """(file name, bytes) of every part of a multipart/form-data body, parsed in memory."""
    from python_multipart.multipart import MultipartParser, parse_options_header

    _, params = parse_options_header(content_type)
    boundary = params.get(b"boundary")
    if not boundary:
        raise ServeError(400, "bad_multipart", "multipart/form-data without a boundary")
    parts: list[list] = []  # [name, [chunks]]
    header = {"field": b"", "value": b""}

    def on_part_begin():
        if len(parts) >= max_parts:
            raise ServeError(413, "too_many_images", f"more than {max_parts} images in one request; send fewer")
        parts.append([None, []])

    def on_header_end():
        if header["field"].lower() == b"content-disposition":
            _, opts = parse_options_header(header["value"])
            parts[-1][0] = _clean_name(opts.get(b"filename", opts.get(b"name")))
        header["field"], header["value"] = b"", b""

    callbacks = {
        "on_part_begin": on_part_begin,
        "on_part_data": lambda data, start, end: parts[-1][1].append(data[start:end]),
        "on_header_field": lambda data, start, end: header.__setitem__("field", header["field"] + data[start:end]),
        "on_header_value": lambda data, start, end: header.__setitem__("value", header["value"] + data[start:end]),
        "on_header_end": on_header_end,
    }
    try:
        parser = MultipartParser(boundary, callbacks)
        parser.write(body)
        parser.finalize()
    except ServeError:
        raise
    except Exception as e:  # noqa: BLE001 - any malformed body is the client's error
        raise ServeError(400, "bad_multipart", f"the multipart body cannot be parsed ({type(e).__name__})") from e
    return [(name, b"".join(chunks)) for name, chunks in parts]


async def read_images(request, limits: ServeLimits) -> list[tuple[str | None, bytes]]:
    """(file name, encoded bytes) of the images of a request: a raw body, or multipart parts."""
    body = await read_body(request, limits.max_body_bytes)
    ctype = request.headers.get("content-type", "")
    if ctype.lower().startswith("multipart/form-data"):
        items = parse_multipart(body, ctype, limits.max_images)
    else:
        items = [(_clean_name(request.query_params.get("filename")), body)]
    if not items:
        raise ServeError(400, "no_image", "the request holds no image: send one as the body, or files as multipart")
    return items


def body_share(request, limits: ServeLimits) -> int:
    """Bytes of the body budget a request takes before its body is read: its declared Content-Length
    (over the limit: 413 at once, without waiting), else (chunked) the whole per-request limit."""
    declared = request.headers.get("content-length", "")
    if not declared.isdigit():
        return limits.max_body_bytes
    if int(declared) > limits.max_body_bytes:
        raise ServeError(413, "body_too_large",
                         f"the request body of {declared} bytes exceeds the limit of {limits.max_body_bytes}")
    return int(declared)


def pixel_share(items, max_pixels: int) -> int:
    """Pixels of the pixel budget a request takes: its largest image's, read from the image header
    before anything is decoded (images are decoded one after the other). An image whose header cannot
    be read, or that is over `max_pixels`, is refused by the decoder before it decodes anything."""
    share = 0
    for _, data in items:
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                w, h = Image.open(io.BytesIO(data), formats=ALLOWED_FORMATS).size
        except Exception:  # noqa: BLE001 - decode_all names what is wrong with it
            continue
        if w * h <= max_pixels:
            share = max(share, w * h)
    return share


def decode_all(items, pre, max_pixels: int) -> np.ndarray:
    """The uint8 network input of every image; every bad one is reported (422), with featurize's reasons."""
    out, errors = [], []
    for i, (name, data) in enumerate(items):
        try:
            out.append(decode_bytes(data, pre, name or f"<image #{i}>", max_pixels))
        except ImageError as e:
            errors.append({"index": i, "filename": name, "reason": e.reason, "detail": e.detail})
    if errors:
        raise ServeError(422, errors[0]["reason"], f"{len(errors)} of {len(items)} images cannot be used",
                         errors=errors)
    return np.stack(out)


# ---- what /model shows -----------------------------------------------------------------------------
PACKAGE = "tf-feature-pipeline"


def package_only(recorded):
    """Of a versions record, only this package's version (None stays None): the exact versions of
    Python and every library tell an attacker which known flaws to try, so /model shows them only
    with ``--verbose-model``."""
    if not isinstance(recorded, dict):
        return recorded
    return {k: v for k, v in recorded.items() if k == PACKAGE}


def model_info(predictor, limits: ServeLimits, batch_size: int, verbose: bool = False) -> dict:
    from ..versions import versions

    info = predictor.describe()
    trained_with = info.pop("trained_with")
    serving_with = versions()
    if not verbose:
        trained_with, serving_with = package_only(trained_with), package_only(serving_with)
        if isinstance(info.get("export"), dict):
            info["export"] = {**info["export"], "exported_with": package_only(info["export"].get("exported_with"))}
    return {"classes": predictor.classes, **info,
            "versions": {"trained_with": trained_with, "serving_with": serving_with},
            "limits": {**asdict(limits), "batch_size": batch_size}}


# ---- the app -----------------------------------------------------------------------------------------
class _Server:
    """The state one app holds: the predictor, the limits, the batcher, the admission counters and budgets."""

    def __init__(self, predictor, limits: ServeLimits, verbose_model: bool = False):
        self.predictor, self.limits = predictor, limits
        self.pre = predictor.preprocess
        self.batch_size = limits.batch_size or predictor.batch_size
        predictor.predict_pixels(np.zeros((1, *self.pre.size, 3), np.uint8))  # warm-up
        self.in_flight = 0
        self.decoding = 0
        self.pixels = Budget(limits.max_pixels_in_flight)
        self.body_bytes = Budget(limits.max_body_bytes_in_flight)
        self.batcher = Batcher(predictor, self.batch_size, limits.batch_wait_ms / 1000, lambda: self.decoding)
        self.info = model_info(predictor, limits, self.batch_size, verbose_model)

    def admit(self) -> None:
        if self.in_flight >= self.limits.max_in_flight:
            raise ServeError(503, "overloaded", f"{self.in_flight} requests are in progress; retry shortly",
                             headers={"Retry-After": "1"})
        self.in_flight += 1

    def release(self, _task=None) -> None:
        self.in_flight -= 1

    async def take(self, budget: Budget, units: int, what: str) -> int:
        taken = await budget.acquire(units, self.limits.queue_wait_s)
        if taken is None:
            raise ServeError(503, "overloaded", f"the server holds {budget.used} of its {budget.limit} {what} "
                             f"in flight and {units} more did not come free within {self.limits.queue_wait_s:g} s; "
                             "retry shortly", headers={"Retry-After": "1"})
        return taken

    async def predict(self, request) -> dict:
        names, pixels = await self.read_and_decode(request)
        proba = await asyncio.wrap_future(self.batcher.submit(pixels))
        classes, more = self.predictor.classes, getattr(self.predictor, "answer_fields", lambda p: {})
        return {"predictions": [{"filename": name, "prediction": classes[int(np.argmax(p[:len(classes)]))],
                                 "probabilities": dict(zip(classes, map(float, p))), **more(p)}
                                for name, p in zip(names, proba)]}

    async def read_and_decode(self, request) -> tuple[list, np.ndarray]:
        """(file names, network input) of a request, within the server's body and pixel budgets: the body is
        read once its bytes fit the body budget and held until decoded; decoding starts once the pixels of
        its largest image fit the pixel budget. Both shares are given back when the decode thread has
        finished, even when the request was cancelled (timed out) before: a thread cannot be stopped."""
        from starlette.concurrency import run_in_threadpool

        shares = []  # (budget, units) this coroutine must still give back
        try:
            shares.append((self.body_bytes, await self.take(self.body_bytes, body_share(request, self.limits),
                                                            "request-body bytes")))
            items = await read_images(request, self.limits)
            share = await run_in_threadpool(pixel_share, items, self.limits.max_pixels)
            shares.append((self.pixels, await self.take(self.pixels, share, "decoded pixels")))
            decode = asyncio.ensure_future(run_in_threadpool(decode_all, items, self.pre, self.limits.max_pixels))
            self.decoding += 1
            decode.add_done_callback(lambda task, held=shares: self._decoded(task, held))
            shares = []  # handed to the decode task
            decoded = await asyncio.shield(decode)
        finally:
            self._give_back(shares)
        return [name for name, _ in items], decoded

    def _decoded(self, task, shares) -> None:
        self.decoding -= 1
        self._give_back(shares)
        if not task.cancelled():
            task.exception()  # retrieved: a request that timed out no longer awaits it

    @staticmethod
    def _give_back(shares) -> None:
        for budget, units in shares:
            budget.release(units)


PREDICT_BODY = {"requestBody": {"required": True, "content": {
    "image/jpeg": {"schema": {"type": "string", "format": "binary"}},
    "application/octet-stream": {"schema": {"type": "string", "format": "binary"}},
    "multipart/form-data": {"schema": {"type": "object", "properties": {
        "files": {"type": "array", "items": {"type": "string", "format": "binary"}}}}}}},
    "parameters": [{"name": "filename", "in": "query", "required": False, "schema": {"type": "string"},
                    "description": "the name to echo back for a raw-body image"}]}


def create_app(model, limits: ServeLimits | None = None, verbose_model: bool = False):
    """The FastAPI app serving `model` within `limits`: a :class:`pipeline.heads.classifier.Classifier` or a
    predictor of :mod:`pipeline.serving.predictors` (e.g. ``load_predictor("model.saved_model")``). `verbose_model`:
    /model lists the exact library versions. Connection guards: ``uvicorn.Config(app, **server_options(limits))``."""
    predictor = _predictor(model)
    server = _Server(predictor, limits or ServeLimits(), verbose_model)

    @asynccontextmanager
    async def lifespan(app):
        server.batcher.start()
        yield
        server.batcher.stop()

    backbone = server.info["feature_spec"].get("backbone")
    app = FastAPI(title="tf-feature-pipeline", summary=f"{server.info['head']} head over "
                  f"{backbone}: {', '.join(server.info['classes'])}", lifespan=lifespan)
    app.state.server = server

    @app.exception_handler(ServeError)
    async def refused(request: Request, e: ServeError):
        return JSONResponse(_error_body(e.code, e.message, e.errors), e.status, headers=e.headers)

    @app.exception_handler(Exception)
    async def failed(request: Request, e: Exception):
        request_id = uuid.uuid4().hex[:16]
        log.error("request %s to %s failed", request_id, request.url.path, exc_info=e)  # the context stays here
        return JSONResponse(_error_body("internal_error", "the server failed on this request", None, request_id), 500)

    @app.get("/health")
    async def health():
        return {"status": "ok", "in_flight": server.in_flight}

    @app.get("/model")
    async def model():
        return server.info

    @app.post("/predict", openapi_extra=PREDICT_BODY)
    async def predict(request: Request):
        """Class probabilities of one image (the raw body) or of every file of a multipart body."""
        server.admit()
        task = asyncio.ensure_future(server.predict(request))
        task.add_done_callback(server.release)  # the slot is held until the work really stops
        try:
            return JSONResponse(await asyncio.wait_for(asyncio.shield(task), server.limits.timeout_s))
        except asyncio.TimeoutError:
            task.cancel()  # a decode already running finishes in its thread first; queued images are dropped
            raise ServeError(504, "timeout", f"the request took longer than {server.limits.timeout_s:g} s") from None

    return app


def _error_body(code: str, message: str, errors=None, request_id: str | None = None) -> dict:
    body = {"code": code, "message": message, "request_id": request_id or uuid.uuid4().hex[:16]}
    if errors:
        body["errors"] = errors
    return body


def _predictor(model):
    return HeadPredictor(model) if hasattr(model, "pixel_features") else model


def server_options(limits: ServeLimits) -> dict:
    """uvicorn.Config keywords that hold the connection limits: the guarded h11 protocol (header deadline,
    connection cap), the keep-alive timeout, and uvicorn's own request cap at one more than the connection
    cap (uvicorn refuses a request once as many connections or running requests as its limit exist, this one
    included; so every admitted connection is served, and requests still running after their client left are
    capped too)."""
    from .connections import guarded_protocol

    return {"http": guarded_protocol(limits.header_timeout_s, limits.max_connections),
            "limit_concurrency": limits.max_connections + 1, "timeout_keep_alive": limits.keep_alive_s}


def bind(host: str, port: int) -> socket.socket:
    """A listening socket on host:port, bound before anything is announced; a port in use is the user's to change."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError as e:
        sock.close()
        if e.errno == errno.EADDRINUSE:
            raise PipelineError(f"port {port} is in use: pass --port") from None
        raise PipelineError(f"cannot listen on {host}:{port} ({e.strerror or e}); "
                            "pass another --host or --port") from None
    sock.listen(2048)
    return sock


def serve(model, host: str = "127.0.0.1", port: int = 8000, limits: ServeLimits | None = None,
          verbose_model: bool = False, sock: socket.socket | None = None) -> None:
    """Serve `model` (a Classifier or a predictor) until interrupted (what ``python -m pipeline serve`` runs).
    `sock`: a socket from :func:`bind` (else host:port is bound here, before anything is announced)."""
    import uvicorn

    limits = limits or ServeLimits()
    sock = sock or bind(host, port)  # before the announcement: a busy port fails here, with nothing printed
    port = sock.getsockname()[1]  # the port really bound (--port 0: one the system chose)
    app = create_app(model, limits, verbose_model)
    print(f"serving {model!r} on http://{host}:{port} (API docs at /docs); Ctrl-C stops", flush=True)
    config = uvicorn.Config(app, log_level="warning", server_header=False, **server_options(limits))
    uvicorn.Server(config).run(sockets=[sock])
