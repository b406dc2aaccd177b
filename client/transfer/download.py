"""Image download over HTTP with resume: Range requests after a cut, relay then central.

Each attempt asks the first base URL that has not just failed for the bytes from the
sink's offset on (``Range: bytes=N-``), so a cut uplink or a restarted relay costs only
the bytes in flight. Guards: at most one byte past the signed length is read (endless
data), a connection slower than the configured rate is dropped (slow retrieval), and the
retries of one download are bounded in number and time.
"""

from __future__ import annotations

import logging
import re
import ssl
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Protocol
from urllib.parse import quote

import urllib3

from client.errors import DownloadError, TransferInterruptedError
from client.images import Image

logger = logging.getLogger(__name__)

CHUNK_SIZE = 64 * 1024  # bytes
_CONTENT_RANGE = re.compile(r"bytes (\d+)-(\d+)/(\d+|\*)")


class ResumableSink(Protocol):
    """Where downloaded bytes go (the slot writer)."""

    @property
    def received(self) -> int:
        """Bytes taken so far: the offset the next request starts from."""
        ...

    def write(self, chunk: bytes) -> None:
        """Take one chunk."""
        ...

    def restart(self) -> None:
        """Drop every byte taken and start again at 0."""
        ...


@dataclass(frozen=True)
class RetryPolicy:
    """How hard one download tries before the cycle gives up (it resumes next cycle).

    Attributes:
        attempts: Requests at most, over all base URLs.
        first_pause_seconds: Pause after the first failure; doubled after each one.
        max_pause_seconds: The longest pause between two attempts.
        min_rate_bytes_per_second: Slower connections are dropped (slow retrieval) once
            ``rate_grace_seconds`` have passed.
        rate_grace_seconds: How long a connection may start slowly.
    """

    attempts: int = 12
    first_pause_seconds: float = 0.25
    max_pause_seconds: float = 5.0
    min_rate_bytes_per_second: int = 1024
    rate_grace_seconds: float = 30.0


class ImageDownloader:
    """Fetches content-addressed blobs from ``BASE/image/targets/SHA256.TARGET``."""

    def __init__(
        self,
        repo_urls: Sequence[str],
        *,
        timeout_seconds: float,
        retry: RetryPolicy | None = None,
        sleep: Callable[[float], None] = time.sleep,
        ssl_context: ssl.SSLContext | None = None,
    ) -> None:
        """Create a downloader with its own connection pool.

        Args:
            repo_urls: Base URLs in order of preference: the site relay, then central.
            timeout_seconds: Connect timeout and the longest silence between bytes.
            retry: Retry and slow-retrieval limits.
            sleep: Waits between attempts.
            ssl_context: For https URLs: the CA to trust and the certificate to present
                (see ``client.tls``); None uses urllib3's defaults.
        """
        if not repo_urls:
            raise ValueError("at least one repository URL is needed")
        self._repo_urls = [url.rstrip("/") for url in repo_urls]
        self._retry = retry or RetryPolicy()
        self._sleep = sleep
        self._pool = urllib3.PoolManager(
            timeout=urllib3.Timeout(connect=timeout_seconds, read=timeout_seconds),
            retries=False,
            ssl_context=ssl_context,
        )
        self.bytes_fetched = 0
        self.requests = 0

    def close(self) -> None:
        """Close the pooled connections."""
        self._pool.clear()

    def url_for(self, image: Image, base: str | None = None) -> str:
        """Return the blob URL of ``image`` under ``base`` (default: the preferred URL)."""
        root = base or self._repo_urls[0]
        return f"{root}/image/targets/{image.sha256}.{quote(image.target, safe='')}"

    def download(self, image: Image, sink: ResumableSink) -> None:
        """Stream ``image`` into ``sink`` from its offset on, resuming after failures.

        Args:
            image: The verified image.
            sink: Receives the chunks in order; its ``received`` is where to resume.

        Raises:
            TransferInterruptedError: Every attempt failed on the network; the bytes taken stay
                in the sink, and a later download resumes from there.
            DownloadError: A server sent more than the signed length, or no server has
                the image.
        """
        pause = self._retry.first_pause_seconds
        errors: list[str] = []
        for attempt in range(self._retry.attempts):
            base = self._repo_urls[attempt % len(self._repo_urls)]
            try:
                self._fetch_once(self.url_for(image, base), image, sink)
            except TransferInterruptedError as exc:
                errors.append(str(exc))
                logger.info("download attempt %d failed: %s", attempt + 1, exc)
            else:
                if sink.received >= image.length:
                    return
                errors.append(f"{base} stopped after byte {sink.received}")
            # Switching to the next URL (central) needs no pause; a retry of the same does.
            if len(self._repo_urls) == 1 or (attempt + 1) % len(self._repo_urls) == 0:
                self._sleep(pause)
                pause = min(pause * 2, self._retry.max_pause_seconds)
        raise TransferInterruptedError(
            f"{image.target}: {sink.received} of {image.length} bytes after "
            f"{self._retry.attempts} attempts ({errors[-1]}); the download resumes at the "
            "next check-in"
        )

    def _fetch_once(self, url: str, image: Image, sink: ResumableSink) -> None:
        offset = sink.received
        headers = {"Range": f"bytes={offset}-"} if offset else {}
        self.requests += 1
        try:
            response = self._pool.request("GET", url, headers=headers, preload_content=False)
        except urllib3.exceptions.HTTPError as exc:
            raise TransferInterruptedError(f"cannot fetch {url}: {exc}") from exc
        try:
            self._check_status(url, response, offset, sink)
            self._stream(url, response, image, sink)
        except urllib3.exceptions.HTTPError as exc:
            raise TransferInterruptedError(f"the download of {url} broke off: {exc}") from exc
        finally:
            # Closing drops a connection that may still carry unread (endless) data.
            response.close()
            response.release_conn()

    def _check_status(
        self, url: str, response: urllib3.BaseHTTPResponse, offset: int, sink: ResumableSink
    ) -> None:
        if response.status == 206:
            match = _CONTENT_RANGE.fullmatch(response.headers.get("Content-Range", ""))
            if match is None or int(match.group(1)) != offset:
                raise TransferInterruptedError(f"{url} answered a range other than bytes={offset}-")
            return
        if response.status == 200:
            if offset:
                logger.info("%s ignored the Range request; starting over", url)
                sink.restart()
            return
        if response.status in (404, 410):
            raise TransferInterruptedError(
                f"{url}: HTTP {response.status} (the image is not there)"
            )
        raise TransferInterruptedError(f"cannot fetch {url}: HTTP {response.status}")

    def _stream(
        self, url: str, response: urllib3.BaseHTTPResponse, image: Image, sink: ResumableSink
    ) -> None:
        budget = image.length - sink.received + 1
        started = time.monotonic()
        taken = 0
        while budget > 0:
            chunk = response.read1(min(CHUNK_SIZE, budget))
            if not chunk:
                break
            budget -= len(chunk)
            taken += len(chunk)
            self.bytes_fetched += len(chunk)
            sink.write(chunk)
            elapsed = time.monotonic() - started
            if (
                elapsed > self._retry.rate_grace_seconds
                and taken / elapsed < self._retry.min_rate_bytes_per_second
            ):
                raise TransferInterruptedError(
                    f"{url} sends {taken / elapsed:.0f} B/s, below the "
                    f"{self._retry.min_rate_bytes_per_second} B/s minimum (slow retrieval)"
                )
        if sink.received > image.length:
            raise DownloadError(f"{url} sent more than the signed {image.length} bytes")
