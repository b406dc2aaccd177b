"""ngclient's fetchers: metadata over HTTP(S), and the Director's from the check-in answer."""

from __future__ import annotations

import re
import ssl
from collections.abc import Iterator
from dataclasses import dataclass

import urllib3
from tuf.api.exceptions import DownloadHTTPError, SlowRetrievalError
from tuf.ngclient.fetcher import FetcherInterface

_VERSIONED = re.compile(r"(\d+)\.(root|snapshot|targets)\.json")


class HttpFetcher(FetcherInterface):
    """Metadata over HTTP or HTTPS; with mTLS, the fleet CA and certificate of ``client.tls``.

    A timeout (connect, or silence between bytes) raises ngclient's ``SlowRetrievalError``,
    an HTTP error status its ``DownloadHTTPError``; other network failures (refused
    connections, TLS handshakes) leave as urllib3 errors.
    """

    CHUNK_SIZE = 64 * 1024  # bytes

    def __init__(
        self,
        *,
        timeout_seconds: float,
        user_agent: str,
        ssl_context: ssl.SSLContext | None = None,
    ) -> None:
        """Create a fetcher with its own connection pool.

        Args:
            timeout_seconds: Connect timeout and the longest silence between bytes.
            user_agent: The ``User-Agent`` header.
            ssl_context: For https: the CA to trust and the certificate to present.
        """
        self._pool = urllib3.PoolManager(
            timeout=urllib3.Timeout(connect=timeout_seconds, read=timeout_seconds),
            retries=False,
            headers={"User-Agent": user_agent},
            ssl_context=ssl_context,
        )

    def _fetch(self, url: str) -> Iterator[bytes]:
        try:
            response = self._pool.request("GET", url, preload_content=False)
        except urllib3.exceptions.TimeoutError as exc:
            raise SlowRetrievalError(f"{url}: {exc}") from exc
        if response.status >= 400:
            response.release_conn()
            raise DownloadHTTPError(f"{url}: HTTP {response.status}", response.status)
        return self._chunks(url, response)

    def _chunks(self, url: str, response: urllib3.BaseHTTPResponse) -> Iterator[bytes]:
        try:
            yield from response.stream(self.CHUNK_SIZE)
        except urllib3.exceptions.TimeoutError as exc:
            raise SlowRetrievalError(f"{url}: {exc}") from exc
        finally:
            response.release_conn()


@dataclass(frozen=True)
class DirectorMetadata:
    """The vehicle's Director metadata as the ``CheckIn`` answer carries it (TUF JSON).

    Attributes:
        timestamp: The signed timestamp.
        snapshot: The signed snapshot.
        targets: The signed per-vehicle targets.
    """

    timestamp: bytes
    snapshot: bytes
    targets: bytes


class DirectorFetcher(FetcherInterface):
    """Answers ngclient's Director requests.

    ``timestamp.json``, ``N.snapshot.json`` and ``N.targets.json`` come from the check-in
    answer (ngclient checks their versions and signatures); ``N.root.json`` comes over
    HTTP, where a 404 tells ngclient that it holds the newest root.
    """

    def __init__(self, metadata: DirectorMetadata, root_fetcher: FetcherInterface) -> None:
        """Serve ``metadata``, fetching roots with ``root_fetcher``."""
        self._metadata = metadata
        self._root_fetcher = root_fetcher

    def _fetch(self, url: str) -> Iterator[bytes]:
        name = url.rsplit("/", 1)[-1]
        if name == "timestamp.json":
            return iter([self._metadata.timestamp])
        match = _VERSIONED.fullmatch(name)
        if match is None:
            raise DownloadHTTPError(f"{name} is not part of the Director metadata", 404)
        role = match.group(2)
        if role == "root":
            return self._root_fetcher.fetch(url)
        if role == "snapshot":
            return iter([self._metadata.snapshot])
        return iter([self._metadata.targets])
