"""The server's notion of now, injectable so tests control soak times and windows."""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime

# Returns the current moment, UTC-aware.
Clock = Callable[[], datetime]


def system_clock() -> datetime:
    """The wall clock, UTC, to the second."""
    return datetime.now(UTC).replace(microsecond=0)


def as_utc(moment: datetime) -> datetime:
    """``moment`` as UTC-aware; naive values (as SQLite returns them) are taken as UTC."""
    return moment.replace(tzinfo=UTC) if moment.tzinfo is None else moment.astimezone(UTC)
