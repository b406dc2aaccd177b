"""The streaming slot writer: writes an image into the inactive slot while hashing it.

Memory stays at one chunk whatever the image size. Progress is checkpointed (slot
flushed to disk, then the offset written atomically to a progress file), so a writer
reopened after a power cut continues from the last checkpoint: it re-hashes the bytes
already in the slot, and the download resumes from there with an HTTP Range request.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from types import TracebackType
from typing import BinaryIO

from client.atomicfile import write_atomically
from client.errors import DownloadError, InstallError, VerificationError
from client.images import Image, format_size

CHECKPOINT_BYTES = 8 * 1024 * 1024  # flush and record progress this often
REHASH_CHUNK = 1024 * 1024  # bytes read at a time when re-hashing after a restart


class SlotWriter:
    """Streams one image into one slot, never holding more than a chunk in memory.

    Use it as a context manager: ``write`` each chunk, then ``finish`` checks the length
    and the SHA-256 against the verified image and flushes the slot to disk. A writer that
    was not finished leaves a slot whose content must not be booted.
    """

    def __init__(
        self,
        slot_path: Path,
        image: Image,
        *,
        progress_path: Path | None = None,
        checkpoint_bytes: int = CHECKPOINT_BYTES,
    ) -> None:
        """Prepare to write ``image`` into the slot at ``slot_path``.

        Args:
            slot_path: The inactive slot (a file or a block device).
            image: The verified image: its length caps the bytes accepted.
            progress_path: Where checkpoints are recorded; None writes from the start
                every time.
            checkpoint_bytes: Bytes between two checkpoints.
        """
        self._slot_path = slot_path
        self._image = image
        self._progress_path = progress_path
        self._checkpoint_bytes = checkpoint_bytes
        self._hash = hashlib.sha256()
        self._received = 0
        self._checkpointed = 0
        self._file: BinaryIO | None = None

    @property
    def received(self) -> int:
        """Bytes of the image in the slot so far (the offset to resume from)."""
        return self._received

    @property
    def image(self) -> Image:
        """The image being written."""
        return self._image

    def __enter__(self) -> SlotWriter:
        """Open the slot, continuing from the last checkpoint of the same image.

        Raises:
            InstallError: The slot cannot be opened or read back.
        """
        try:
            self._file = self._open()
            start = self._resume_offset()
            self._file.seek(0)
            while self._received < start:
                block = self._file.read(min(REHASH_CHUNK, start - self._received))
                if not block:
                    break
                self._hash.update(block)
                self._received += len(block)
            self._checkpointed = self._received
            self._truncate()
        except OSError as exc:
            self.__exit__(None, None, None)
            raise InstallError(f"cannot open slot {self._slot_path} for writing: {exc}") from exc
        return self

    def _open(self) -> BinaryIO:
        try:
            return self._slot_path.open("r+b")
        except FileNotFoundError:
            return self._slot_path.open("w+b")

    def _resume_offset(self) -> int:
        if self._progress_path is None:
            return 0
        try:
            progress = json.loads(self._progress_path.read_bytes())
        except (OSError, ValueError):
            return 0
        if not isinstance(progress, dict) or progress.get("sha256") != self._image.sha256:
            return 0
        offset = progress.get("offset")
        return offset if isinstance(offset, int) and 0 <= offset <= self._image.length else 0

    def _truncate(self) -> None:
        assert self._file is not None  # noqa: S101 - called only while open
        self._file.seek(self._received)
        if self._slot_path.is_file():
            self._file.truncate(self._received)

    def restart(self) -> None:
        """Drop what was written and start again at byte 0 (a server that ignores Range).

        Raises:
            InstallError: The slot cannot be truncated.
        """
        self._hash = hashlib.sha256()
        self._received = self._checkpointed = 0
        try:
            self._truncate()
        except OSError as exc:
            raise InstallError(f"cannot rewind slot {self._slot_path}: {exc}") from exc

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
        if self._received + len(chunk) > self._image.length:
            raise DownloadError(
                f"{self._image.target}: the server sent more than the signed "
                f"{self._image.length} bytes (endless data); the relay or server is faulty"
            )
        self._hash.update(chunk)
        try:
            self._file.write(chunk)
        except OSError as exc:
            raise InstallError(f"cannot write slot {self._slot_path}: {exc}") from exc
        self._received += len(chunk)
        if self._received - self._checkpointed >= self._checkpoint_bytes:
            self.checkpoint()

    def checkpoint(self) -> None:
        """Flush the slot and record the offset a restarted writer may continue from.

        Raises:
            InstallError: The slot or the progress file cannot be written.
        """
        if self._file is None or self._progress_path is None:
            return
        try:
            self._file.flush()
            os.fsync(self._file.fileno())
            progress = {"sha256": self._image.sha256, "offset": self._received}
            write_atomically(self._progress_path, json.dumps(progress).encode())
        except OSError as exc:
            raise InstallError(f"cannot checkpoint slot {self._slot_path}: {exc}") from exc
        self._checkpointed = self._received

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
            self.discard()
            raise VerificationError(
                f"{self._image.target}: the image's SHA-256 is {digest} but the Director and "
                f"Image repository signed {self._image.sha256}; the image was refused"
            )
        try:
            self._file.flush()
            os.fsync(self._file.fileno())
        except OSError as exc:
            raise InstallError(f"cannot flush slot {self._slot_path} to disk: {exc}") from exc
        self.discard()

    def discard(self) -> None:
        """Forget the checkpoint, so that the next writer starts at byte 0."""
        if self._progress_path is not None:
            self._progress_path.unlink(missing_ok=True)
