"""The server's notion of now, injectable so tests control soak times and windows."""

from __future__ import annotations

import time
from collections.abc import Callable
from datetime import UTC, datetime

# Returns the current moment, UTC-aware.
Clock = Callable[[], datetime]

# The last second system_clock() answered, and its moment: every check-in asks the clock
# (its presence), thousands of times within one second. Replaced whole, so threads may race.
_last_second: tuple[int, datetime] = (-1, datetime.fromtimestamp(0, UTC))


def system_clock() -> datetime:
    """The wall clock, UTC, to the second."""
    global _last_second  # noqa: PLW0603 - a one-entry cache of the current second
    second = int(time.time())
    last = _last_second
    if last[0] != second:
        last = (second, datetime.fromtimestamp(second, UTC))
        _last_second = last
    return last[1]


def as_utc(moment: datetime) -> datetime:
    """``moment`` as UTC-aware; naive values (as SQLite returns them) are taken as UTC."""
    return moment.replace(tzinfo=UTC) if moment.tzinfo is None else moment.astimezone(UTC)
