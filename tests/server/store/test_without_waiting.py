"""Database.without_waiting: statements that would wait for SQLite's write lock refuse at
once, and the connection waits again as usual once the block is left."""

from __future__ import annotations

import sqlite3
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import text
from sqlalchemy.exc import OperationalError

from server.store import Database
from server.store.db import LockBusyError


@pytest.fixture
def sqlite_database(tmp_path: Path) -> Iterator[Database]:
    """A SQLite store with one small table of our own."""
    database = Database.from_url(f"sqlite:///{tmp_path / 'staffel.db'}")
    with database.engine.begin() as connection:
        connection.execute(text("CREATE TABLE counter (id INTEGER PRIMARY KEY, n INTEGER)"))
        connection.execute(text("INSERT INTO counter VALUES (1, 0)"))
    yield database
    database.dispose()


@pytest.fixture
def write_lock(tmp_path: Path, sqlite_database: Database) -> Iterator[sqlite3.Connection]:
    """Another connection holding the database's write lock until it commits."""
    holder = sqlite3.connect(tmp_path / "staffel.db", isolation_level=None, check_same_thread=False)
    holder.execute("BEGIN IMMEDIATE")
    yield holder
    if holder.in_transaction:
        holder.execute("COMMIT")
    holder.close()


def _bump(database: Database) -> None:
    with database.engine.begin() as connection:
        connection.execute(text("UPDATE counter SET n = n + 1 WHERE id = 1"))


def _count(database: Database) -> int:
    with database.engine.connect() as connection:
        return int(connection.execute(text("SELECT n FROM counter WHERE id = 1")).scalar_one())


def test_a_write_refuses_at_once_while_another_connection_holds_the_lock(
    sqlite_database: Database, write_lock: sqlite3.Connection
) -> None:
    with pytest.raises(LockBusyError), sqlite_database.without_waiting():
        _bump(sqlite_database)
    assert _count(sqlite_database) == 0, "the refused write left nothing behind"


def test_reads_go_on_while_the_lock_is_held(
    sqlite_database: Database, write_lock: sqlite3.Connection
) -> None:
    with sqlite_database.without_waiting():
        assert _count(sqlite_database) == 0


def test_outside_the_block_the_same_connection_waits_for_the_lock_again(
    sqlite_database: Database, write_lock: sqlite3.Connection
) -> None:
    with pytest.raises(LockBusyError), sqlite_database.without_waiting():
        _bump(sqlite_database)
    # The pool hands back the connection that refused; released shortly, it must wait.
    release = threading.Timer(0.3, lambda: write_lock.execute("COMMIT"))
    release.start()
    try:
        _bump(sqlite_database)
    finally:
        release.join()
    assert _count(sqlite_database) == 1


def test_other_errors_pass_through_unchanged(sqlite_database: Database) -> None:
    with (
        pytest.raises(OperationalError) as raised,
        sqlite_database.without_waiting(),
        sqlite_database.engine.connect() as connection,
    ):
        connection.execute(text("SELECT nothing FROM no_such_table"))
    assert not isinstance(raised.value, LockBusyError)
    assert "no_such_table" in str(raised.value)


def test_only_sqlite_is_run_without_io_waits(database: Database) -> None:
    local = database.engine.dialect.name == "sqlite"
    assert database.answers_without_io_wait is local
    with database.without_waiting(), database.engine.begin() as connection:
        # A plain write works in the block on either database when no one holds a lock.
        assert connection.execute(text("SELECT 1")).scalar_one() == 1
