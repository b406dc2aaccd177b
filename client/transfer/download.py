"""Image download over HTTP: a bounded stream from the relay (or server) into a sink."""

from __future__ import annotations

import logging
from typing import Protocol
from urllib.parse import quote

import urllib3

from client.errors import DownloadError
from client.images import Image

logger = logging.getLogger(__name__)

CHUNK_SIZE = 64 * 1024  # bytes


class ChunkSink(Protocol):
    """Where downloaded bytes go (the slot writer)."""

    def write(self, chunk: bytes) -> None:
        """Take one chunk."""
        ...


class ImageDownloader:
    """Fetches content-addressed image blobs from ``REPO/image/targets/SHA256.TARGET``."""

    def __init__(self, repo_url: str, *, timeout_seconds: float) -> None:
        """Create a downloader with its own connection pool.

        Args:
            repo_url: The relay's (or server's) HTTP base URL.
            timeout_seconds: Connect timeout and the longest silence between bytes.
        """
        self._repo_url = repo_url.rstrip("/")
        self._pool = urllib3.PoolManager(
            timeout=urllib3.Timeout(connect=timeout_seconds, read=timeout_seconds),
            retries=urllib3.Retry(total=2, redirect=0, backoff_factor=0.5),
        )

    def close(self) -> None:
        """Close the pooled connections."""
        self._pool.clear()

    def url_for(self, image: Image) -> str:
        """Return the blob URL of ``image``."""
        return f"{self._repo_url}/image/targets/{image.sha256}.{quote(image.target, safe='')}"

    def download(self, image: Image, sink: ChunkSink) -> None:
        """Stream ``image`` into ``sink``, reading at most one byte past its signed length.

        The extra byte lets the sink detect a server that sends more than was signed.

        Args:
            image: The verified image.
            sink: Receives the chunks in order.

        Raises:
            DownloadError: The server answered with an error, timed out or the connection
                failed.
        """
        url = self.url_for(image)
        try:
            response = self._pool.request("GET", url, preload_content=False)
        except urllib3.exceptions.HTTPError as exc:
            raise DownloadError(f"cannot fetch {url}: {exc}") from exc
        try:
            if response.status != 200:
                raise DownloadError(
                    f"cannot fetch {url}: HTTP {response.status}; check that the relay or "
                    "server holds the image"
                )
            budget = image.length + 1
            while budget > 0:
                chunk = response.read(min(CHUNK_SIZE, budget))
                if not chunk:
                    break
                budget -= len(chunk)
                sink.write(chunk)
        except urllib3.exceptions.HTTPError as exc:
            raise DownloadError(f"the download of {url} failed: {exc}") from exc
        finally:
            # Closing drops a connection that may still carry unread (endless) data.
            response.close()
            response.release_conn()
        logger.debug("fetched %s", url)
