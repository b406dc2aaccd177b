"""One artifact arriving from the upstream into a partial file that readers follow as it grows.

A ``Fill`` is the single flight of an artifact: one upstream transfer, any number of readers.
Each reader holds its own duplicate of the partial file's descriptor and reads with
``os.pread`` up to ``fill.size``, waiting on ``fill.changed()`` for more, so every vehicle
streams the bytes while they arrive instead of waiting for the whole file.
"""

from __future__ import annotations

import asyncio
import hashlib
import os
from pathlib import Path

from server.relay.artifacts import Artifact


class Fill:
    """The partial file of one artifact and its progress (owned by ``ContentCache``).

    Attributes:
        artifact: What is being filled.
        part_path: The partial file (kept across restarts so a fill can resume).
        size: Bytes written so far; readers may read ``[0, size)``.
        length: The total length once the upstream announced it, else ``None``.
        done: True once the file is complete, hash-checked and under its final name.
        error: Why the fill failed, once it has.
        resumed_from: Bytes that were already on disk when the fill started.
    """

    def __init__(self, artifact: Artifact, part_path: Path) -> None:
        """Opens (or creates) the partial file; raises ``OSError`` when it cannot."""
        self.artifact = artifact
        self.part_path = part_path
        self._fd = os.open(part_path, os.O_RDWR | os.O_CREAT, 0o644)
        self.size = os.fstat(self._fd).st_size
        self.resumed_from = self.size
        self.length: int | None = None
        self.done = False
        self.error: BaseException | None = None
        self.final_path: Path | None = None
        self._digest = hashlib.sha256()
        self._progress = asyncio.Event()

    def hash_existing(self) -> None:
        """Hashes the bytes a past run left in the partial file (blocking; run in a thread)."""
        offset = 0
        while offset < self.size:
            chunk = os.pread(self._fd, min(1 << 20, self.size - offset), offset)
            if not chunk:
                break
            self._digest.update(chunk)
            offset += len(chunk)

    def restart(self) -> None:
        """Drops every byte written so far (the upstream cannot resume)."""
        os.ftruncate(self._fd, 0)
        self.size = 0
        self._digest = hashlib.sha256()

    def announce(self, length: int) -> None:
        """Records the total length once the upstream has announced it."""
        self.length = length
        self._notify()

    def write(self, chunk: bytes) -> None:
        """Appends a chunk at the end of the partial file and wakes the readers."""
        written = 0
        while written < len(chunk):
            written += os.pwrite(self._fd, chunk[written:], self.size + written)
        self._digest.update(chunk)
        self.size += len(chunk)
        self._notify()

    def hexdigest(self) -> str:
        """SHA-256 (hex) of the bytes written so far."""
        return self._digest.hexdigest()

    def sync(self) -> None:
        """Makes the partial file durable (runs in a thread)."""
        os.fsync(self._fd)

    def finish(self, final_path: Path) -> None:
        """Marks the fill complete; the file now lives at ``final_path``."""
        self.final_path = final_path
        self.done = True
        self._notify()

    def fail(self, error: BaseException) -> None:
        """Marks the fill failed; readers stop with ``error``."""
        self.error = error
        self._notify()

    def close(self) -> None:
        """Closes the writer's descriptor (readers hold their own)."""
        os.close(self._fd)

    def reader(self) -> int:
        """A new descriptor for reading the partial file; the caller closes it."""
        return os.dup(self._fd)

    @property
    def started(self) -> bool:
        """True once readers can send headers: length known, finished or failed."""
        return self.length is not None or self.done or self.error is not None

    async def changed(self) -> None:
        """Waits until more bytes arrived, the length is known, or the fill ended."""
        await self._progress.wait()

    def _notify(self) -> None:
        event, self._progress = self._progress, asyncio.Event()
        event.set()
