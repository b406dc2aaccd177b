"""Tables of the campaign engine."""

from __future__ import annotations

import enum
from datetime import datetime

from sqlalchemy import Index, UniqueConstraint
from sqlmodel import Field, SQLModel


class CampaignState(enum.StrEnum):
    """Where a campaign stands.

    draft → awaiting_approval → approved → running ⇄ paused → completed / aborted
    """

    DRAFT = "draft"
    AWAITING_APPROVAL = "awaiting_approval"
    APPROVED = "approved"
    RUNNING = "running"
    PAUSED = "paused"
    COMPLETED = "completed"
    ABORTED = "aborted"


# A vehicle with an unfinished assignment in one of these is busy (one campaign at a time).
ACTIVE_CAMPAIGN_STATES = frozenset({CampaignState.RUNNING, CampaignState.PAUSED})


class CampaignKind(enum.StrEnum):
    """An update, or the rollback of one."""

    UPDATE = "update"
    ROLLBACK = "rollback"


class AssignmentState(enum.StrEnum):
    """Where one vehicle of a campaign stands; the last four are final."""

    QUEUED = "queued"  # its wave is not open yet, or pacing holds it back
    PENDING = "pending"  # released; the vehicle has not checked in since (offline)
    IN_PROGRESS = "in_progress"
    COMMITTED = "committed"
    FAILED = "failed"
    ROLLED_BACK = "rolled_back"
    CANCELED = "canceled"

    @property
    def is_final(self) -> bool:
        """True once the vehicle's outcome is known."""
        return self in FINAL_ASSIGNMENT_STATES


FINAL_ASSIGNMENT_STATES = frozenset(
    {
        AssignmentState.COMMITTED,
        AssignmentState.FAILED,
        AssignmentState.ROLLED_BACK,
        AssignmentState.CANCELED,
    }
)
FAILURE_STATES = frozenset({AssignmentState.FAILED, AssignmentState.ROLLED_BACK})


class Campaign(SQLModel, table=True):
    """A bundle rolled out, wave by wave, to the vehicles a selector picks."""

    __tablename__ = "campaign"

    id: int | None = Field(default=None, primary_key=True)
    name: str = Field(max_length=64)
    kind: CampaignKind = Field(default=CampaignKind.UPDATE, max_length=16)
    bundle_id: int = Field(foreign_key="release_bundle.id")
    rollback_of: int | None = Field(default=None)
    selector: str = Field(default="{}")  # FleetSelector.to_json()
    plan: str = Field(default="{}")  # CampaignPlan.to_json()
    state: CampaignState = Field(default=CampaignState.DRAFT, max_length=24, index=True)
    current_wave: int = 0
    # JSON list of the ISO moments at which waves 1, 2, ... opened.
    waves_opened: str = Field(default="[]")
    # When the open wave's success gate started to hold; soak counts from here.
    gate_met_at: datetime | None = None
    # Failure gates count reports from here on (set at resume).
    gate_reset_at: datetime | None = None
    # Vehicles changed since this moment (the newest change seen) may join late.
    joined_until: datetime | None = None
    pause_reason: str = Field(default="", max_length=1024)
    author: str = Field(max_length=64)
    approved_by: str = Field(default="", max_length=64)
    created_at: datetime
    started_at: datetime | None = None
    completed_at: datetime | None = None


class Assignment(SQLModel, table=True):
    """One vehicle's part in one campaign."""

    __tablename__ = "campaign_assignment"
    __table_args__ = (
        UniqueConstraint("campaign_id", "vin"),
        Index("ix_assignment_campaign_wave_state", "campaign_id", "wave", "state"),
        Index("ix_assignment_vin_state", "vin", "state"),
    )

    id: int | None = Field(default=None, primary_key=True)
    campaign_id: int = Field(foreign_key="campaign.id")
    vin: str = Field(foreign_key="fleet_vehicle.vin", max_length=17)
    wave: int = 1
    state: AssignmentState = Field(default=AssignmentState.QUEUED, max_length=16)
    failure_type: str = Field(default="", max_length=32)
    healthy: bool = False  # a HEALTHY report came in this attempt
    attempt: int = 1
    # JSON {ecu serial: sha256} of what the vehicle ran when it took the assignment.
    previous: str = Field(default="")
    # JSON {ecu serial: target name} for a rollback; empty: the campaign's bundle.
    targets: str = Field(default="")
    last_event: str = Field(default="", max_length=1100)
    released_at: datetime | None = None
    offered_at: datetime | None = None
    reported_at: datetime | None = None
    updated_at: datetime


class VehicleEventRecord(SQLModel, table=True):
    """An event a vehicle reported, kept once per vehicle-made id."""

    __tablename__ = "campaign_vehicle_event"

    event_id: str = Field(primary_key=True, max_length=64)
    vin: str = Field(index=True, max_length=17)
    assignment_id: int | None = Field(default=None, index=True)
    kind: str = Field(max_length=32)
    failure_type: str = Field(default="", max_length=32)
    detail: str = Field(default="", max_length=1024)
    slot: str = Field(default="", max_length=8)
    occurred_at: datetime
    received_at: datetime
