"""Reading a ``serve`` request: its body within the limits, its images (a raw body or multipart parts), the
budget shares it takes before decoding, and the decoded network input (every bad image reported, 422)."""
from __future__ import annotations

import io
import warnings

import numpy as np
from PIL import Image
from starlette.requests import ClientDisconnect

from ..decode.formats import ALLOWED_FORMATS
from ..decode.inputs import decode_bytes
from ..errors import ImageError
from .limits import ServeError, ServeLimits

MAX_FILENAME = 255  # characters of a client's file name echoed back


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
