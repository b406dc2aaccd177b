"""HTTP access to the upstream (central server or regional relay) over one shared session."""

from __future__ import annotations

import re
import ssl
from typing import Protocol

import aiohttp

from server.relay.config import RelayConfig
from server.relay.errors import (
    UpstreamInterruptedError,
    UpstreamNotFoundError,
    UpstreamUnavailableError,
)
from server.relay.metrics import RelayMetrics

_CHUNK = 256 * 1024  # bytes read from the upstream at a time
_CONTENT_RANGE = re.compile(r"bytes (?:(?P<start>[0-9]+)-[0-9]+|\*)/(?P<total>[0-9]+)")


class Sink(Protocol):
    """Receives a download: its announced length, its bytes, and a restart from zero."""

    def announce(self, length: int) -> None:
        """The total length of the file, once the upstream told it."""

    def write(self, chunk: bytes) -> None:
        """The next bytes of the file."""

    def restart(self) -> None:
        """The upstream ignored the Range asked for: drop what was written."""


class _Buffer:
    """A sink that keeps the whole file in memory (small metadata files only)."""

    def __init__(self) -> None:
        self.body = bytearray()

    def announce(self, length: int) -> None:
        pass

    def write(self, chunk: bytes) -> None:
        self.body.extend(chunk)

    def restart(self) -> None:
        self.body.clear()


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
    def open(
        cls, config: RelayConfig, metrics: RelayMetrics, tls: ssl.SSLContext | None = None
    ) -> Upstream:
        """Opens the shared session with the configured timeouts (and client certificate)."""
        session = aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(ssl=tls if tls is not None else True),
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
        sink: Sink,
        *,
        max_bytes: int,
        offset: int = 0,
        limits: aiohttp.ClientTimeout | None = None,
    ) -> int:
        """Streams the upstream file at ``url_path`` into ``sink``, from ``offset`` on.

        With ``offset`` > 0 the rest is asked for with an HTTP Range; an upstream that answers
        200 instead sends the whole file, and ``sink.restart()`` is called first.

        Args:
            url_path: The path on the upstream, starting with ``/``.
            sink: Receives the length and the body chunk by chunk.
            max_bytes: The largest file accepted (guards against endless data).
            offset: How many bytes of the file the sink already holds.
            limits: Overrides the session's timeouts for this request.

        Returns:
            The number of bytes written in this call.

        Raises:
            UpstreamNotFoundError: The upstream answered 404.
            UpstreamUnavailableError: The upstream is unreachable, too slow, answered another
                error or sent more than ``max_bytes``.
        """
        try:
            return await self._download(
                url_path, sink, max_bytes=max_bytes, offset=offset, limits=limits
            )
        except UpstreamUnavailableError:
            self._metrics.upstream_errors.inc()
            raise

    async def fetch(
        self, url_path: str, *, max_bytes: int, limits: aiohttp.ClientTimeout | None = None
    ) -> bytes:
        """The whole upstream file at ``url_path``; raises as ``download`` does."""
        buffer = _Buffer()
        await self.download(url_path, buffer, max_bytes=max_bytes, limits=limits)
        return bytes(buffer.body)

    async def _download(
        self,
        url_path: str,
        sink: Sink,
        *,
        max_bytes: int,
        offset: int,
        limits: aiohttp.ClientTimeout | None,
    ) -> int:
        url = self._base_url + url_path
        headers = {"Range": f"bytes={offset}-"} if offset else None
        try:
            # Without limits, the session's connect and read timeouts apply.
            request = (
                self._session.get(url, allow_redirects=False, headers=headers)
                if limits is None
                else self._session.get(url, allow_redirects=False, headers=headers, timeout=limits)
            )
            async with request as response:
                start = self._start(
                    url, url_path, response, sink=sink, offset=offset, max_bytes=max_bytes
                )
                if start is None:
                    return 0
                size = start
                async for chunk in response.content.iter_chunked(_CHUNK):
                    size += len(chunk)
                    if size > max_bytes:
                        raise UpstreamUnavailableError(
                            f"the upstream sent more than the limit of {max_bytes} bytes for {url}"
                        )
                    self._metrics.bytes_fetched.inc(len(chunk))
                    sink.write(chunk)
                return size - start
        except (aiohttp.ClientError, TimeoutError) as exc:
            reason = str(exc) or type(exc).__name__
            raise UpstreamInterruptedError(
                f"cannot fetch {url} from the upstream: {reason}"
            ) from exc

    @staticmethod
    def _start(
        url: str,
        url_path: str,
        response: aiohttp.ClientResponse,
        *,
        sink: Sink,
        offset: int,
        max_bytes: int,
    ) -> int | None:
        """Checks the answer's status and length; the offset its body starts at, or None."""
        if response.status == 404:
            raise UpstreamNotFoundError(f"the upstream has no {url_path}")
        if response.status == 416 and offset:
            match = _CONTENT_RANGE.fullmatch(response.headers.get("Content-Range", ""))
            if match is not None and int(match["total"]) == offset:
                sink.announce(offset)
                return None  # the sink holds the whole file already
        if response.status == 206 and offset:
            match = _CONTENT_RANGE.fullmatch(response.headers.get("Content-Range", ""))
            if match is None or match["start"] is None or int(match["start"]) != offset:
                raise UpstreamUnavailableError(
                    f"the upstream answered {url} with a range other than the {offset}- asked for"
                )
            total = int(match["total"])
        elif response.status == 200:
            if offset:
                sink.restart()
                offset = 0
            total = response.content_length if response.content_length is not None else -1
        elif response.status == 503:
            raise UpstreamInterruptedError(f"the upstream answered HTTP 503 for {url}")
        else:
            raise UpstreamUnavailableError(
                f"the upstream answered HTTP {response.status} for {url}"
            )
        if total > max_bytes:
            raise UpstreamUnavailableError(
                f"the upstream announced {total} bytes for {url}, "
                f"more than the limit of {max_bytes}"
            )
        if total >= 0:
            sink.announce(total)
        return offset
