"""Fixtures of the repository tests: real keys, real stores, a controllable clock."""

from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from aiohttp import web

from keys.keyset import KeySet, init_keyset
from server.repository.blobs import BlobStore
from server.repository.director import Director
from server.repository.http import add_routes
from server.repository.image_repo import ImageRepository
from server.store import Database


class Clock:
    """A clock that stands still until a test moves it; starts at the real now."""

    def __init__(self) -> None:
        self.now = datetime.now(UTC)

    def __call__(self) -> datetime:
        return self.now

    def advance(self, delta: timedelta) -> None:
        self.now += delta


# 16 bins keep the tests quick; the server's default (1,024) is measured by bench/tuf_scale.py.
BIN_BITS = 4


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def keyset(tmp_path: Path) -> KeySet:
    return init_keyset(tmp_path / "keys")


@pytest.fixture
def image_repo(database: Database, keyset: KeySet, clock: Clock) -> ImageRepository:
    repo = ImageRepository(database, keyset, clock=clock, bin_bits=BIN_BITS)
    repo.initialize()
    return repo


@pytest.fixture
def director(database: Database, keyset: KeySet, clock: Clock) -> Director:
    director = Director(database, keyset, clock=clock)
    director.initialize()
    return director


@pytest.fixture
def blobs(tmp_path: Path) -> BlobStore:
    return BlobStore(tmp_path / "blobs")


@pytest.fixture
async def base_url(
    image_repo: ImageRepository, director: Director, blobs: BlobStore
) -> AsyncIterator[str]:
    """The repositories served over real HTTP on a loopback port."""
    app = web.Application()
    add_routes(app, image_repo=image_repo, director=director, blobs=blobs)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        await runner.cleanup()
