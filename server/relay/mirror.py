"""The site mirror: answers for blobs and metadata from the cache, else from the upstream.

The relay is untrusted for integrity: vehicles verify everything it serves. The mirror still
checks a blob's SHA-256 as it arrives (and the cache checks it again before serving a copy
from disk), so that a damaged transfer is never kept under a content-addressed name. An
upstream transfer cut by a network failure is resumed with an HTTP Range from the bytes
already on disk, with backoff, for up to ``resume_window`` seconds.
"""

from __future__ import annotations

import asyncio
import logging
import time
from pathlib import Path

import aiohttp

from server.relay.artifacts import Artifact, ArtifactKind
from server.relay.cache import ContentCache
from server.relay.config import RelayConfig
from server.relay.errors import (
    CacheError,
    UpstreamInterruptedError,
    UpstreamNotFoundError,
    UpstreamUnavailableError,
)
from server.relay.fill import Fill
from server.relay.metrics import RelayMetrics
from server.relay.upstream import Upstream

logger = logging.getLogger(__name__)

_FIRST_RETRY = 0.2  # seconds before the first resume attempt; doubles up to _LAST_RETRY
_LAST_RETRY = 2.0  # seconds


class SiteMirror:
    """Serves one site's vehicles from the cache, filling it from the upstream on a miss."""

    def __init__(
        self,
        *,
        config: RelayConfig,
        cache: ContentCache,
        upstream: Upstream,
        metrics: RelayMetrics,
    ) -> None:
        """Combines an open cache and upstream; both stay owned by the caller."""
        self._config = config
        self._cache = cache
        self._upstream = upstream
        self._metrics = metrics

    @property
    def cache(self) -> ContentCache:
        """The cache this mirror fills."""
        return self._cache

    async def open(self, artifact: Artifact) -> Path | Fill:
        """The cached file of an immutable artifact, or the fill that is bringing it.

        Raises:
            CacheError: Not cached and the cache cannot be written.
        """
        path = await self._cache.lookup(artifact)
        if path is not None:
            self._metrics.cache_hits.inc()
            return path
        self._metrics.cache_misses.inc()
        return self._cache.fill(artifact, self._run)

    async def immutable(self, artifact: Artifact) -> Path:
        """The cached file of a blob or versioned metadata file, fetched once on a miss.

        Raises:
            UpstreamNotFoundError: Not cached and the upstream has no such file.
            UpstreamUnavailableError: Not cached and the upstream cannot deliver it.
            CacheError: The cache cannot be written.
        """
        opened = await self.open(artifact)
        if isinstance(opened, Path):
            return opened
        return await wait_until_done(opened)

    async def timestamp(self, artifact: Artifact) -> bytes:
        """The upstream's current ``timestamp.json``, or the last copy when it is unreachable.

        Serving a stale copy is safe: the timestamp's expiry protects the vehicle.

        Raises:
            UpstreamNotFoundError: The upstream has no such file (the cache is not used).
            UpstreamUnavailableError: The upstream cannot deliver it and nothing is cached.
        """
        started = time.monotonic()
        try:
            data = await self._upstream.fetch(
                artifact.url_path,
                max_bytes=self._config.timestamp_max_bytes,
                limits=aiohttp.ClientTimeout(total=self._config.timestamp_timeout),
            )
        except UpstreamUnavailableError as exc:
            cached = await self._cache.read(artifact)
            if cached is None:
                raise
            self._metrics.cache_hits.inc()
            logger.warning("serving cached %s: %s", artifact.label, exc)
            return cached
        self._metrics.cache_misses.inc()
        self._log_fetched(artifact, len(data), started)
        try:
            await self._cache.store(artifact, data)
        except CacheError as exc:
            logger.warning("serving %s without caching it: %s", artifact.label, exc)
        return data

    async def _run(self, fill: Fill) -> None:
        """Brings the artifact into ``fill``, resuming after interruptions, then checks it."""
        artifact = fill.artifact
        started = time.monotonic()
        deadline = started + self._config.resume_window
        delay = _FIRST_RETRY
        if artifact.kind is ArtifactKind.BLOB:
            max_bytes = self._config.blob_max_bytes
        else:
            max_bytes = self._config.metadata_max_bytes
        while True:
            try:
                await self._upstream.download(
                    artifact.url_path, fill, max_bytes=max_bytes, offset=fill.size
                )
                break
            except UpstreamInterruptedError as exc:
                if fill.size == 0 and artifact.is_root:
                    # A root version the site never saw, upstream unreachable: answer as the
                    # end of the root chain, so vehicles keep their trusted root through an
                    # outage (a relay may always withhold metadata; expiry bounds it).
                    raise UpstreamNotFoundError(
                        f"{artifact.label} is not cached and the upstream is unreachable "
                        f"({exc}); no newer root is known at this site"
                    ) from exc
                if time.monotonic() + delay > deadline:
                    raise
                self._metrics.upstream_resumes.inc()
                logger.warning(
                    "fetch of %s interrupted at byte %d (%s); resuming in %.1f s",
                    artifact.label,
                    fill.size,
                    exc,
                    delay,
                )
                await asyncio.sleep(delay)
                delay = min(delay * 2, _LAST_RETRY)
        if artifact.sha256 is not None and fill.hexdigest() != artifact.sha256:
            self._metrics.upstream_errors.inc()
            digest = fill.hexdigest()
            fill.restart()
            raise UpstreamUnavailableError(
                f"the upstream sent {fill.length} bytes for {artifact.label} whose SHA-256 is "
                f"{digest}; not caching them"
            )
        if fill.resumed_from:
            logger.info("resumed %s from byte %d of a past run", artifact.label, fill.resumed_from)
        self._log_fetched(artifact, fill.size, started)

    @staticmethod
    def _log_fetched(artifact: Artifact, size: int, started: float) -> None:
        logger.info(
            "fetched %s from upstream: %d bytes in %.3f s",
            artifact.label,
            size,
            time.monotonic() - started,
        )


async def wait_until_done(fill: Fill) -> Path:
    """Waits for a fill to end; its final path, or its error raised."""
    while True:
        if fill.error is not None:
            raise fill.error
        if fill.final_path is not None:
            return fill.final_path
        await fill.changed()
