"""The events a vehicle reports about an update, as the client queues them."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from enum import StrEnum
from typing import Any

from client.errors import DownloadError, InstallError, UpdateError, VerificationError

MAX_DETAIL_CHARS = 1024


class EventKind(StrEnum):
    """One step of an update (``staffel.v1.EventKind`` without its prefix)."""

    CHECKED_IN = "CHECKED_IN"
    DOWNLOADED = "DOWNLOADED"
    VERIFIED = "VERIFIED"
    INSTALLED = "INSTALLED"
    REBOOTED = "REBOOTED"
    HEALTHY = "HEALTHY"
    COMMITTED = "COMMITTED"
    HEALTH_FAILED = "HEALTH_FAILED"
    ROLLED_BACK = "ROLLED_BACK"
    FAILED = "FAILED"


class FailureType(StrEnum):
    """Where an update failed (``staffel.v1.FailureType`` without its prefix)."""

    UNSPECIFIED = "UNSPECIFIED"
    DOWNLOAD = "DOWNLOAD"
    VERIFICATION = "VERIFICATION"
    INSTALL = "INSTALL"
    HEALTH = "HEALTH"
    ROLLED_BACK = "ROLLED_BACK"
    TIMED_OUT = "TIMED_OUT"


_FAILURE_TYPES: tuple[tuple[type[UpdateError], FailureType], ...] = (
    (DownloadError, FailureType.DOWNLOAD),
    (VerificationError, FailureType.VERIFICATION),
    (InstallError, FailureType.INSTALL),
)


def failure_type_of(error: UpdateError) -> FailureType:
    """Return the reported failure type of an update error."""
    for error_type, failure_type in _FAILURE_TYPES:
        if isinstance(error, error_type):
            return failure_type
    return FailureType.UNSPECIFIED


@dataclass(frozen=True)
class VehicleEvent:
    """One event, queued on disk until the server acknowledged it.

    Attributes:
        event_id: A UUID made by the vehicle; the server ignores an id it has seen.
        assignment_id: The assignment the event belongs to.
        kind: The step that happened.
        occurred_at: When it happened (UTC).
        failure_type: Where the update failed (FAILED, HEALTH_FAILED, ROLLED_BACK).
        detail: Human-readable detail, at most 1024 characters.
        slot: The slot concerned ("A" or "B"), empty where it does not apply.
    """

    event_id: str
    assignment_id: str
    kind: EventKind
    occurred_at: datetime
    failure_type: FailureType = FailureType.UNSPECIFIED
    detail: str = ""
    slot: str = ""

    def __post_init__(self) -> None:
        """Cut the detail to the contract's 1024 characters."""
        if len(self.detail) > MAX_DETAIL_CHARS:
            object.__setattr__(self, "detail", self.detail[: MAX_DETAIL_CHARS - 1] + "…")

    def to_json(self) -> dict[str, Any]:
        """Return the event as a JSON-ready dict."""
        return {
            "event_id": self.event_id,
            "assignment_id": self.assignment_id,
            "kind": self.kind.value,
            "failure_type": self.failure_type.value,
            "detail": self.detail,
            "slot": self.slot,
            "occurred_at": self.occurred_at.isoformat(),
        }

    @classmethod
    def from_json(cls, data: Any) -> VehicleEvent:
        """Read an event back from :meth:`to_json` output.

        Raises:
            ValueError: A field is missing or invalid.
            TypeError: The data is not an event object.
        """
        if not isinstance(data, dict):
            raise TypeError("an event must be a JSON object")
        try:
            return cls(
                event_id=str(data["event_id"]),
                assignment_id=str(data["assignment_id"]),
                kind=EventKind(data["kind"]),
                failure_type=FailureType(data["failure_type"]),
                detail=str(data["detail"]),
                slot=str(data["slot"]),
                occurred_at=datetime.fromisoformat(data["occurred_at"]),
            )
        except (KeyError, TypeError) as exc:
            raise ValueError(f"an event field is missing or invalid: {exc}") from exc
