"""Vehicles' last-seen moments, buffered in memory and written in batches.

A check-in where nothing changed must not write to the database. Its only news is that the
vehicle is alive, so the moment goes into :class:`LastSeenBuffer`, and the server flushes
the buffer every few seconds: one ``UPDATE ... WHERE vin IN (...)`` per chunk of vehicles
that share a moment (moments are truncated to whole seconds, so a flush holds a handful of
statements, not one per vehicle). The stored last-seen time is therefore late by at most
the flush interval, and a server killed with SIGKILL loses at most one interval of it.
"""

from __future__ import annotations

import threading
from collections import defaultdict
from datetime import datetime
from typing import Final

from sqlalchemy import update
from sqlmodel import col

from server.fleet.models import Vehicle
from server.store import Database

FLUSH_INTERVAL_SECONDS: Final = 5.0  # seconds between flushes in the server
_CHUNK: Final = 5_000  # VINs per UPDATE statement (SQLite binds at most 32,766)


class LastSeenBuffer:
    """Last-seen moments waiting to be written; safe to use from several threads."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._seen: dict[str, datetime] = {}

    def mark(self, vin: str, moment: datetime) -> None:
        """Notes that ``vin`` checked in at ``moment`` (no I/O)."""
        if moment.microsecond:  # the server's clock gives whole seconds already
            moment = moment.replace(microsecond=0)
        with self._lock:
            previous = self._seen.get(vin)
            if previous is None or moment > previous:
                self._seen[vin] = moment

    def __len__(self) -> int:
        with self._lock:
            return len(self._seen)

    def take(self) -> dict[str, datetime]:
        """Empties the buffer and returns what it held."""
        with self._lock:
            seen, self._seen = self._seen, {}
        return seen

    def flush(self, database: Database) -> int:
        """Writes every buffered moment in one transaction; returns how many vehicles.

        A moment is never moved backwards, so a late flush from another replica cannot
        undo a newer one. On a database error the moments go back into the buffer.
        """
        seen = self.take()
        if not seen:
            return 0
        by_moment: dict[datetime, list[str]] = defaultdict(list)
        for vin, moment in seen.items():
            by_moment[moment].append(vin)
        try:
            with database.session() as session:
                for moment, vins in sorted(by_moment.items()):
                    for start in range(0, len(vins), _CHUNK):
                        session.exec(
                            update(Vehicle)
                            .where(col(Vehicle.vin).in_(vins[start : start + _CHUNK]))
                            .where(
                                (col(Vehicle.last_seen).is_(None))
                                | (col(Vehicle.last_seen) < moment)
                            )
                            .values(last_seen=moment)
                            .execution_options(synchronize_session=False)
                        )
        except Exception:
            for vin, moment in seen.items():
                self.mark(vin, moment)
            raise
        return len(seen)
