"""The relay's disk cache of blobs and metadata, with single-flight filling.

Layout under the cache directory::

    blobs/SHA256.NAME               image blobs, content-addressed
    metadata/REPOSITORY/FILENAME    metadata (versioned files and the last timestamp.json)
    tmp/                            partial files; emptied at start

A file appears under its final name only once complete: written to ``tmp/``, fsynced, then
renamed. Concurrent requests for the same missing artifact share one fill (one upstream
fetch); each waiter is answered once the file has landed. Serving a blob while it still
arrives is a later improvement.
"""

from __future__ import annotations

import asyncio
import logging
import os
import shutil
import tempfile
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import BinaryIO

from server.relay.artifacts import Artifact
from server.relay.errors import CacheError

logger = logging.getLogger(__name__)

Writer = Callable[[bytes], object]
"""Appends a chunk to the file being filled."""

Filler = Callable[[Writer], Awaitable[None]]
"""Produces an artifact's bytes into a writer, raising when they cannot be had."""


def _fsync_directory(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _commit(sink: BinaryIO, tmp: Path, final: Path) -> None:
    """Makes a complete temp file durable and gives it its final name (runs in a thread)."""
    try:
        with sink:
            sink.flush()
            os.fsync(sink.fileno())
        final.parent.mkdir(parents=True, exist_ok=True)
        tmp.replace(final)
        _fsync_directory(final.parent)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def _discard(sink: BinaryIO, tmp: Path) -> None:
    """Drops a partial temp file (closing and unlinking do not block for long)."""
    sink.close()
    tmp.unlink(missing_ok=True)


class ContentCache:
    """Blobs and metadata on disk, filled at most once at a time per artifact.

    Use ``await ContentCache.open(root)`` and ``await cache.close()``; the cache owns the
    fill tasks it starts and cancels those still running on close.
    """

    def __init__(self, root: Path) -> None:
        """Wraps an existing cache directory; prefer ``ContentCache.open``."""
        self._root = root
        self._tmp = root / "tmp"
        self._fills: dict[Artifact, asyncio.Task[Path]] = {}

    @classmethod
    async def open(cls, root: Path) -> ContentCache:
        """Creates the cache layout under ``root`` and drops partial files of a past run.

        Raises:
            CacheError: The directory cannot be created or written.
        """

        def prepare() -> None:
            for sub in ("blobs", "metadata"):
                (root / sub).mkdir(parents=True, exist_ok=True)
            shutil.rmtree(root / "tmp", ignore_errors=True)
            (root / "tmp").mkdir()

        try:
            await asyncio.to_thread(prepare)
        except OSError as exc:
            raise CacheError(f"cannot prepare cache directory {root}: {exc}") from exc
        return cls(root)

    async def close(self) -> None:
        """Cancels the fills still running and waits for them to end."""
        tasks = list(self._fills.values())
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    def path(self, artifact: Artifact) -> Path:
        """Where the artifact lives (or will live) on disk."""
        return self._root / artifact.cache_path

    def lookup(self, artifact: Artifact) -> Path | None:
        """The artifact's file when it is cached, else ``None``."""
        path = self.path(artifact)
        return path if path.is_file() else None

    async def fill_once(self, artifact: Artifact, fill: Filler) -> Path:
        """Fills the artifact from ``fill`` unless a fill for it is already running.

        Every concurrent caller waits for the same fill; a caller that gives up (is
        cancelled) does not stop the fill for the others.

        Returns:
            The path of the complete file.

        Raises:
            CacheError: The file cannot be written.
            Exception: Whatever ``fill`` raised; nothing is cached then.
        """
        task = self._fills.get(artifact)
        if task is None:
            task = asyncio.create_task(self._fill(artifact, fill), name=f"fill {artifact.label}")
            self._fills[artifact] = task
            task.add_done_callback(lambda done: self._forget(artifact, done))
        return await asyncio.shield(task)

    def _forget(self, artifact: Artifact, task: asyncio.Task[Path]) -> None:
        if self._fills.get(artifact) is task:
            del self._fills[artifact]

    async def _fill(self, artifact: Artifact, fill: Filler) -> Path:
        try:
            fd, name = tempfile.mkstemp(dir=self._tmp, suffix=".part")
        except OSError as exc:
            raise CacheError(f"cannot create a file in {self._tmp}: {exc}") from exc
        tmp = Path(name)
        sink = os.fdopen(fd, "wb")
        try:
            await fill(sink.write)
        except BaseException as exc:
            _discard(sink, tmp)
            if isinstance(exc, OSError):
                raise CacheError(f"cannot write {artifact.label} to {self._tmp}: {exc}") from exc
            raise
        final = self.path(artifact)
        try:
            await asyncio.to_thread(_commit, sink, tmp, final)
        except OSError as exc:
            raise CacheError(f"cannot store {artifact.label} in {self._root}: {exc}") from exc
        return final

    async def store(self, artifact: Artifact, data: bytes) -> None:
        """Replaces the artifact's cached copy with ``data`` atomically.

        Raises:
            CacheError: The file cannot be written.
        """

        async def fill(write: Writer) -> None:
            write(data)

        await self._fill(artifact, fill)

    async def read(self, artifact: Artifact) -> bytes | None:
        """The artifact's cached bytes, or ``None`` when it is not cached."""
        try:
            return await asyncio.to_thread(self.path(artifact).read_bytes)
        except FileNotFoundError:
            return None
        except OSError as exc:
            raise CacheError(f"cannot read {artifact.label} from {self._root}: {exc}") from exc
