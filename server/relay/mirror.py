"""The site mirror: answers for blobs and metadata from the cache, else from the upstream.

The relay is untrusted for integrity: vehicles verify everything it serves. The mirror checks
a blob's SHA-256 once, as it arrives from the upstream, so that a damaged transfer is not
kept forever under a content-addressed name; it does not re-check cached files when serving.
"""

from __future__ import annotations

import hashlib
import logging
import time
from pathlib import Path

import aiohttp

from server.relay.artifacts import Artifact, ArtifactKind
from server.relay.cache import ContentCache, Writer
from server.relay.config import RelayConfig
from server.relay.errors import CacheError, UpstreamUnavailableError
from server.relay.metrics import RelayMetrics
from server.relay.upstream import Upstream

logger = logging.getLogger(__name__)


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

    async def immutable(self, artifact: Artifact) -> Path:
        """The cached file of a blob or versioned metadata file, fetched once on a miss.

        Raises:
            UpstreamNotFoundError: Not cached and the upstream has no such file.
            UpstreamUnavailableError: Not cached and the upstream cannot deliver it.
            CacheError: The cache cannot be written.
        """
        path = self._cache.lookup(artifact)
        if path is not None:
            self._metrics.cache_hits.inc()
            return path
        self._metrics.cache_misses.inc()

        async def fill(write: Writer) -> None:
            await self._fetch_into(artifact, write)

        return await self._cache.fill_once(artifact, fill)

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

    async def _fetch_into(self, artifact: Artifact, write: Writer) -> None:
        started = time.monotonic()
        digest = hashlib.sha256()

        def hash_and_write(chunk: bytes) -> None:
            digest.update(chunk)
            write(chunk)

        if artifact.kind is ArtifactKind.BLOB:
            max_bytes = self._config.blob_max_bytes
        else:
            max_bytes = self._config.metadata_max_bytes
        size = await self._upstream.download(artifact.url_path, hash_and_write, max_bytes=max_bytes)
        if artifact.sha256 is not None and digest.hexdigest() != artifact.sha256:
            self._metrics.upstream_errors.inc()
            raise UpstreamUnavailableError(
                f"the upstream sent {size} bytes for {artifact.label} whose SHA-256 is "
                f"{digest.hexdigest()}; not caching them"
            )
        self._log_fetched(artifact, size, started)

    @staticmethod
    def _log_fetched(artifact: Artifact, size: int, started: float) -> None:
        logger.info(
            "fetched %s from upstream: %d bytes in %.3f s",
            artifact.label,
            size,
            time.monotonic() - started,
        )
