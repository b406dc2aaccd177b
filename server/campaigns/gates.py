"""Gate arithmetic of one wave: pure, deterministic, no I/O.

Rates are over the wave's *active* vehicles: those that picked up their assignment. A
vehicle that never checked in since its wave opened is offline and counts in no rate.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta

from server.campaigns.models import AssignmentState
from server.errors import InvalidArgumentError


@dataclass(frozen=True)
class WaveCounts:
    """How many of a wave's assignments are in each state."""

    queued: int = 0
    pending: int = 0
    in_progress: int = 0
    committed: int = 0
    failed: int = 0
    rolled_back: int = 0
    canceled: int = 0

    @classmethod
    def of(cls, by_state: Mapping[AssignmentState, int]) -> WaveCounts:
        """Counts from a mapping of state to number."""
        return cls(**{state.value: n for state, n in by_state.items()})

    @property
    def total(self) -> int:
        """Every assignment of the wave."""
        return (
            self.queued
            + self.pending
            + self.in_progress
            + self.committed
            + self.failed
            + self.rolled_back
            + self.canceled
        )

    @property
    def failures(self) -> int:
        """Vehicles that failed or rolled back."""
        return self.failed + self.rolled_back

    @property
    def reports(self) -> int:
        """Vehicles with an outcome."""
        return self.committed + self.failures

    @property
    def active(self) -> int:
        """Vehicles that picked up the assignment (offline ones are left out)."""
        return self.in_progress + self.reports

    @property
    def success_percent(self) -> float:
        """Committed-and-healthy share of the active vehicles."""
        return 100.0 * self.committed / self.active if self.active else 0.0

    @property
    def failure_percent(self) -> float:
        """Failed share of the reports."""
        return 100.0 * self.failures / self.reports if self.reports else 0.0


@dataclass(frozen=True)
class Gate:
    """When a wave counts as good, and when as bad."""

    success_percent: float = 90.0
    max_failure_percent: float | None = 10.0
    max_failure_count: int | None = None
    min_reports: int = 1
    soak: timedelta = timedelta(0)

    def validate(self) -> None:
        """Raises InvalidArgumentError unless every bound is in range."""
        if not 0.0 <= self.success_percent <= 100.0:
            raise InvalidArgumentError("the success gate must be 0 to 100 percent")
        if self.max_failure_percent is not None and not 0.0 <= self.max_failure_percent <= 100.0:
            raise InvalidArgumentError("the failure gate must be 0 to 100 percent")
        if self.max_failure_count is not None and self.max_failure_count < 0:
            raise InvalidArgumentError("the failure count gate must not be negative")
        if not 0 <= self.min_reports <= 1_000_000:
            raise InvalidArgumentError("minimum reports must be 0 to 1000000")
        if not timedelta(0) <= self.soak <= timedelta(days=30):
            raise InvalidArgumentError("soak time must be 0 seconds to 30 days")

    def failure_tripped(self, counts: WaveCounts) -> str | None:
        """Why the failure gate trips on these counts, or None while it holds."""
        if self.max_failure_count is not None and counts.failures > self.max_failure_count:
            return f"{counts.failures} vehicles failed, more than {self.max_failure_count} allowed"
        if (
            self.max_failure_percent is not None
            and counts.reports >= max(self.min_reports, 1)
            and counts.failure_percent > self.max_failure_percent
        ):
            return (
                f"{counts.failure_percent:.1f}% of {counts.reports} reports are failures, "
                f"more than {self.max_failure_percent:g}% allowed"
            )
        return None

    def success_holds(self, counts: WaveCounts) -> bool:
        """True when the wave is fully released, reported enough, and succeeds enough."""
        return (
            counts.queued == 0
            and counts.reports >= self.min_reports
            and counts.active > 0
            and counts.success_percent >= self.success_percent
        )

    def soaked(self, gate_met_at: datetime | None, now: datetime) -> bool:
        """True once the success gate has held for the soak time."""
        return gate_met_at is not None and now - gate_met_at >= self.soak
