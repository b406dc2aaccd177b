"""What the relay serves, named strictly: blobs and TUF metadata files (pure, no I/O).

Every requested file name is checked here before it touches the disk or the upstream, so the
cache layout can never be escaped and the upstream never sees junk from the site network.
"""

from __future__ import annotations

import enum
import re
from dataclasses import dataclass

from server.relay.errors import InvalidPathError

MAX_FILENAME_LENGTH = 255  # bytes, the usual file-system limit for one path component

# ngclient's hash-prefixed target file: SHA-256 (lowercase hex) + "." + the target's base name.
_BLOB = re.compile(r"(?P<sha256>[0-9a-f]{64})\.[A-Za-z0-9._-]+")
# Consistent-snapshot metadata: VERSION.ROLE.json (root, snapshot, targets, delegated roles).
_VERSIONED_METADATA = re.compile(r"[1-9][0-9]{0,18}\.(?P<role>[A-Za-z0-9][A-Za-z0-9_-]*)\.json")
TIMESTAMP = "timestamp.json"


class Repository(enum.StrEnum):
    """The two TUF repositories of Uptane, as they appear in URL paths."""

    IMAGE = "image"
    DIRECTOR = "director"


class ArtifactKind(enum.Enum):
    """How an artifact may be cached."""

    BLOB = "blob"  # content-addressed, immutable
    METADATA = "metadata"  # versioned, immutable
    TIMESTAMP = "timestamp"  # replaced by the upstream at any time


@dataclass(frozen=True)
class Artifact:
    """One file the relay serves: where it lives upstream and in the cache.

    Attributes:
        kind: How it may be cached.
        url_path: The path on the upstream (and on the relay), starting with ``/``.
        cache_path: The path relative to the cache directory, without ``..`` or ``/`` prefix.
        sha256: The expected SHA-256 (hex) of a blob's bytes; ``None`` for metadata.
    """

    kind: ArtifactKind
    url_path: str
    cache_path: str
    sha256: str | None = None

    @property
    def immutable(self) -> bool:
        """True when the bytes behind this name never change."""
        return self.kind is not ArtifactKind.TIMESTAMP

    @property
    def is_root(self) -> bool:
        """True for a version of a repository's root (``VERSION.root.json``)."""
        return self.kind is ArtifactKind.METADATA and self.url_path.endswith(".root.json")

    @property
    def label(self) -> str:
        """A short name for logs (``SHA.NAME`` or ``image/1.root.json``)."""
        return self.cache_path.removeprefix("blobs/").removeprefix("metadata/")


def _check_length(filename: str) -> None:
    if not filename or len(filename.encode()) > MAX_FILENAME_LENGTH:
        raise InvalidPathError(
            f"file name must be 1 to {MAX_FILENAME_LENGTH} bytes long, got {len(filename)} chars"
        )


def blob(filename: str) -> Artifact:
    """The image blob named ``SHA256.TARGETNAME``.

    Raises:
        InvalidPathError: The name is not lowercase hex SHA-256, ``.``, ``[A-Za-z0-9._-]+``.
    """
    _check_length(filename)
    match = _BLOB.fullmatch(filename)
    if match is None:
        raise InvalidPathError(
            f"blob name {filename!r} is not SHA256.NAME "
            "(64 lowercase hex digits, '.', then letters, digits, '.', '_' or '-')"
        )
    return Artifact(
        kind=ArtifactKind.BLOB,
        url_path=f"/{Repository.IMAGE}/targets/{filename}",
        cache_path=f"blobs/{filename}",
        sha256=match["sha256"],
    )


def metadata(repository: Repository, filename: str) -> Artifact:
    """A metadata file of one repository.

    The Image repository serves ``timestamp.json`` and ``VERSION.ROLE.json``; the Director
    serves only its root chain, ``VERSION.root.json`` (per-vehicle metadata comes in CheckIn).

    Raises:
        InvalidPathError: The name is no metadata file name that this repository serves.
    """
    _check_length(filename)
    url_path = f"/{repository}/metadata/{filename}"
    cache_path = f"metadata/{repository}/{filename}"
    if repository is Repository.IMAGE and filename == TIMESTAMP:
        return Artifact(kind=ArtifactKind.TIMESTAMP, url_path=url_path, cache_path=cache_path)
    match = _VERSIONED_METADATA.fullmatch(filename)
    if match is None or (repository is Repository.DIRECTOR and match["role"] != "root"):
        served = (
            "VERSION.root.json"
            if repository is Repository.DIRECTOR
            else ("timestamp.json or VERSION.ROLE.json")
        )
        raise InvalidPathError(
            f"{repository} metadata name {filename!r} is not valid; expected {served}"
        )
    return Artifact(kind=ArtifactKind.METADATA, url_path=url_path, cache_path=cache_path)
