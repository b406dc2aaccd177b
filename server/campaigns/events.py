"""Vehicle events: recorded once each, and moving assignments toward their outcome."""

from __future__ import annotations

import enum
import re
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime

from sqlmodel import col, select

from server.campaigns.engine import complete_if_done
from server.campaigns.models import Assignment, AssignmentState, VehicleEventRecord
from server.errors import InvalidArgumentError, NotFoundError
from server.fleet.models import Vehicle
from server.store import Database
from server.validation import check_vin

MAX_EVENTS_PER_REPORT = 1000
MAX_DETAIL_CHARS = 1024
_EVENT_ID = re.compile(r"[A-Za-z0-9-]{8,64}")


class EventKind(enum.StrEnum):
    """A step of an update on the vehicle."""

    CHECKED_IN = "checked_in"
    DOWNLOADED = "downloaded"
    VERIFIED = "verified"
    INSTALLED = "installed"
    REBOOTED = "rebooted"
    HEALTHY = "healthy"
    COMMITTED = "committed"
    HEALTH_FAILED = "health_failed"
    ROLLED_BACK = "rolled_back"
    FAILED = "failed"


class FailureType(enum.StrEnum):
    """Where an update failed."""

    NONE = ""
    DOWNLOAD = "download"
    VERIFICATION = "verification"
    INSTALL = "install"
    HEALTH = "health"
    ROLLED_BACK = "rolled_back"
    TIMED_OUT = "timed_out"


# The outcome an event settles; every other event means "in progress".
_OUTCOMES = {
    EventKind.COMMITTED: AssignmentState.COMMITTED,
    EventKind.ROLLED_BACK: AssignmentState.ROLLED_BACK,
    EventKind.FAILED: AssignmentState.FAILED,
}


@dataclass(frozen=True)
class ReportedEvent:
    """An event as the vehicle sent it."""

    event_id: str
    assignment_id: str
    kind: EventKind
    failure_type: FailureType
    detail: str
    slot: str
    occurred_at: datetime

    def validate(self) -> None:
        """Raises InvalidArgumentError unless the event is well formed."""
        if not _EVENT_ID.fullmatch(self.event_id):
            raise InvalidArgumentError(
                f"event id {self.event_id!r} is not valid: 8 to 64 of A-Z a-z 0-9 -"
            )
        if self.assignment_id and not (
            self.assignment_id.isdigit() and len(self.assignment_id) <= 18
        ):
            raise InvalidArgumentError(f"assignment id {self.assignment_id!r} is not valid")
        if len(self.detail) > MAX_DETAIL_CHARS:
            raise InvalidArgumentError(f"event detail is longer than {MAX_DETAIL_CHARS} characters")
        if self.slot not in ("", "A", "B"):
            raise InvalidArgumentError(f"slot {self.slot!r} is not valid: 'A', 'B' or empty")
        if self.kind == EventKind.FAILED and self.failure_type == FailureType.NONE:
            raise InvalidArgumentError("a FAILED event needs a failure type")

    def summary(self) -> str:
        """A short line for status displays, e.g. ``health_failed: exit status 1``."""
        text = self.kind.value
        if self.failure_type != FailureType.NONE:
            text += f" ({self.failure_type.value})"
        if self.detail:
            text += f": {self.detail}"
        return text


@dataclass(frozen=True)
class ReportOutcome:
    """Which events of a report were new, and how many were resends."""

    new_kinds: tuple[EventKind, ...]
    duplicates: int

    @property
    def accepted(self) -> int:
        """How many events were recorded now."""
        return len(self.new_kinds)


def record_events(database: Database, vin: str, events: Sequence[ReportedEvent]) -> ReportOutcome:
    """Stores the events a vehicle reported and applies them to its assignments.

    The whole report is one transaction; an event id seen before is counted as a duplicate
    and changes nothing, so a vehicle may resend a report safely.
    """
    check_vin(vin)
    if len(events) > MAX_EVENTS_PER_REPORT:
        raise InvalidArgumentError(f"a report holds at most {MAX_EVENTS_PER_REPORT} events")
    for reported in events:
        reported.validate()
    if len({e.event_id for e in events}) != len(events):
        raise InvalidArgumentError("a report lists each event id once")
    received_at = datetime.now(UTC)
    with database.session() as session:
        if session.get(Vehicle, vin) is None:
            raise NotFoundError(f"vehicle {vin} is not registered")
        seen = set(
            session.exec(
                select(VehicleEventRecord.event_id).where(
                    col(VehicleEventRecord.event_id).in_([e.event_id for e in events])
                )
            ).all()
        )
        new_events = [e for e in events if e.event_id not in seen]
        assignment_ids = {int(e.assignment_id) for e in new_events if e.assignment_id}
        assignments = {
            a.id: a
            for a in session.exec(
                select(Assignment).where(col(Assignment.id).in_(assignment_ids))
            ).all()
        }
        for assignment_id in assignment_ids:
            assignment = assignments.get(assignment_id)
            if assignment is None or assignment.vin != vin:
                raise InvalidArgumentError(
                    f"assignment {assignment_id} does not belong to vehicle {vin}"
                )
        for reported in new_events:
            assignment_row_id = int(reported.assignment_id) if reported.assignment_id else None
            session.add(
                VehicleEventRecord(
                    event_id=reported.event_id,
                    vin=vin,
                    assignment_id=assignment_row_id,
                    kind=reported.kind.value,
                    failure_type=reported.failure_type.value,
                    detail=reported.detail,
                    slot=reported.slot,
                    occurred_at=reported.occurred_at,
                    received_at=received_at,
                )
            )
            if assignment_row_id is not None:
                _apply(assignments[assignment_row_id], reported, received_at)
        session.flush()
        for campaign_id in {a.campaign_id for a in assignments.values()}:
            complete_if_done(session, campaign_id)
    return ReportOutcome(
        new_kinds=tuple(e.kind for e in new_events), duplicates=len(events) - len(new_events)
    )


def _apply(assignment: Assignment, reported: ReportedEvent, now: datetime) -> None:
    """Moves an assignment forward; a settled outcome never flips back."""
    if assignment.state.is_final:
        return
    assignment.state = _OUTCOMES.get(reported.kind, AssignmentState.IN_PROGRESS)
    assignment.last_event = reported.summary()[:1100]
    assignment.updated_at = now.replace(microsecond=0)
