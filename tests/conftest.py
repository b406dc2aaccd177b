"""Shared fixtures: a real store on SQLite and on the machine's PostgreSQL server."""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest

from server.store import Database

# The PostgreSQL server the tests use: trust auth on loopback, database `test`.
POSTGRES_ADMIN_URL = os.environ.get(
    "STAFFEL_TEST_POSTGRES", "postgresql://postgres@127.0.0.1:5432/test"
)


@pytest.fixture
def postgres_url() -> Iterator[str]:
    """A fresh PostgreSQL database for one test, dropped at its end."""
    name = f"staffel_test_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(POSTGRES_ADMIN_URL, autocommit=True) as admin:
        admin.execute(f'CREATE DATABASE "{name}"')
    base = POSTGRES_ADMIN_URL.rsplit("/", 1)[0]
    yield f"{base.replace('postgresql://', 'postgresql+psycopg://', 1)}/{name}"
    with psycopg.connect(POSTGRES_ADMIN_URL, autocommit=True) as admin:
        admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.fixture(params=["sqlite", "postgresql"])
def database_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """A database URL on each backend, empty for every test."""
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'staffel.db'}"
        return
    url: str = request.getfixturevalue("postgres_url")
    yield url


@pytest.fixture
def database(database_url: str) -> Iterator[Database]:
    """An opened store with every table created, on SQLite and on PostgreSQL."""
    db = Database.from_url(database_url)
    yield db
    db.dispose()
