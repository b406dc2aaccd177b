"""Tables of the campaign engine."""

from __future__ import annotations

import enum
from datetime import datetime

from sqlalchemy import UniqueConstraint
from sqlmodel import Field, SQLModel


class CampaignState(enum.StrEnum):
    """Where a campaign stands."""

    DRAFT = "draft"
    RUNNING = "running"
    COMPLETED = "completed"


class AssignmentState(enum.StrEnum):
    """Where one vehicle of a campaign stands; the last three are final."""

    PENDING = "pending"
    IN_PROGRESS = "in_progress"
    COMMITTED = "committed"
    FAILED = "failed"
    ROLLED_BACK = "rolled_back"

    @property
    def is_final(self) -> bool:
        """True once the vehicle's outcome is known."""
        return self in FINAL_ASSIGNMENT_STATES


FINAL_ASSIGNMENT_STATES = frozenset(
    {AssignmentState.COMMITTED, AssignmentState.FAILED, AssignmentState.ROLLED_BACK}
)


class Campaign(SQLModel, table=True):
    """A bundle rolled out to the vehicles a selector picks."""

    __tablename__ = "campaign"

    id: int | None = Field(default=None, primary_key=True)
    name: str = Field(max_length=64)
    bundle_id: int = Field(foreign_key="release_bundle.id")
    selector_model: str = Field(default="", max_length=64)
    # Space-separated VINs; empty means no restriction.
    selector_vins: str = ""
    state: CampaignState = Field(default=CampaignState.DRAFT, max_length=16)
    created_at: datetime
    started_at: datetime | None = None
    completed_at: datetime | None = None


class Assignment(SQLModel, table=True):
    """One vehicle's part in one campaign."""

    __tablename__ = "campaign_assignment"
    __table_args__ = (UniqueConstraint("campaign_id", "vin"),)

    id: int | None = Field(default=None, primary_key=True)
    campaign_id: int = Field(foreign_key="campaign.id", index=True)
    vin: str = Field(foreign_key="fleet_vehicle.vin", index=True, max_length=17)
    state: AssignmentState = Field(default=AssignmentState.PENDING, max_length=16, index=True)
    last_event: str = Field(default="", max_length=1100)
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
