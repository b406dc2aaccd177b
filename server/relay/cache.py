"""The relay's disk cache of blobs and metadata: single flight, hash check, LRU within a budget.

Layout under the cache directory::

    blobs/SHA256.NAME               image blobs, content-addressed
    metadata/REPOSITORY/FILENAME    metadata (versioned files and the last timestamp.json)
    partial/SHA256.NAME             blobs still arriving; kept across restarts to resume
    tmp/                            scratch files; emptied at start

A file appears under its final name only once complete: fsynced, then renamed. Concurrent
requests for the same missing artifact share one ``Fill`` (one upstream transfer) and read it
while it grows. A cached blob's SHA-256 is checked before this process serves it for the
first time, and again whenever its file changed on disk; a copy that does not match its name
is deleted and fetched again. Blobs count against a disk budget; the least recently used are
evicted first, except blobs pinned by a staging plan and blobs being filled.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import os
import shutil
import tempfile
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Iterable
from pathlib import Path

from server.relay.artifacts import Artifact, ArtifactKind
from server.relay.errors import CacheError
from server.relay.fill import Fill
from server.relay.metrics import RelayMetrics

logger = logging.getLogger(__name__)

Runner = Callable[[Fill], Awaitable[None]]
"""Brings an artifact's bytes into a fill (resuming from ``fill.size``), raising on failure."""

_Stamp = tuple[int, int, int]  # inode, size, mtime in ns: "the file has not changed"


def _stamp(stat: os.stat_result) -> _Stamp:
    return (stat.st_ino, stat.st_size, stat.st_mtime_ns)


def _fsync_directory(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as source:
        while chunk := source.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()


class ContentCache:
    """Blobs and metadata on disk, each filled at most once at a time.

    Use ``await ContentCache.open(root, ...)`` and ``await cache.close()``; the cache owns the
    fill tasks it starts and cancels those still running on close.
    """

    def __init__(self, root: Path, *, budget_bytes: int, metrics: RelayMetrics) -> None:
        """Wraps an existing cache directory; prefer ``ContentCache.open``."""
        self._root = root
        self._tmp = root / "tmp"
        self._partial = root / "partial"
        self._budget = budget_bytes
        self._metrics = metrics
        self._fills: dict[Artifact, Fill] = {}
        self._tasks: set[asyncio.Task[None]] = set()
        self._checks: dict[Path, asyncio.Task[bool]] = {}
        self._verified: dict[Path, _Stamp] = {}
        self._lru: OrderedDict[str, int] = OrderedDict()  # blob file name -> bytes
        self._pins: frozenset[str] = frozenset()

    @classmethod
    async def open(cls, root: Path, *, budget_bytes: int, metrics: RelayMetrics) -> ContentCache:
        """Creates the cache layout under ``root`` and indexes the blobs of a past run.

        Raises:
            CacheError: The directory cannot be created or written.
        """

        def prepare() -> list[tuple[int, str, int]]:
            for sub in ("blobs", "metadata", "partial"):
                (root / sub).mkdir(parents=True, exist_ok=True)
            shutil.rmtree(root / "tmp", ignore_errors=True)
            (root / "tmp").mkdir()
            found = []
            for entry in os.scandir(root / "blobs"):
                stat = entry.stat()
                found.append((stat.st_mtime_ns, entry.name, stat.st_size))
            return sorted(found)

        try:
            blobs = await asyncio.to_thread(prepare)
        except OSError as exc:
            raise CacheError(f"cannot prepare cache directory {root}: {exc}") from exc
        cache = cls(root, budget_bytes=budget_bytes, metrics=metrics)
        for _, name, size in blobs:
            cache._lru[name] = size
        cache._update_gauge()
        return cache

    async def close(self) -> None:
        """Cancels the fills still running and waits for them to end."""
        tasks = [*self._tasks, *self._checks.values()]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    def path(self, artifact: Artifact) -> Path:
        """Where the artifact lives (or will live) on disk."""
        return self._root / artifact.cache_path

    @property
    def stored_bytes(self) -> int:
        """Bytes of complete blobs on disk."""
        return sum(self._lru.values())

    def pin(self, sha256s: Iterable[str]) -> None:
        """Replaces the set of blobs (by SHA-256) that eviction must keep."""
        self._pins = frozenset(sha256s)

    async def lookup(self, artifact: Artifact) -> Path | None:
        """The artifact's complete file, or ``None`` when it is not (validly) cached.

        A blob is hash-checked once per process and whenever its file changed; a copy that
        does not match is deleted (counted as ``cache_corrupt``).
        """
        path = self.path(artifact)
        try:
            stat = path.stat()
        except FileNotFoundError:
            return None
        if artifact.kind is not ArtifactKind.BLOB:
            return path
        name = path.name
        if self._verified.get(path) != _stamp(stat) and not await self._check(artifact, path):
            return None
        if name in self._lru:
            self._lru.move_to_end(name)
        return path

    async def _check(self, artifact: Artifact, path: Path) -> bool:
        task = self._checks.get(path)
        if task is None:
            task = asyncio.create_task(self._verify(artifact, path), name=f"check {path.name}")
            self._checks[path] = task
            task.add_done_callback(lambda _: self._checks.pop(path, None))
        return await asyncio.shield(task)

    async def _verify(self, artifact: Artifact, path: Path) -> bool:
        try:
            stat = await asyncio.to_thread(path.stat)
            actual = await asyncio.to_thread(_sha256_of, path)
        except FileNotFoundError:
            return False
        except OSError as exc:
            raise CacheError(f"cannot read {path} to check its hash: {exc}") from exc
        if actual == artifact.sha256:
            self._verified[path] = _stamp(stat)
            return True
        self._metrics.cache_corrupt.inc()
        logger.warning(
            "cached %s has SHA-256 %s, not the one its name says; deleting it to fetch it again",
            artifact.label,
            actual,
        )
        self._forget_blob(path)
        return False

    def filling(self, artifact: Artifact) -> Fill | None:
        """The fill of ``artifact`` in progress, if any."""
        return self._fills.get(artifact)

    def fill(self, artifact: Artifact, run: Runner) -> Fill:
        """The fill of ``artifact``: the one running, or a new one driven by ``run``.

        The fill continues when the request that started it goes away; its outcome is in
        ``fill.done`` / ``fill.error``.

        Raises:
            CacheError: The partial file cannot be created.
        """
        fill = self._fills.get(artifact)
        if fill is not None:
            return fill
        part = self._partial / artifact.cache_path.removeprefix("blobs/").replace("/", "_")
        try:
            fill = Fill(artifact, part)
        except OSError as exc:
            raise CacheError(f"cannot create {part}: {exc}; check the cache directory") from exc
        self._fills[artifact] = fill
        task = asyncio.create_task(self._drive(fill, run), name=f"fill {artifact.label}")
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return fill

    async def _drive(self, fill: Fill, run: Runner) -> None:
        artifact = fill.artifact
        try:
            if fill.size:
                await asyncio.to_thread(fill.hash_existing)
            await run(fill)
            self._make_room(fill.size)
            final = self.path(artifact)
            await asyncio.to_thread(self._commit, fill, final)
        except BaseException as exc:
            if isinstance(exc, OSError):
                exc = CacheError(f"cannot store {artifact.label} in {self._root}: {exc}")
            fill.fail(exc)
            if not isinstance(exc, asyncio.CancelledError):
                logger.warning("fill of %s failed: %s", artifact.label, exc)
            del self._fills[artifact]
            fill.close()
            if isinstance(exc, asyncio.CancelledError):
                raise
            return
        del self._fills[artifact]
        fill.close()
        if artifact.kind is ArtifactKind.BLOB:
            self._verified[final] = _stamp(final.stat())
            self._lru[final.name] = fill.size
            self._lru.move_to_end(final.name)
            self._update_gauge()
        fill.finish(final)

    @staticmethod
    def _commit(fill: Fill, final: Path) -> None:
        fill.sync()
        final.parent.mkdir(parents=True, exist_ok=True)
        fill.part_path.replace(final)
        _fsync_directory(final.parent)

    def _make_room(self, incoming: int) -> None:
        """Evicts least recently used, unpinned blobs until ``incoming`` more bytes fit."""
        excess = self.stored_bytes + incoming - self._budget
        if excess <= 0:
            return
        for name in list(self._lru):
            if excess <= 0:
                break
            if name[:64] in self._pins:
                continue
            size = self._lru[name]
            self._forget_blob(self._root / "blobs" / name)
            self._metrics.cache_evictions.inc()
            logger.info("evicted %s (%d bytes) to stay within the cache budget", name, size)
            excess -= size
        if excess > 0:
            logger.warning(
                "the cache holds %d bytes more than its budget of %d bytes: every remaining "
                "blob is pinned by the staging plan; raise --cache-budget",
                excess,
                self._budget,
            )

    def _forget_blob(self, path: Path) -> None:
        with contextlib.suppress(FileNotFoundError):
            path.unlink()
        self._verified.pop(path, None)
        self._lru.pop(path.name, None)
        self._update_gauge()

    def _update_gauge(self) -> None:
        self._metrics.cache_bytes.set(self.stored_bytes)

    async def store(self, artifact: Artifact, data: bytes) -> None:
        """Replaces a (non-blob) artifact's cached copy with ``data`` atomically.

        Raises:
            CacheError: The file cannot be written.
        """

        def write() -> None:
            fd, name = tempfile.mkstemp(dir=self._tmp, suffix=".part")
            tmp = Path(name)
            try:
                with os.fdopen(fd, "wb") as sink:
                    sink.write(data)
                    sink.flush()
                    os.fsync(sink.fileno())
                final = self.path(artifact)
                final.parent.mkdir(parents=True, exist_ok=True)
                tmp.replace(final)
            except BaseException:
                tmp.unlink(missing_ok=True)
                raise

        try:
            await asyncio.to_thread(write)
        except OSError as exc:
            raise CacheError(f"cannot store {artifact.label} in {self._root}: {exc}") from exc

    async def read(self, artifact: Artifact) -> bytes | None:
        """The artifact's cached bytes, or ``None`` when it is not cached."""
        try:
            return await asyncio.to_thread(self.path(artifact).read_bytes)
        except FileNotFoundError:
            return None
        except OSError as exc:
            raise CacheError(f"cannot read {artifact.label} from {self._root}: {exc}") from exc
