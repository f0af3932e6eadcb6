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
import logging
import socket
import uuid
from contextlib import asynccontextmanager
from dataclasses import asdict

import numpy as np
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse

from ..errors import PipelineError
from ..export.info import without_paths  # noqa: F401 - kept importable from here
from .batcher import Batcher
from .budget import Budget
from .limits import ServeError, ServeLimits
from .predictors import HeadPredictor
from .requests import body_share, decode_all, pixel_share, read_images

log = logging.getLogger(__name__)


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
