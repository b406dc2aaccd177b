"""A campaign's plan: waves, gate, pacing, maintenance windows, rollback policy."""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any

from server.campaigns.eligibility import MaintenanceWindow, Pacing
from server.campaigns.gates import Gate
from server.errors import InvalidArgumentError

MAX_WAVES = 20
MAX_WINDOWS = 1000


@dataclass(frozen=True)
class WaveSpec:
    """How far the rollout reaches once the wave opens: a share or a count (cumulative)."""

    percent: float | None = None
    count: int | None = None

    @classmethod
    def parse(cls, text: str) -> WaveSpec:
        """``10%``, ``500`` or ``all``."""
        text = text.strip()
        try:
            if text == "all":
                return cls(percent=100.0)
            if text.endswith("%"):
                return cls(percent=float(text[:-1]))
            return cls(count=int(text))
        except ValueError:
            raise InvalidArgumentError(
                f"wave {text!r} is not valid: use a share like 10% or a count like 500"
            ) from None

    def label(self) -> str:
        """``10%`` or ``500``."""
        return f"{self.percent:g}%" if self.percent is not None else str(self.count)

    def reach(self, selected: int) -> int:
        """How many of ``selected`` vehicles the rollout reaches with this wave."""
        if self.percent is not None:
            return min(selected, math.ceil(selected * self.percent / 100.0))
        return min(selected, self.count or 0)

    def validate(self) -> None:
        """Raises InvalidArgumentError unless exactly one of share and count is valid."""
        if (self.percent is None) == (self.count is None):
            raise InvalidArgumentError("a wave is a share or a count, not both")
        if self.percent is not None and not 0.0 < self.percent <= 100.0:
            raise InvalidArgumentError("a wave's share must be above 0 and at most 100 percent")
        if self.count is not None and self.count < 1:
            raise InvalidArgumentError("a wave's count must be at least 1")


@dataclass(frozen=True)
class CampaignPlan:
    """Everything about how a campaign rolls out, stored as JSON with the campaign."""

    waves: tuple[WaveSpec, ...] = (WaveSpec(percent=100.0),)
    gate: Gate = field(default_factory=Gate)
    pacing: Pacing = field(default_factory=Pacing)
    windows: tuple[MaintenanceWindow, ...] = ()
    rollback_on_failure: bool = False

    def validate(self) -> None:
        """Raises InvalidArgumentError naming the first problem."""
        if not 1 <= len(self.waves) <= MAX_WAVES:
            raise InvalidArgumentError(f"a campaign has 1 to {MAX_WAVES} waves")
        for wave in self.waves:
            wave.validate()
        if self.waves[-1].percent != 100.0:
            raise InvalidArgumentError("the last wave must reach every vehicle: end with 100%")
        percents = [w.percent for w in self.waves if w.percent is not None]
        counts = [w.count for w in self.waves if w.count is not None]
        if percents != sorted(percents) or counts != sorted(counts):
            raise InvalidArgumentError("waves are cumulative: each reaches at least the last")
        self.gate.validate()
        self.pacing.validate()
        if len(self.windows) > MAX_WINDOWS:
            raise InvalidArgumentError(f"a campaign has at most {MAX_WINDOWS} windows")
        for window in self.windows:
            window.validate()
        sites = [w.site for w in self.windows]
        if len(set(sites)) != len(sites):
            raise InvalidArgumentError("one maintenance window per site")

    def window_for(self, site: str) -> MaintenanceWindow | None:
        """The maintenance window of a site, if the campaign has one."""
        return next((w for w in self.windows if w.site == site), None)

    def to_json(self) -> str:
        """The stored form."""
        gate = self.gate
        return json.dumps(
            {
                "waves": [{"percent": w.percent, "count": w.count} for w in self.waves],
                "gate": {
                    "success_percent": gate.success_percent,
                    "max_failure_percent": gate.max_failure_percent,
                    "max_failure_count": gate.max_failure_count,
                    "min_reports": gate.min_reports,
                    "soak_seconds": gate.soak.total_seconds(),
                },
                "max_per_minute": self.pacing.max_per_minute,
                "windows": [
                    {"site": w.site, "timezone": w.timezone, "start": w.start, "end": w.end}
                    for w in self.windows
                ],
                "rollback_on_failure": self.rollback_on_failure,
            },
            sort_keys=True,
        )

    @classmethod
    def from_json(cls, text: str) -> CampaignPlan:
        """The plan stored by :meth:`to_json`."""
        data: dict[str, Any] = json.loads(text)
        gate: dict[str, Any] = data["gate"]
        return cls(
            waves=tuple(WaveSpec(w["percent"], w["count"]) for w in data["waves"]),
            gate=Gate(
                success_percent=gate["success_percent"],
                max_failure_percent=gate["max_failure_percent"],
                max_failure_count=gate["max_failure_count"],
                min_reports=gate["min_reports"],
                soak=timedelta(seconds=gate["soak_seconds"]),
            ),
            pacing=Pacing(data["max_per_minute"]),
            windows=tuple(MaintenanceWindow(**w) for w in data["windows"]),
            rollback_on_failure=data["rollback_on_failure"],
        )


def wave_labels(waves: Sequence[WaveSpec]) -> list[str]:
    """``["1%", "10%", "100%"]``."""
    return [w.label() for w in waves]
