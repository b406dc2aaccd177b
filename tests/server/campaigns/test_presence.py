"""Last-seen moments: buffered in memory, written in one transaction, never moved back."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from sqlalchemy import event

from server.campaigns.presence import LastSeenBuffer
from server.clock import as_utc
from server.fleet.registry import get_vehicle
from server.store import Database
from tests.server.campaigns.support import add_vehicle

T0 = datetime(2026, 3, 2, 12, 0, tzinfo=UTC)


def test_mark_keeps_the_newest_moment_to_the_second() -> None:
    buffer = LastSeenBuffer()
    buffer.mark("WSF1", T0 + timedelta(seconds=5, microseconds=999))
    buffer.mark("WSF1", T0)
    assert buffer.take() == {"WSF1": T0 + timedelta(seconds=5)}
    assert len(buffer) == 0


def test_flush_writes_every_vehicle_in_one_transaction(database: Database) -> None:
    vins = [add_vehicle(database, n) for n in range(30)]
    buffer = LastSeenBuffer()
    for n, vin in enumerate(vins):
        buffer.mark(vin, T0 + timedelta(seconds=n % 3))
    commits: list[int] = []
    event.listen(database.engine, "commit", lambda _conn: commits.append(1))
    assert buffer.flush(database) == 30
    assert len(commits) == 1
    assert buffer.flush(database) == 0, "an empty buffer writes nothing"
    assert len(commits) == 1
    assert len(buffer) == 0
    assert as_utc(get_vehicle(database, vins[4]).last_seen or T0) == T0 + timedelta(seconds=1)


def test_flush_never_moves_a_moment_back(database: Database) -> None:
    vin = add_vehicle(database, 1)
    newer, older = LastSeenBuffer(), LastSeenBuffer()
    newer.mark(vin, T0 + timedelta(minutes=5))
    older.mark(vin, T0)
    newer.flush(database)
    older.flush(database)  # e.g. another replica flushing late
    assert as_utc(get_vehicle(database, vin).last_seen or T0) == T0 + timedelta(minutes=5)


def test_a_failed_flush_keeps_the_moments(database: Database) -> None:
    vin = add_vehicle(database, 1)
    buffer = LastSeenBuffer()
    buffer.mark(vin, T0)

    def refuse(*_: object) -> None:
        raise RuntimeError("database gone")

    event.listen(database.engine, "before_cursor_execute", refuse)
    with pytest.raises(RuntimeError):
        buffer.flush(database)
    event.remove(database.engine, "before_cursor_execute", refuse)
    assert buffer.take() == {vin: T0}
