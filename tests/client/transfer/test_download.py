"""Image download over real HTTP into the slot writer: resume, fallback and the guards."""

from __future__ import annotations

import hashlib
import re
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from client.errors import DownloadError, TransferInterruptedError
from client.images import Image
from client.install import SlotWriter
from client.transfer import ImageDownloader, RetryPolicy

DATA = b"0123456789abcdef" * 8192  # 128 KiB
IMAGE = Image(
    target="app-1.1", length=len(DATA), sha256=hashlib.sha256(DATA).hexdigest(), release_counter=1
)
BLOB = f"/image/targets/{IMAGE.sha256}.{IMAGE.target}"
FAST = RetryPolicy(attempts=4, first_pause_seconds=0.01, max_pause_seconds=0.01)


class _BlobServer(ThreadingHTTPServer):
    daemon_threads = True
    cuts: list[int]  # cut the next responses after this many body bytes
    requests: list[str]  # the Range header of each blob request
    sent: int


class _BlobHandler(BaseHTTPRequestHandler):
    """Serves IMAGE's blob with Range; `/endless/` never stops, `/slow/` trickles."""

    server: _BlobServer

    def do_GET(self) -> None:
        path = self.path
        if path == BLOB:
            self.server.requests.append(self.headers.get("Range", ""))
            self._send_blob()
        elif path == "/endless" + BLOB:
            self.send_response(200)
            self.end_headers()
            try:
                while True:
                    self.wfile.write(b"\0" * 65536)
            except OSError:
                return
        elif path == "/slow" + BLOB:
            self.send_response(200)
            self.send_header("Content-Length", str(len(DATA)))
            self.end_headers()
            try:
                for byte in DATA:
                    self.wfile.write(bytes([byte]))
                    self.wfile.flush()
                    time.sleep(0.01)
            except OSError:
                return
        else:
            self.send_error(404)

    def _send_blob(self) -> None:
        match = re.fullmatch(r"bytes=(\d+)-", self.headers.get("Range", ""))
        start = int(match.group(1)) if match else 0
        body = DATA[start:]
        self.send_response(206 if match else 200)
        if match:
            self.send_header("Content-Range", f"bytes {start}-{len(DATA) - 1}/{len(DATA)}")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if self.server.cuts:
            body = body[: self.server.cuts.pop(0)]
            self.close_connection = True
        self.wfile.write(body)
        self.server.sent += len(body)

    def log_message(self, format: str, *args: object) -> None:
        """Keep test output clean."""


@pytest.fixture
def server() -> Iterator[_BlobServer]:
    blob_server = _BlobServer(("127.0.0.1", 0), _BlobHandler)
    blob_server.cuts, blob_server.requests, blob_server.sent = [], [], 0
    thread = threading.Thread(target=blob_server.serve_forever, daemon=True)
    thread.start()
    yield blob_server
    blob_server.shutdown()
    blob_server.server_close()
    thread.join()


def _url(server: _BlobServer) -> str:
    return f"http://127.0.0.1:{server.server_address[1]}"


def _download(
    urls: list[str], slot: Path, image: Image = IMAGE, retry: RetryPolicy = FAST
) -> ImageDownloader:
    downloader = ImageDownloader(urls, timeout_seconds=5, retry=retry)
    try:
        with SlotWriter(slot, image) as writer:
            downloader.download(image, writer)
            writer.finish()
    finally:
        downloader.close()
    return downloader


def test_streams_the_content_addressed_blob_into_the_slot(
    server: _BlobServer, tmp_path: Path
) -> None:
    _download([_url(server)], tmp_path / "B.img")
    assert (tmp_path / "B.img").read_bytes() == DATA
    assert server.requests == [""]


def test_cut_connections_resume_with_range_requests(server: _BlobServer, tmp_path: Path) -> None:
    server.cuts = [10_000, 50_000]

    downloader = _download([_url(server)], tmp_path / "B.img")

    assert (tmp_path / "B.img").read_bytes() == DATA
    assert server.requests == ["", "bytes=10000-", "bytes=60000-"]
    assert server.sent == len(DATA) == downloader.bytes_fetched


def test_a_dead_relay_falls_back_to_central(server: _BlobServer, tmp_path: Path) -> None:
    _download(["http://127.0.0.1:9", _url(server)], tmp_path / "B.img")
    assert (tmp_path / "B.img").read_bytes() == DATA


def test_a_missing_blob_is_an_interrupted_download(server: _BlobServer, tmp_path: Path) -> None:
    other = Image(target="app-9.9", length=10, sha256="cd" * 32, release_counter=1)
    with pytest.raises(TransferInterruptedError, match="HTTP 404"):
        _download([_url(server)], tmp_path / "B.img", other)


def test_endless_data_stops_one_byte_past_the_signed_length(
    server: _BlobServer, tmp_path: Path
) -> None:
    with pytest.raises(DownloadError, match="endless data"):
        _download([_url(server) + "/endless"], tmp_path / "B.img")
    assert (tmp_path / "B.img").stat().st_size <= len(DATA)


def test_a_slow_server_is_dropped(server: _BlobServer, tmp_path: Path) -> None:
    slow = RetryPolicy(
        attempts=1,
        first_pause_seconds=0,
        min_rate_bytes_per_second=1_000_000,
        rate_grace_seconds=0.2,
    )
    with pytest.raises(TransferInterruptedError, match="slow retrieval"):
        _download([_url(server) + "/slow"], tmp_path / "B.img", retry=slow)


def test_an_unreachable_server_is_an_interrupted_download(tmp_path: Path) -> None:
    with pytest.raises(TransferInterruptedError, match="cannot fetch"):
        _download(["http://127.0.0.1:9"], tmp_path / "B.img")


def test_a_restarted_writer_continues_from_its_checkpoint(
    server: _BlobServer, tmp_path: Path
) -> None:
    slot, progress = tmp_path / "B.img", tmp_path / "download.json"
    server.cuts = [70_000]
    downloader = ImageDownloader([_url(server)], timeout_seconds=5, retry=RetryPolicy(attempts=1))
    with (
        pytest.raises(TransferInterruptedError),
        SlotWriter(slot, IMAGE, progress_path=progress, checkpoint_bytes=32_768) as writer,
    ):
        downloader.download(IMAGE, writer)
    # The process dies here; a new writer re-hashes the checkpointed bytes and resumes.
    with SlotWriter(slot, IMAGE, progress_path=progress) as writer:
        resumed_at = writer.received
        assert 32_768 <= resumed_at <= 70_000
        downloader.download(IMAGE, writer)
        writer.finish()
    assert slot.read_bytes() == DATA
    assert server.requests[-1] == f"bytes={resumed_at}-"
    assert not progress.exists()
