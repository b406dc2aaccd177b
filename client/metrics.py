"""The client's metrics as a node-exporter textfile (``--metrics-file DIR/staffel.prom``).

node-exporter's textfile collector reads every ``*.prom`` file of its directory at each
scrape; the file is replaced atomically after every cycle, so a scrape never sees half of
it. Counters live in the daemon's memory and restart at zero with it, which Prometheus
reads as a counter reset.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from client.atomicfile import write_atomically


def _escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


@dataclass
class ClientMetrics:
    """What the vehicle's agent reports about its update cycles.

    Attributes:
        path: The textfile to write (its directory must exist).
        vin: The vehicle, as a label on every series.
        clock: Seconds since the epoch (a seam for tests).
    """

    path: Path
    vin: str
    clock: Callable[[], float] = time.time
    cycles: dict[str, int] = field(default_factory=lambda: {"ok": 0, "failed": 0})
    consecutive_failures: int = 0
    last_cycle: float = 0.0
    last_success: float = 0.0
    next_poll_seconds: float = 0.0
    undelivered: bool = False

    def record_cycle(self, *, ok: bool, delivered: bool, next_poll_seconds: float) -> None:
        """Counts one finished cycle and rewrites the textfile.

        Args:
            ok: The cycle completed and every event was delivered.
            delivered: No event is left in the vehicle's outbox.
            next_poll_seconds: When the next cycle starts, in seconds from now.

        Raises:
            OSError: The textfile cannot be written.
        """
        now = self.clock()
        self.cycles["ok" if ok else "failed"] += 1
        self.consecutive_failures = 0 if ok else self.consecutive_failures + 1
        self.last_cycle = now
        if ok:
            self.last_success = now
        self.next_poll_seconds = next_poll_seconds
        self.undelivered = not delivered
        write_atomically(self.path, self.render().encode())

    def render(self) -> str:
        """The metrics in the Prometheus text exposition format."""
        vin = f'vin="{_escape(self.vin)}"'
        lines: list[str] = []

        def family(name: str, kind: str, text: str, samples: list[tuple[str, float]]) -> None:
            lines.extend((f"# HELP {name} {text}", f"# TYPE {name} {kind}"))
            lines.extend(f"{name}{{{labels}}} {value:g}" for labels, value in samples)

        family(
            "staffel_client_cycles_total",
            "counter",
            "Update cycles since the agent started, by result (ok, failed).",
            [(f'{vin},result="{r}"', n) for r, n in sorted(self.cycles.items())],
        )
        family(
            "staffel_client_consecutive_failures",
            "gauge",
            "Cycles in a row that did not end ok.",
            [(vin, self.consecutive_failures)],
        )
        family(
            "staffel_client_last_cycle_timestamp_seconds",
            "gauge",
            "When the last cycle ended (seconds since the epoch).",
            [(vin, self.last_cycle)],
        )
        family(
            "staffel_client_last_success_timestamp_seconds",
            "gauge",
            "When the last cycle ended ok (seconds since the epoch; 0: never).",
            [(vin, self.last_success)],
        )
        family(
            "staffel_client_next_poll_seconds",
            "gauge",
            "Seconds from the last cycle's end to the next check-in.",
            [(vin, self.next_poll_seconds)],
        )
        family(
            "staffel_client_events_undelivered",
            "gauge",
            "1 when events wait in the vehicle's outbox for the server or relay, else 0.",
            [(vin, float(self.undelivered))],
        )
        return "\n".join(lines) + "\n"
