"""The relay's HTTP routes: the server's metadata and blob paths, ``/metrics`` and ``/healthz``."""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from pathlib import Path

from aiohttp import hdrs, web
from aiohttp.abc import AbstractStreamWriter

from server.relay import artifacts
from server.relay.access import SitePolicy, identity_of_der
from server.relay.artifacts import Repository
from server.relay.errors import (
    AccessDeniedError,
    CacheError,
    InvalidPathError,
    RelayError,
    UpstreamNotFoundError,
    UpstreamUnavailableError,
)
from server.relay.metrics import RelayMetrics
from server.relay.mirror import SiteMirror
from server.relay.streaming import stream_fill

logger = logging.getLogger(__name__)

IMMUTABLE = "public, max-age=31536000, immutable"
NO_CACHE = "no-cache"
_JSON = "application/json"
_OCTETS = "application/octet-stream"

MIRROR_KEY = web.AppKey("relay_mirror", SiteMirror)
METRICS_KEY = web.AppKey("relay_metrics", RelayMetrics)

_Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
_OPEN_PATHS = frozenset({"/metrics", "/healthz"})

# One place for the mapping of relay errors to HTTP status codes.
_STATUS_OF: tuple[tuple[type[RelayError], int], ...] = (
    (InvalidPathError, 400),
    (UpstreamNotFoundError, 404),
    (UpstreamUnavailableError, 502),
    (CacheError, 503),
)


@web.middleware
async def _relay_errors(request: web.Request, handler: _Handler) -> web.StreamResponse:
    """Turns relay errors into plain-text answers with the matching status code."""
    try:
        return await handler(request)
    except RelayError as exc:
        for error_type, status in _STATUS_OF:
            if isinstance(exc, error_type):
                if status >= 500:
                    logger.warning("%s %s: %s", request.method, request.path, exc)
                return web.Response(status=status, text=f"{exc}\n")
        raise


def create_app(*, mirror: SiteMirror, metrics: RelayMetrics, policy: SitePolicy) -> web.Application:
    """The relay's aiohttp application (HEAD is served wherever GET is).

    Args:
        mirror: Answers for blobs and metadata.
        metrics: Counted here (bytes served) and rendered at ``/metrics``.
        policy: Who may fetch metadata and blobs (``/metrics`` and ``/healthz`` are open to
            any peer that passed the TLS handshake).
    """

    @web.middleware
    async def site_only(request: web.Request, handler: _Handler) -> web.StreamResponse:
        if policy.enforced and request.path not in _OPEN_PATHS:
            ssl_object = (
                request.transport.get_extra_info("ssl_object") if request.transport else None
            )
            der = ssl_object.getpeercert(binary_form=True) if ssl_object is not None else None
            try:
                policy.admit(identity_of_der(der))
            except AccessDeniedError as exc:
                metrics.refused.labels(reason=exc.reason).inc()
                logger.warning("refused %s %s: %s", request.method, request.path, exc)
                return web.Response(status=403, text=f"{exc}\n")
        return await handler(request)

    app = web.Application(middlewares=[site_only, _relay_errors])
    app[MIRROR_KEY] = mirror
    app[METRICS_KEY] = metrics
    app.router.add_get("/image/metadata/{filename}", _image_metadata)
    app.router.add_get("/image/targets/{filename}", _image_blob)
    app.router.add_get("/director/metadata/{filename}", _director_metadata)
    app.router.add_get("/metrics", _metrics)
    app.router.add_get("/healthz", _healthz)
    return app


async def _image_blob(request: web.Request) -> web.StreamResponse:
    artifact = artifacts.blob(request.match_info["filename"])
    opened = await request.app[MIRROR_KEY].open(artifact)
    if isinstance(opened, Path):
        return await _send_file(request, opened, _OCTETS)
    return await stream_fill(
        request,
        opened,
        content_type=_OCTETS,
        cache_control=IMMUTABLE,
        metrics=request.app[METRICS_KEY],
    )


async def _image_metadata(request: web.Request) -> web.StreamResponse:
    return await _metadata(request, Repository.IMAGE)


async def _director_metadata(request: web.Request) -> web.StreamResponse:
    return await _metadata(request, Repository.DIRECTOR)


async def _metadata(request: web.Request, repository: Repository) -> web.StreamResponse:
    artifact = artifacts.metadata(repository, request.match_info["filename"])
    mirror = request.app[MIRROR_KEY]
    if artifact.immutable:
        return await _send_file(request, await mirror.immutable(artifact), _JSON)
    body = await mirror.timestamp(artifact)
    if request.method != hdrs.METH_HEAD:
        request.app[METRICS_KEY].bytes_served.inc(len(body))
    return web.Response(body=body, content_type=_JSON, headers={hdrs.CACHE_CONTROL: NO_CACHE})


class _MeteredFileResponse(web.FileResponse):
    """A FileResponse that counts the bytes it sends once aiohttp has prepared it.

    aiohttp prepares a returned response itself; preparing a FileResponse twice fails.
    """

    async def prepare(self, request: web.BaseRequest) -> AbstractStreamWriter | None:
        writer = await super().prepare(request)
        sent_body = request.method != hdrs.METH_HEAD and self.status in (200, 206)
        if sent_body and isinstance(request, web.Request):
            request.app[METRICS_KEY].bytes_served.inc(self.content_length or 0)
        return writer


async def _send_file(request: web.Request, path: Path, content_type: str) -> web.StreamResponse:
    """Sends a cached immutable file (Range and conditional requests included)."""
    return _MeteredFileResponse(
        path, headers={hdrs.CACHE_CONTROL: IMMUTABLE, hdrs.CONTENT_TYPE: content_type}
    )


async def _metrics(request: web.Request) -> web.Response:
    body, content_type = request.app[METRICS_KEY].render()
    response = web.Response(body=body)
    response.headers[hdrs.CONTENT_TYPE] = content_type
    return response


async def _healthz(_request: web.Request) -> web.Response:
    return web.Response(text="ok\n")
