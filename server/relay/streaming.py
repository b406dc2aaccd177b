"""Answers a request from a fill in progress: the bytes go out while they arrive upstream.

Headers wait until the upstream announced the length (so Content-Length and Range work as on
a cached file); then the body follows the partial file. The last byte of the file is held
back until the fill passed its hash check; if the fill fails after headers were sent, the
connection is cut so that the vehicle sees a short transfer and resumes later.
"""

from __future__ import annotations

import os

from aiohttp import hdrs, web

from server.relay.fill import Fill
from server.relay.metrics import RelayMetrics

_CHUNK = 1024 * 1024  # bytes read from the partial file per write


class _UnsatisfiableRangeError(Exception):
    """The requested range lies outside the file."""


def _byte_range(request: web.Request, length: int | None) -> tuple[int, int | None] | None:
    """``(first, end)`` of the requested range (end exclusive), or ``None`` for the whole file.

    Raises:
        _UnsatisfiableRangeError: The range starts past the end of the file.
    """
    if hdrs.RANGE not in request.headers or length is None:
        return None
    try:
        asked = request.http_range
    except ValueError:
        return None  # a malformed Range header is ignored, as RFC 9110 allows
    start, stop = asked.start, asked.stop
    if start is None and stop is None:
        return None
    if start is None or start < 0:  # suffix range "-N": the last N bytes
        suffix = -start if start is not None else 0
        return max(length - suffix, 0), length
    if start >= length:
        raise _UnsatisfiableRangeError
    return start, min(stop if stop is not None else length, length)


async def stream_fill(
    request: web.Request,
    fill: Fill,
    *,
    content_type: str,
    cache_control: str,
    metrics: RelayMetrics,
) -> web.StreamResponse:
    """Streams ``fill`` (or the requested range of it) to the requester as it grows.

    Raises:
        Exception: The fill's error, when it failed before headers were sent.
    """
    while not fill.started:
        await fill.changed()
    if fill.error is not None:
        raise fill.error
    length = fill.length
    if length is None and fill.done:
        length = fill.size
    try:
        span = _byte_range(request, length)
    except _UnsatisfiableRangeError:
        return web.Response(
            status=416, headers={hdrs.CONTENT_RANGE: f"bytes */{length}"}, text="bad range\n"
        )
    response = web.StreamResponse(
        status=200 if span is None else 206,
        headers={
            hdrs.CACHE_CONTROL: cache_control,
            hdrs.CONTENT_TYPE: content_type,
            hdrs.ACCEPT_RANGES: "bytes",
        },
    )
    first, end = (0, length) if span is None else span
    if span is not None and end is not None:
        response.headers[hdrs.CONTENT_RANGE] = f"bytes {first}-{end - 1}/{length}"
    if end is not None:
        response.content_length = end - first
    await response.prepare(request)
    if request.method == hdrs.METH_HEAD:
        return response
    await _copy(response, fill, first, end, metrics)
    await response.write_eof()
    return response


async def _copy(
    response: web.StreamResponse, fill: Fill, first: int, end: int | None, metrics: RelayMetrics
) -> None:
    """Writes bytes ``[first, end)`` of the fill as they arrive (to its end when unknown).

    When the range reaches the end of the file, its last byte waits for the fill's hash
    check: a vehicle never receives a complete-looking copy of bytes that do not match.
    """
    holds_last_byte = end is None or end == fill.length
    fd = fill.reader()
    try:
        position = first
        while end is None or position < end:
            ready = fill.size if fill.done or not holds_last_byte else fill.size - 1
            available = ready if end is None else min(ready, end)
            if position < available:
                chunk = os.pread(fd, min(_CHUNK, available - position), position)
                await response.write(chunk)
                metrics.bytes_served.inc(len(chunk))
                position += len(chunk)
            elif fill.error is not None:
                raise ConnectionResetError(f"the fill of {fill.artifact.label} failed")
            elif fill.done:
                break
            else:
                await fill.changed()
    finally:
        os.close(fd)
