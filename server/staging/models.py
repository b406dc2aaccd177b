"""Tables of the staging domain (created by ``ensure_tables``, beside the other domains')."""

from __future__ import annotations

from datetime import datetime

from sqlalchemy.engine import Engine
from sqlmodel import Field, SQLModel


class RelayReadiness(SQLModel, table=True):
    """A relay, its site, and the blobs of its staging plan it last reported holding."""

    __tablename__ = "staging_relay"

    relay_id: str = Field(primary_key=True, max_length=64)
    site: str = Field(index=True, max_length=64)
    plan_id: str = Field(default="", max_length=64)
    # SHA-256 (hex) of every cached blob of the plan, space-separated.
    cached_sha256: str = ""
    blobs_total: int = 0
    reported_at: datetime


class StagingWait(SQLModel, table=True):
    """When the engine first wanted to open a wave at a site whose relay was not ready."""

    __tablename__ = "staging_wait"

    campaign_id: int = Field(primary_key=True)
    wave: int = Field(primary_key=True)
    site: str = Field(primary_key=True, max_length=64)
    first_asked_at: datetime


def ensure_tables(engine: Engine) -> None:
    """Creates the staging tables when they do not exist yet."""
    SQLModel.metadata.create_all(
        engine,
        tables=[RelayReadiness.__table__, StagingWait.__table__],  # type: ignore[attr-defined]
    )
