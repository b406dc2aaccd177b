"""The seam between the agent and where its check-ins and event reports go."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol

from client.journal.events import VehicleEvent
from client.link import CheckInAnswer, EcuReport


class Uplink(Protocol):
    """Where check-ins and event reports go: the relay or server, or an offline source."""

    def check_in(
        self,
        vin: str,
        ecus: Sequence[EcuReport],
        *,
        manifest: bytes = b"",
        heartbeat: bytes = b"",
    ) -> CheckInAnswer:
        """Report the installed images (and the signed version manifest, or a heartbeat
        instead); learn the offer."""
        ...

    def report_events(self, vin: str, events: Sequence[VehicleEvent]) -> None:
        """Deliver ``events``; returns only when every one was acknowledged."""
        ...

    def close(self) -> None:
        """Release the connection."""
        ...
