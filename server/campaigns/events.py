"""Vehicle events: recorded once each, and moving assignments toward their outcome."""

from __future__ import annotations

import enum
import re
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Final

from sqlalchemy.dialects.postgresql import insert as postgresql_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlmodel import Session, SQLModel, col, select

from server.campaigns.eligibility import MaintenanceWindow
from server.campaigns.models import Assignment, AssignmentState, Campaign
from server.campaigns.plan import CampaignPlan
from server.clock import Clock, as_utc, system_clock
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


def record_events(
    database: Database,
    vin: str,
    events: Sequence[ReportedEvent],
    *,
    clock: Clock = system_clock,
) -> ReportOutcome:
    """Stores the events a vehicle reported and applies them to its assignments.

    The whole report is one transaction; an event id seen before is counted as a duplicate
    and changes nothing, so a vehicle may resend a report safely. Outcomes are counted by
    the campaign engine's next step.
    """
    check_vin(vin)
    if len(events) > MAX_EVENTS_PER_REPORT:
        raise InvalidArgumentError(f"a report holds at most {MAX_EVENTS_PER_REPORT} events")
    for reported in events:
        reported.validate()
    if len({e.event_id for e in events}) != len(events):
        raise InvalidArgumentError("a report lists each event id once")
    received_at = clock()
    with database.session() as session:
        vehicle = session.get(Vehicle, vin)
        if vehicle is None:
            raise NotFoundError(f"vehicle {vin} is not registered")
        assignment_ids = {int(e.assignment_id) for e in events if e.assignment_id}
        assignments = {
            a.id: a
            for a in session.exec(
                select(Assignment).where(col(Assignment.id).in_(assignment_ids)).with_for_update()
            ).all()
        }
        for assignment_id in assignment_ids:
            assignment = assignments.get(assignment_id)
            if assignment is None or assignment.vin != vin:
                raise InvalidArgumentError(
                    f"assignment {assignment_id} does not belong to vehicle {vin}"
                )
        inserted = _insert_new(session, vin, events, received_at)
        new_events = [e for e in events if e.event_id in inserted]
        windows = _windows(session, {a.campaign_id for a in assignments.values()}, vehicle.site)
        for reported in new_events:
            if reported.assignment_id:
                assignment = assignments[int(reported.assignment_id)]
                apply_event(assignment, reported, received_at, windows.get(assignment.campaign_id))
    return ReportOutcome(
        new_kinds=tuple(e.kind for e in new_events), duplicates=len(events) - len(new_events)
    )


_EVENTS: Final = SQLModel.metadata.tables["campaign_vehicle_event"]


def _insert_new(
    session: Session, vin: str, events: Sequence[ReportedEvent], received_at: datetime
) -> set[str]:
    """Inserts the events not stored yet; returns their ids.

    One ``INSERT ... ON CONFLICT DO NOTHING RETURNING``: the primary key's index finds
    resends whatever plan the database would pick for a look-up (a growing table without
    statistics made a prepared ``SELECT ... IN`` scan it whole, once per report).
    """
    if not events:
        return set()
    insert = postgresql_insert if session.get_bind().dialect.name == "postgresql" else sqlite_insert
    statement = (
        insert(_EVENTS)
        .values(
            [
                {
                    "event_id": e.event_id,
                    "vin": vin,
                    "assignment_id": int(e.assignment_id) if e.assignment_id else None,
                    "kind": e.kind.value,
                    "failure_type": e.failure_type.value,
                    "detail": e.detail,
                    "slot": e.slot,
                    "occurred_at": e.occurred_at,
                    "received_at": received_at,
                }
                for e in events
            ]
        )
        .on_conflict_do_nothing(index_elements=[_EVENTS.c.event_id])
        .returning(_EVENTS.c.event_id)
    )
    return set(session.connection().execute(statement).scalars())


def _windows(session: Session, campaign_ids: set[int], site: str) -> dict[int, MaintenanceWindow]:
    """The maintenance window of the vehicle's site in each of these campaigns."""
    found = {}
    for campaign in session.exec(select(Campaign).where(col(Campaign.id).in_(campaign_ids))):
        window = CampaignPlan.from_json(campaign.plan).window_for(site)
        if window is not None and campaign.id is not None:
            found[campaign.id] = window
    return found


_INSTALL_STEPS = frozenset(
    {EventKind.INSTALLED, EventKind.REBOOTED, EventKind.HEALTHY, EventKind.COMMITTED}
)


def _settle(assignment: Assignment, state: AssignmentState, failure: str, now: datetime) -> None:
    assignment.state = state
    assignment.failure_type = failure
    assignment.reported_at = now


def apply_event(
    assignment: Assignment,
    reported: ReportedEvent,
    now: datetime,
    window: MaintenanceWindow | None,
) -> None:
    """Moves an assignment forward; a settled outcome never flips back.

    Success needs a HEALTHY report before COMMITTED; an install step outside the site's
    maintenance window fails the assignment (failure type install) instead of counting.
    """
    if assignment.state.is_final:
        return
    assignment.updated_at = now
    summary = reported.summary()
    if window is not None and reported.kind in _INSTALL_STEPS:
        occurred = as_utc(reported.occurred_at)
        if not window.contains(occurred):
            _settle(assignment, AssignmentState.FAILED, FailureType.INSTALL.value, now)
            assignment.last_event = (
                f"{reported.kind.value} at {occurred:%Y-%m-%d %H:%M} UTC, outside the "
                f"maintenance window {window.describe()} of site {window.site}: not counted"
            )[:1100]
            return
    assignment.last_event = summary[:1100]
    if assignment.state in (AssignmentState.QUEUED, AssignmentState.PENDING):
        assignment.state = AssignmentState.IN_PROGRESS
    match reported.kind:
        case EventKind.HEALTHY:
            assignment.healthy = True
        case EventKind.HEALTH_FAILED:
            assignment.failure_type = FailureType.HEALTH.value
        case EventKind.COMMITTED if assignment.healthy:
            _settle(assignment, AssignmentState.COMMITTED, "", now)
        case EventKind.COMMITTED:
            assignment.last_event = "committed without a healthy report: not counted as success"
        case EventKind.ROLLED_BACK:
            failure = (
                reported.failure_type.value
                or assignment.failure_type
                or FailureType.ROLLED_BACK.value
            )
            _settle(assignment, AssignmentState.ROLLED_BACK, failure, now)
        case EventKind.FAILED:
            _settle(assignment, AssignmentState.FAILED, reported.failure_type.value, now)
        case _:
            pass
