"""Image download over real HTTP into the slot writer: good, missing, endless, short."""

from __future__ import annotations

import hashlib
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from client.errors import DownloadError
from client.images import Image
from client.install import SlotWriter
from client.transfer import ImageDownloader

DATA = b"0123456789abcdef" * 8192  # 128 KiB
IMAGE = Image(
    target="app-1.1", length=len(DATA), sha256=hashlib.sha256(DATA).hexdigest(), release_counter=1
)


class _BlobHandler(BaseHTTPRequestHandler):
    """Serves IMAGE's blob; `/endless/` never stops, `/short/` stops early."""

    def do_GET(self) -> None:
        blob = f"/image/targets/{IMAGE.sha256}.{IMAGE.target}"
        if self.path == blob:
            self._send(DATA)
        elif self.path == "/short" + blob:
            self._send(DATA[:1000], length=len(DATA))
        elif self.path == "/endless" + blob:
            self.send_response(200)
            self.end_headers()
            try:
                while True:
                    self.wfile.write(b"\0" * 65536)
            except OSError:
                return
        else:
            self.send_error(404)

    def _send(self, body: bytes, *, length: int | None = None) -> None:
        self.send_response(200)
        self.send_header("Content-Length", str(length or len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: object) -> None:
        """Keep test output clean."""


@pytest.fixture
def blob_url() -> Iterator[str]:
    server = ThreadingHTTPServer(("127.0.0.1", 0), _BlobHandler)
    server.daemon_threads = True
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()
    thread.join()


def _download(base_url: str, slot: Path, image: Image = IMAGE) -> None:
    downloader = ImageDownloader(base_url, timeout_seconds=5)
    try:
        with SlotWriter(slot, image) as writer:
            downloader.download(image, writer)
            writer.finish()
    finally:
        downloader.close()


def test_streams_the_content_addressed_blob_into_the_slot(blob_url: str, tmp_path: Path) -> None:
    _download(blob_url, tmp_path / "B.img")
    assert (tmp_path / "B.img").read_bytes() == DATA


def test_a_missing_blob_is_a_download_failure(blob_url: str, tmp_path: Path) -> None:
    other = Image(target="app-9.9", length=10, sha256="cd" * 32, release_counter=1)
    with pytest.raises(DownloadError, match="HTTP 404"):
        _download(blob_url, tmp_path / "B.img", other)


def test_endless_data_stops_one_byte_past_the_signed_length(blob_url: str, tmp_path: Path) -> None:
    with pytest.raises(DownloadError, match="endless data"):
        _download(blob_url + "/endless", tmp_path / "B.img")
    assert (tmp_path / "B.img").stat().st_size == len(DATA)


def test_a_connection_that_ends_early_is_a_download_failure(blob_url: str, tmp_path: Path) -> None:
    with pytest.raises(DownloadError):
        _download(blob_url + "/short", tmp_path / "B.img")


def test_an_unreachable_server_is_a_download_failure(tmp_path: Path) -> None:
    with pytest.raises(DownloadError, match="cannot fetch"):
        _download("http://127.0.0.1:9", tmp_path / "B.img")
