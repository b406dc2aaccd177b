"""The streaming slot writer: writes an image into the inactive slot while hashing it."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path
from types import TracebackType
from typing import BinaryIO

from client.errors import DownloadError, InstallError, VerificationError
from client.images import Image, format_size


class SlotWriter:
    """Streams one image into one slot, never holding more than a chunk in memory.

    Use it as a context manager: ``write`` each chunk, then ``finish`` checks the length
    and the SHA-256 against the verified image and flushes the slot to disk. A writer that
    was not finished leaves a slot whose content must not be booted.
    """

    def __init__(self, slot_path: Path, image: Image) -> None:
        """Prepare to write ``image`` into the slot at ``slot_path``.

        Args:
            slot_path: The inactive slot (a file or a block device).
            image: The verified image: its length caps the bytes accepted.
        """
        self._slot_path = slot_path
        self._image = image
        self._hash = hashlib.sha256()
        self._received = 0
        self._file: BinaryIO | None = None

    @property
    def received(self) -> int:
        """Bytes written so far."""
        return self._received

    def __enter__(self) -> SlotWriter:
        """Open the slot for writing.

        Raises:
            InstallError: The slot cannot be opened.
        """
        try:
            self._file = self._slot_path.open("wb")
        except OSError as exc:
            raise InstallError(f"cannot open slot {self._slot_path} for writing: {exc}") from exc
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        """Close the slot."""
        if self._file is not None:
            self._file.close()
            self._file = None

    def write(self, chunk: bytes) -> None:
        """Write and hash one chunk.

        Raises:
            DownloadError: The chunk takes the image past its signed length (endless data).
            InstallError: The slot cannot be written.
        """
        if self._file is None:
            raise InstallError("the slot writer is not open")
        self._received += len(chunk)
        if self._received > self._image.length:
            raise DownloadError(
                f"{self._image.target}: the server sent more than the signed "
                f"{self._image.length} bytes (endless data); the relay or server is faulty"
            )
        self._hash.update(chunk)
        try:
            self._file.write(chunk)
        except OSError as exc:
            raise InstallError(f"cannot write slot {self._slot_path}: {exc}") from exc

    def finish(self) -> None:
        """Check length and SHA-256 against the verified image, then fsync the slot.

        Raises:
            DownloadError: Fewer bytes arrived than the signed length.
            VerificationError: The SHA-256 differs from the one both repositories signed.
            InstallError: The slot cannot be flushed to disk.
        """
        if self._file is None:
            raise InstallError("the slot writer is not open")
        if self._received != self._image.length:
            raise DownloadError(
                f"{self._image.target}: the download ended after {self._received} of "
                f"{self._image.length} bytes ({format_size(self._received)} of "
                f"{format_size(self._image.length)})"
            )
        digest = self._hash.hexdigest()
        if digest != self._image.sha256:
            raise VerificationError(
                f"{self._image.target}: the image's SHA-256 is {digest} but the Director and "
                f"Image repository signed {self._image.sha256}; the image was refused"
            )
        try:
            self._file.flush()
            os.fsync(self._file.fileno())
        except OSError as exc:
            raise InstallError(f"cannot flush slot {self._slot_path} to disk: {exc}") from exc
