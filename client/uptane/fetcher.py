"""The Director fetcher: per-vehicle metadata from the check-in answer, roots over HTTP."""

from __future__ import annotations

import re
from collections.abc import Iterator
from dataclasses import dataclass

from tuf.api.exceptions import DownloadHTTPError
from tuf.ngclient.fetcher import FetcherInterface

_VERSIONED = re.compile(r"(\d+)\.(root|snapshot|targets)\.json")


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
