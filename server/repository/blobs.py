"""A content-addressed blob store for image files: ``ROOT/sha256/ab/abcdef...``.

A blob is streamed into a temporary file under ``ROOT/incoming`` while it is
hashed, then fsynced and renamed to its final name; readers therefore see a
blob whole or not at all, and a crash leaves only a stray temporary file.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import re
import tempfile
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Final

from server.errors import InvalidArgumentError

_SHA256_HEX: Final = re.compile(r"[0-9a-f]{64}")
_INCOMING: Final = "incoming"


@dataclass(frozen=True)
class BlobInfo:
    """A stored blob: its SHA-256 (lowercase hex) and length in bytes."""

    sha256: str
    length: int


def is_sha256_hex(value: str) -> bool:
    """True when ``value`` is a lowercase hex SHA-256 digest."""
    return _SHA256_HEX.fullmatch(value) is not None


class BlobStore:
    """Image blobs on local disk, named by the SHA-256 of their content."""

    def __init__(self, root: Path) -> None:
        self.root = root
        (root / _INCOMING).mkdir(parents=True, exist_ok=True)

    def writer(self, max_length: int) -> BlobWriter:
        """Starts a new blob that may hold at most ``max_length`` bytes.

        Use it as a context manager, or call ``abort()`` on failure: a writer
        left neither committed nor aborted leaves a temporary file behind.
        """
        if max_length < 0:
            raise InvalidArgumentError(f"max_length must be >= 0, got {max_length}")
        return BlobWriter(self.root, max_length)

    def path(self, sha256: str) -> Path | None:
        """The file holding blob ``sha256``, or None when it is not stored.

        Raises:
            InvalidArgumentError: ``sha256`` is not 64 lowercase hex digits.
        """
        path = _blob_path(self.root, sha256)
        return path if path.is_file() else None

    def exists(self, sha256: str) -> bool:
        """True when blob ``sha256`` is stored."""
        return self.path(sha256) is not None


class BlobWriter:
    """Streams one blob into the store; made by ``BlobStore.writer``."""

    def __init__(self, root: Path, max_length: int) -> None:
        self._root = root
        self._max_length = max_length
        fd, temp_name = tempfile.mkstemp(dir=root / _INCOMING, prefix="blob-", suffix=".tmp")
        self._temp = Path(temp_name)
        self._file = os.fdopen(fd, "wb")
        self._hash = hashlib.sha256()
        self._length = 0
        self._done = False

    def write(self, chunk: bytes) -> None:
        """Appends ``chunk``.

        Raises:
            InvalidArgumentError: The blob would exceed ``max_length``; the
                writer is aborted.
        """
        if self._done:
            raise InvalidArgumentError("the blob is already committed or aborted")
        if self._length + len(chunk) > self._max_length:
            self.abort()
            raise InvalidArgumentError(
                f"the image is larger than the allowed {self._max_length} bytes"
            )
        self._file.write(chunk)
        self._hash.update(chunk)
        self._length += len(chunk)

    def commit(self) -> BlobInfo:
        """Makes the blob durable under its SHA-256 and returns its identity.

        Committing content that is already stored keeps the stored file.
        """
        if self._done:
            raise InvalidArgumentError("the blob is already committed or aborted")
        self._done = True
        info = BlobInfo(sha256=self._hash.hexdigest(), length=self._length)
        try:
            self._file.flush()
            os.fsync(self._file.fileno())
            self._file.close()
            destination = _blob_path(self._root, info.sha256)
            if destination.is_file():
                self._temp.unlink()
                return info
            created_dir = not destination.parent.exists()
            destination.parent.mkdir(parents=True, exist_ok=True)
            self._temp.chmod(0o644)
            self._temp.replace(destination)
            _fsync_dir(destination.parent)
            if created_dir:
                _fsync_dir(destination.parent.parent)
        except BaseException:
            with contextlib.suppress(FileNotFoundError):
                self._temp.unlink()
            raise
        return info

    def abort(self) -> None:
        """Discards what was written; safe to call more than once."""
        if self._done:
            return
        self._done = True
        self._file.close()
        with contextlib.suppress(FileNotFoundError):
            self._temp.unlink()

    def __enter__(self) -> BlobWriter:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.abort()


def _blob_path(root: Path, sha256: str) -> Path:
    if not is_sha256_hex(sha256):
        raise InvalidArgumentError(
            f"{sha256!r} is not a SHA-256 digest: give 64 lowercase hex digits"
        )
    return root / "sha256" / sha256[:2] / sha256


def _fsync_dir(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
