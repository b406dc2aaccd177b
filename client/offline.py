"""Offline installs (``staffel-client install --offline DIR``): a USB stick or a workshop
laptop stands in for the relay, and the update is verified exactly like one from it.

``DIR`` holds what the relay would serve and what a check-in would answer::

    image/metadata/...            the Image repository's metadata (N.root.json, timestamp.json, ...)
    image/targets/SHA256.NAME     the image blobs
    director/metadata/N.root.json the Director's root chain
    director/offer/timestamp.json the vehicle's Director timestamp, snapshot and targets
    director/offer/snapshot.json
    director/offer/targets.json
    director/offer/assignment     the assignment id (optional; "offline" when absent)

The folder is served read-only on 127.0.0.1 for the duration of the install, so the same
verifier and downloader run over HTTP as they do against a relay. Events stay queued
until the vehicle is online again.
"""

from __future__ import annotations

import threading
from collections.abc import Sequence
from functools import partial
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from types import TracebackType
from typing import Any

from client.errors import ConfigError, ServerError
from client.journal.events import VehicleEvent
from client.link import CheckInAnswer, EcuReport, UpdateOffer
from client.uptane import DirectorMetadata

OFFER_FILES = ("timestamp.json", "snapshot.json", "targets.json")


class _ReadOnlyHandler(SimpleHTTPRequestHandler):
    def log_message(self, format: str, *args: Any) -> None:
        """Requests are not logged."""


class OfflineSource:
    """Serves an update folder on 127.0.0.1 while it is open (a context manager)."""

    def __init__(self, directory: Path) -> None:
        """Check the folder's layout.

        Raises:
            ConfigError: A file the layout needs is missing.
        """
        self._directory = directory
        missing = [
            name for name in OFFER_FILES if not (directory / "director" / "offer" / name).is_file()
        ]
        if not (directory / "image" / "metadata").is_dir() or missing:
            raise ConfigError(
                f"{directory} is not an offline update folder: it needs image/metadata/ and "
                "director/offer/timestamp.json, snapshot.json and targets.json"
            )
        self._server: ThreadingHTTPServer | None = None
        self.url = ""

    def __enter__(self) -> OfflineSource:
        """Start serving."""
        self._server = ThreadingHTTPServer(
            ("127.0.0.1", 0), partial(_ReadOnlyHandler, directory=str(self._directory))
        )
        self._server.daemon_threads = True
        threading.Thread(target=self._server.serve_forever, daemon=True).start()
        self.url = f"http://127.0.0.1:{self._server.server_address[1]}"
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        """Stop serving."""
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()

    def link(self) -> OfflineLink:
        """The stand-in for the relay's check-in: it offers the folder's update."""
        offer = self._directory / "director" / "offer"
        assignment = offer / "assignment"
        return OfflineLink(
            UpdateOffer(
                assignment_id=(
                    assignment.read_text(encoding="utf-8").strip()
                    if assignment.is_file()
                    else "offline"
                ),
                director=DirectorMetadata(
                    *(Path(offer / name).read_bytes() for name in OFFER_FILES)
                ),
            )
        )


class OfflineLink:
    """Answers a check-in with the folder's offer; events stay queued for later."""

    def __init__(self, offer: UpdateOffer) -> None:
        """Offer ``offer`` at every check-in."""
        self._offer = offer

    def check_in(
        self,
        vin: str,
        ecus: Sequence[EcuReport],
        *,
        manifest: bytes = b"",
        heartbeat: bytes = b"",
    ) -> CheckInAnswer:
        """Return the folder's offer."""
        return CheckInAnswer(offer=self._offer, next_poll_seconds=0)

    def report_events(self, vin: str, events: Sequence[VehicleEvent]) -> None:
        """Refuse: an offline install has no server to report to.

        Raises:
            ServerError: Always; the events stay queued.
        """
        raise ServerError("offline install: events stay queued until the vehicle is online")

    def close(self) -> None:
        """Nothing to close."""
