"""SQLite checkpoints in the background: commits leave the write-ahead log alone, and
Database.checkpoint copies it into the database file."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import text

from server.store import Database

PAGES = 1_500  # more than SQLite's automatic checkpoint threshold (1,000 pages)


@pytest.fixture
def sqlite_database(tmp_path: Path) -> Iterator[Database]:
    """A SQLite store with a table for page-sized rows."""
    database = Database.from_url(f"sqlite:///{tmp_path / 'staffel.db'}")
    with database.engine.begin() as connection:
        connection.execute(text("CREATE TABLE page (id INTEGER PRIMARY KEY, body BLOB)"))
    yield database
    database.dispose()


def _fill(database: Database) -> None:
    """About PAGES pages, in commits of 100 rows of 4 KB."""
    for start in range(0, PAGES, 100):
        with database.engine.begin() as connection:
            connection.execute(
                text("INSERT INTO page (id, body) VALUES (:id, zeroblob(4000))"),
                [{"id": start + i} for i in range(100)],
            )


def test_commits_leave_the_log_to_the_background_checkpoint(sqlite_database: Database) -> None:
    sqlite_database.checkpoint_in_background()
    _fill(sqlite_database)
    frames, copied = sqlite_database.checkpoint()
    assert frames >= PAGES, "no commit restarted the log with a checkpoint of its own"
    assert copied == frames, "the checkpoint copied every frame"
    with sqlite_database.engine.connect() as connection:
        count = connection.execute(text("SELECT count(*) FROM page")).scalar_one()
    assert count == PAGES


def test_by_default_commits_checkpoint_as_sqlite_does(sqlite_database: Database) -> None:
    _fill(sqlite_database)
    frames, _ = sqlite_database.checkpoint()
    assert frames < PAGES, "an automatic checkpoint restarted the log along the way"


def test_checkpoint_is_a_no_op_on_postgresql(postgres_url: str) -> None:
    database = Database.from_url(postgres_url)
    try:
        database.checkpoint_in_background()
        assert database.checkpoint() == (0, 0)
        with database.engine.connect() as connection:
            assert connection.execute(text("SELECT 1")).scalar_one() == 1
    finally:
        database.dispose()
