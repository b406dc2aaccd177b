"""Who may get an assignment now: maintenance windows and pacing, as pure policies."""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import UTC, datetime, time, timedelta
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from server.errors import InvalidArgumentError
from server.validation import check_name

_HHMM = re.compile(r"([01]\d|2[0-3]):([0-5]\d)")


def _parse_time(text: str, what: str) -> time:
    match = _HHMM.fullmatch(text)
    if match is None:
        raise InvalidArgumentError(f"{what} {text!r} is not a time of day HH:MM (00:00 to 23:59)")
    return time(int(match.group(1)), int(match.group(2)))


@dataclass(frozen=True)
class MaintenanceWindow:
    """A daily window in a site's time zone; ``end`` before ``start`` runs over midnight."""

    site: str
    timezone: str
    start: str  # HH:MM
    end: str  # HH:MM

    def validate(self) -> None:
        """Raises InvalidArgumentError unless site, zone and times are valid."""
        check_name(self.site, "site")
        try:
            ZoneInfo(self.timezone)
        except (ZoneInfoNotFoundError, ValueError):
            raise InvalidArgumentError(
                f"time zone {self.timezone!r} is not known: use an IANA name like Europe/Berlin"
            ) from None
        if _parse_time(self.start, "window start") == _parse_time(self.end, "window end"):
            raise InvalidArgumentError("a maintenance window needs different start and end")

    def describe(self) -> str:
        """e.g. ``22:00-05:00 Europe/Berlin``."""
        return f"{self.start}-{self.end} {self.timezone}"

    def occurrence(self, moment: datetime) -> tuple[datetime, datetime]:
        """The window that contains ``moment``, or else the next one (both ends in UTC)."""
        zone = ZoneInfo(self.timezone)
        start = _parse_time(self.start, "window start")
        end = _parse_time(self.end, "window end")
        local = moment.astimezone(zone)
        for day_offset in (-1, 0, 1):
            day = local.date() + timedelta(days=day_offset)
            opens = datetime.combine(day, start, zone)
            closes = datetime.combine(day + timedelta(days=1 if end <= start else 0), end, zone)
            if moment < closes.astimezone(UTC):
                return opens.astimezone(UTC), closes.astimezone(UTC)
        raise AssertionError("unreachable: tomorrow's window always closes after now")

    def contains(self, moment: datetime) -> bool:
        """True when ``moment`` lies inside a window."""
        opens, closes = self.occurrence(moment)
        return opens <= moment < closes


@dataclass(frozen=True)
class Pacing:
    """At most ``max_per_minute`` new assignments in any sliding minute (0: no limit)."""

    max_per_minute: int = 0

    def validate(self) -> None:
        """Raises InvalidArgumentError unless the rate is 0 to 1000000."""
        if not 0 <= self.max_per_minute <= 1_000_000:
            raise InvalidArgumentError("max assignments per minute must be 0 to 1000000")

    def budget(self, released_last_minute: int) -> int | None:
        """How many more may be released now; None for no limit."""
        if self.max_per_minute == 0:
            return None
        return max(0, self.max_per_minute - released_last_minute)
