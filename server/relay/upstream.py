"""HTTP access to the upstream (central server or regional relay) over one shared session."""

from __future__ import annotations

import aiohttp

from server.relay.cache import Writer
from server.relay.config import RelayConfig
from server.relay.errors import UpstreamNotFoundError, UpstreamUnavailableError
from server.relay.metrics import RelayMetrics

_CHUNK = 256 * 1024  # bytes read from the upstream at a time


class Upstream:
    """Fetches files from the upstream's HTTP paths (the same paths the relay serves).

    Bytes pass through unchanged: no decompression, no redirects followed.
    """

    def __init__(
        self, *, base_url: str, session: aiohttp.ClientSession, metrics: RelayMetrics
    ) -> None:
        """Wraps an open session; prefer ``Upstream.open``."""
        self._base_url = base_url
        self._session = session
        self._metrics = metrics

    @classmethod
    def open(cls, config: RelayConfig, metrics: RelayMetrics) -> Upstream:
        """Opens the shared session with the configured connect and read timeouts."""
        session = aiohttp.ClientSession(
            timeout=aiohttp.ClientTimeout(
                total=None, sock_connect=config.connect_timeout, sock_read=config.read_timeout
            ),
            auto_decompress=False,
            headers={"Accept-Encoding": "identity"},
        )
        return cls(base_url=config.upstream_base, session=session, metrics=metrics)

    async def close(self) -> None:
        """Closes the session and its connections."""
        await self._session.close()

    async def download(
        self,
        url_path: str,
        write: Writer,
        *,
        max_bytes: int,
        limits: aiohttp.ClientTimeout | None = None,
    ) -> int:
        """Streams the upstream file at ``url_path`` into ``write``.

        Args:
            url_path: The path on the upstream, starting with ``/``.
            write: Receives the body chunk by chunk.
            max_bytes: The largest body accepted (guards against endless data).
            limits: Overrides the session's timeouts for this request.

        Returns:
            The number of bytes written.

        Raises:
            UpstreamNotFoundError: The upstream answered 404.
            UpstreamUnavailableError: The upstream is unreachable, too slow, answered another
                error or sent more than ``max_bytes``.
        """
        try:
            return await self._download(url_path, write, max_bytes=max_bytes, limits=limits)
        except UpstreamUnavailableError:
            self._metrics.upstream_errors.inc()
            raise

    async def fetch(
        self, url_path: str, *, max_bytes: int, limits: aiohttp.ClientTimeout | None = None
    ) -> bytes:
        """The whole upstream file at ``url_path``; raises as ``download`` does."""
        body = bytearray()
        await self.download(url_path, body.extend, max_bytes=max_bytes, limits=limits)
        return bytes(body)

    async def _download(
        self,
        url_path: str,
        write: Writer,
        *,
        max_bytes: int,
        limits: aiohttp.ClientTimeout | None,
    ) -> int:
        url = self._base_url + url_path
        try:
            # Without limits, the session's connect and read timeouts apply.
            request = (
                self._session.get(url, allow_redirects=False)
                if limits is None
                else self._session.get(url, allow_redirects=False, timeout=limits)
            )
            async with request as response:
                if response.status == 404:
                    raise UpstreamNotFoundError(f"the upstream has no {url_path}")
                if response.status != 200:
                    raise UpstreamUnavailableError(
                        f"the upstream answered HTTP {response.status} for {url}"
                    )
                declared = response.content_length
                if declared is not None and declared > max_bytes:
                    raise UpstreamUnavailableError(
                        f"the upstream announced {declared} bytes for {url}, "
                        f"more than the limit of {max_bytes}"
                    )
                size = 0
                async for chunk in response.content.iter_chunked(_CHUNK):
                    size += len(chunk)
                    if size > max_bytes:
                        raise UpstreamUnavailableError(
                            f"the upstream sent more than the limit of {max_bytes} bytes for {url}"
                        )
                    self._metrics.bytes_fetched.inc(len(chunk))
                    write(chunk)
                return size
        except (aiohttp.ClientError, TimeoutError) as exc:
            reason = str(exc) or type(exc).__name__
            raise UpstreamUnavailableError(
                f"cannot fetch {url} from the upstream: {reason}"
            ) from exc
