"""The relay's durable store (SQLite): vehicle events waiting for the uplink, last check-ins.

Events are written (fsynced) before the vehicle gets its acknowledgement, and leave the queue
only once the upstream acknowledged them, in the order they arrived; each event id is queued
once (forwarded ids are remembered for ``REMEMBER_SECONDS`` to spot a vehicle's resend).
The upstream ignores an event id it has seen, so a resend after a lost acknowledgement
is harmless: every event reaches the server exactly once, in order per vehicle.

The store also keeps each vehicle's latest ``CheckIn`` answer, to answer while the uplink is
down (the Director metadata in it is signed centrally and carries its own expiry).
"""

from __future__ import annotations

import asyncio
import sqlite3
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

from staffel.v1 import vehicle_pb2

from server.relay.errors import CacheError

T = TypeVar("T")
REMEMBER_SECONDS = 7 * 86_400  # forwarded event ids are kept this long to spot resends

_SCHEMA = """
CREATE TABLE IF NOT EXISTS queued_event (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    event_id TEXT NOT NULL UNIQUE,
    vin TEXT NOT NULL,
    body BLOB NOT NULL,
    forwarded_at REAL
);
CREATE INDEX IF NOT EXISTS queued_event_waiting ON queued_event (forwarded_at, seq);
CREATE TABLE IF NOT EXISTS rejected_event (
    seq INTEGER PRIMARY KEY,
    event_id TEXT NOT NULL,
    vin TEXT NOT NULL,
    body BLOB NOT NULL,
    reason TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS last_check_in (
    vin TEXT PRIMARY KEY,
    answer BLOB NOT NULL
);
"""


@dataclass(frozen=True)
class QueuedEvent:
    """One event waiting for the uplink."""

    seq: int
    vin: str
    event: vehicle_pb2.VehicleEvent


class Outbox:
    """The SQLite file of one relay; every method runs its statement in a worker thread."""

    def __init__(self, connection: sqlite3.Connection, path: Path) -> None:
        """Wraps an open connection; prefer ``Outbox.open``."""
        self._db = connection
        self._path = path
        self._lock = asyncio.Lock()

    @classmethod
    async def open(cls, path: Path) -> Outbox:
        """Opens (or creates) the store at ``path`` in WAL mode with full fsync.

        Raises:
            CacheError: The file cannot be opened or created.
        """

        def connect() -> sqlite3.Connection:
            path.parent.mkdir(parents=True, exist_ok=True)
            db = sqlite3.connect(path, check_same_thread=False, isolation_level=None)
            db.execute("PRAGMA journal_mode=WAL")
            db.execute("PRAGMA synchronous=FULL")
            db.executescript(_SCHEMA)
            return db

        try:
            return cls(await asyncio.to_thread(connect), path)
        except sqlite3.Error as exc:
            raise CacheError(f"cannot open the relay's queue {path}: {exc}") from exc

    async def close(self) -> None:
        """Closes the database."""
        async with self._lock:
            await asyncio.to_thread(self._db.close)

    async def _run(self, work: Callable[[sqlite3.Connection], T]) -> T:
        async with self._lock:
            done = asyncio.ensure_future(asyncio.to_thread(work, self._db))
            try:
                return await asyncio.shield(done)
            except asyncio.CancelledError:
                # The thread still uses the connection: hold the lock until it is finished,
                # so that close() never closes the connection under it.
                await asyncio.wait([done])
                raise
            except sqlite3.Error as exc:
                raise CacheError(f"the relay's queue {self._path} failed: {exc}") from exc

    async def enqueue(self, vin: str, events: Sequence[vehicle_pb2.VehicleEvent]) -> int:
        """Queues a vehicle's events durably; returns how many were new (not seen before)."""
        rows = [(e.event_id, vin, e.SerializeToString()) for e in events]

        def insert(db: sqlite3.Connection) -> int:
            before = db.total_changes
            with db:
                db.executemany(
                    "INSERT OR IGNORE INTO queued_event (event_id, vin, body) VALUES (?, ?, ?)",
                    rows,
                )
            return db.total_changes - before

        return await self._run(insert)

    async def oldest(self, limit: int) -> list[QueuedEvent]:
        """Up to ``limit`` queued events, oldest first."""

        def select(db: sqlite3.Connection) -> list[QueuedEvent]:
            found = db.execute(
                "SELECT seq, vin, body FROM queued_event WHERE forwarded_at IS NULL "
                "ORDER BY seq LIMIT ?",
                (limit,),
            ).fetchall()
            return [
                QueuedEvent(seq, vin, vehicle_pb2.VehicleEvent.FromString(body))
                for seq, vin, body in found
            ]

        return await self._run(select)

    async def acknowledge(self, seqs: Sequence[int]) -> None:
        """Marks events the upstream acknowledged; their ids are remembered for a while."""
        now = time.time()

        def mark(db: sqlite3.Connection) -> None:
            with db:
                db.executemany(
                    "UPDATE queued_event SET forwarded_at = ? WHERE seq = ?",
                    [(now, s) for s in seqs],
                )
                db.execute(
                    "DELETE FROM queued_event WHERE forwarded_at < ?", (now - REMEMBER_SECONDS,)
                )

        await self._run(mark)

    async def set_aside(self, event: QueuedEvent, reason: str) -> None:
        """Moves an event the upstream refused for good out of the queue, keeping it."""

        def move(db: sqlite3.Connection) -> None:
            with db:
                db.execute(
                    "INSERT OR REPLACE INTO rejected_event VALUES (?, ?, ?, ?, ?)",
                    (
                        event.seq,
                        event.event.event_id,
                        event.vin,
                        event.event.SerializeToString(),
                        reason,
                    ),
                )
                db.execute("DELETE FROM queued_event WHERE seq = ?", (event.seq,))

        await self._run(move)

    async def depth(self) -> int:
        """How many events wait for the uplink."""

        def count(db: sqlite3.Connection) -> int:
            row = db.execute(
                "SELECT count(*) FROM queued_event WHERE forwarded_at IS NULL"
            ).fetchone()
            return int(row[0])

        return await self._run(count)

    async def remember_check_in(self, vin: str, answer: vehicle_pb2.CheckInResponse) -> None:
        """Keeps the vehicle's latest upstream answer."""
        body = answer.SerializeToString()

        def upsert(db: sqlite3.Connection) -> None:
            with db:
                db.execute(
                    "INSERT INTO last_check_in (vin, answer) VALUES (?, ?) "
                    "ON CONFLICT (vin) DO UPDATE SET answer = excluded.answer",
                    (vin, body),
                )

        await self._run(upsert)

    async def last_check_in(self, vin: str) -> vehicle_pb2.CheckInResponse | None:
        """The vehicle's latest upstream answer, if the relay has one."""

        def select(db: sqlite3.Connection) -> bytes | None:
            row = db.execute("SELECT answer FROM last_check_in WHERE vin = ?", (vin,)).fetchone()
            return None if row is None else bytes(row[0])

        body = await self._run(select)
        return None if body is None else vehicle_pb2.CheckInResponse.FromString(body)
