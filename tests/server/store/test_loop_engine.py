"""PostgreSQL work on the event loop: statements await there (in a greenlet), every engine
gets the database's listeners, an idle connection is pinged before use, and a cancelled
call leaves nothing half-written."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path

import psycopg
import pytest
from sqlalchemy import text
from sqlalchemy.exc import OperationalError
from sqlalchemy.util.concurrency import in_greenlet

from server.store import Database


@pytest.fixture
async def database(postgres_url: str) -> AsyncIterator[Database]:
    opened = Database.from_url(postgres_url)
    with opened.engine.begin() as connection:
        connection.execute(text("CREATE TABLE loop_probe (n INTEGER)"))
    yield opened
    await opened.close_loop_engine()
    opened.dispose()


def _backend_pid(database: Database) -> int:
    with database.engine.connect() as connection:
        return int(connection.execute(text("SELECT pg_backend_pid()")).scalar_one())


def _terminate(postgres_url: str, pid: int) -> None:
    with psycopg.connect(postgres_url.replace("+psycopg", ""), autocommit=True) as admin:
        admin.execute("SELECT pg_terminate_backend(%s)", (pid,))


def _count(database: Database) -> int:
    with database.engine.connect() as connection:
        return int(connection.execute(text("SELECT count(*) FROM loop_probe")).scalar_one())


async def test_work_awaits_on_the_loop_through_its_own_engine(database: Database) -> None:
    threads_engine = database.engine
    seen: list[tuple[str, bool]] = []
    database.listen("before_cursor_execute", lambda *a: seen.append((a[2], in_greenlet())))

    def work() -> int:
        assert database.engine is not threads_engine
        with database.engine.begin() as connection:
            connection.execute(text("INSERT INTO loop_probe VALUES (1)"))
            return int(connection.execute(text("SELECT count(*) FROM loop_probe")).scalar_one())

    assert database.awaits_on_loop
    assert await database.run_on_loop(work) == 1
    assert database.engine is threads_engine, "outside the work, the threads' engine"
    # Registered before the loop engine existed, the listener saw the loop's statements.
    assert ("INSERT INTO loop_probe VALUES (1)", True) in seen
    late: list[str] = []
    database.listen("before_cursor_execute", lambda *a: late.append(a[2]))
    await database.run_on_loop(lambda: _count(database))
    assert late == ["SELECT count(*) FROM loop_probe"], "a listener added later sees it too"


async def test_works_interleave_on_one_loop(database: Database) -> None:
    finished: list[str] = []

    def slow() -> None:
        with database.engine.connect() as connection:
            connection.execute(text("SELECT pg_sleep(0.5)"))
        finished.append("slow")

    def quick() -> None:
        _count(database)
        finished.append("quick")

    slow_call = asyncio.ensure_future(database.run_on_loop(slow))
    await asyncio.sleep(0.1)  # the slow work is waiting for the server now
    await database.run_on_loop(quick)
    assert finished == ["quick"], "the quick work ran while the slow one awaited"
    await slow_call
    assert finished == ["quick", "slow"]


async def test_a_cancelled_call_writes_nothing_and_its_connection_serves_again(
    database: Database,
) -> None:
    def write_then_wait() -> None:
        with database.engine.begin() as connection:
            connection.execute(text("INSERT INTO loop_probe VALUES (1)"))
            connection.execute(text("SELECT pg_sleep(2)"))

    call = asyncio.ensure_future(database.run_on_loop(write_then_wait))
    await asyncio.sleep(0.3)
    call.cancel()
    with pytest.raises(asyncio.CancelledError):
        await call
    assert _count(database) == 0, "the cancelled transaction did not commit"
    assert await database.run_on_loop(lambda: _count(database)) == 0


async def test_an_idle_connection_is_pinged_and_replaced_when_the_server_dropped_it(
    database: Database, postgres_url: str
) -> None:
    database.idle_ping_seconds = 0.0  # every checkout pings
    pid = await database.run_on_loop(lambda: _backend_pid(database))
    _terminate(postgres_url, pid)
    # The pooled connection is dead: the ping finds it, and a new one answers.
    assert await database.run_on_loop(lambda: _backend_pid(database)) != pid


async def test_a_connection_in_steady_use_is_not_pinged(
    database: Database, postgres_url: str
) -> None:
    database.idle_ping_seconds = 3600.0
    statements: list[str] = []
    database.listen("before_cursor_execute", lambda *a: statements.append(a[2]))
    pid = await database.run_on_loop(lambda: _backend_pid(database))
    await database.run_on_loop(lambda: _backend_pid(database))
    assert statements == ["SELECT pg_backend_pid()"] * 2, "no ping between the two"
    # Without a ping, a connection the server dropped fails its next statement once
    # (and the pool then replaces it).
    _terminate(postgres_url, pid)
    with pytest.raises(OperationalError):
        await database.run_on_loop(lambda: _backend_pid(database))
    assert await database.run_on_loop(lambda: _backend_pid(database)) != pid


async def test_sqlite_work_does_not_await(tmp_path: Path) -> None:
    database = Database.from_url(f"sqlite:///{tmp_path / 'staffel.db'}")
    assert not database.awaits_on_loop
    with pytest.raises(ValueError, match="cannot await on the loop"):
        await database.run_on_loop(lambda: None)
    database.dispose()
