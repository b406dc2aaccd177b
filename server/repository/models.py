"""Tables of the repository domain: signed metadata and per-vehicle Director state."""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import Column, DateTime, LargeBinary, update
from sqlmodel import Field, Session, SQLModel, col, select


class RepoMetadata(SQLModel, table=True):
    """One signed metadata file, stored under the name it is served as.

    Versioned files (``N.root.json``, ``N.targets.json``, ``N.snapshot.json``) are
    written once; ``timestamp.json`` is overwritten in place and is the row a writer
    locks to serialize changes to its repository.
    """

    __tablename__ = "repo_metadata"

    repo: str = Field(primary_key=True, max_length=16)  # "image" or "director"
    filename: str = Field(primary_key=True, max_length=64)
    version: int
    data: bytes = Field(sa_column=Column(LargeBinary, nullable=False))


class DirectorVehicleState(SQLModel, table=True):
    """The Director metadata last signed for one vehicle."""

    __tablename__ = "repo_director_vehicle"

    vin: str = Field(primary_key=True, max_length=32)
    version: int
    targets_digest: str = Field(max_length=64)  # SHA-256 of the assignment, hex
    timestamp: bytes = Field(sa_column=Column(LargeBinary, nullable=False))
    snapshot: bytes = Field(sa_column=Column(LargeBinary, nullable=False))
    targets: bytes = Field(sa_column=Column(LargeBinary, nullable=False))
    expires: datetime = Field(sa_column=Column(DateTime(timezone=True), nullable=False))


def metadata_row(session: Session, repo: str, filename: str) -> RepoMetadata | None:
    """The stored metadata file ``filename`` of ``repo``, if any."""
    return session.get(RepoMetadata, (repo, filename))


def latest_root_row(session: Session, repo: str) -> RepoMetadata | None:
    """The newest ``N.root.json`` of ``repo``, if the repository exists."""
    statement = (
        select(RepoMetadata)
        .where(RepoMetadata.repo == repo, col(RepoMetadata.filename).endswith(".root.json"))
        .order_by(col(RepoMetadata.version).desc())
        .limit(1)
    )
    return session.exec(statement).first()


def lock_metadata_row(session: Session, repo: str, filename: str) -> bool:
    """Locks one metadata row until the transaction ends; False when the row is absent.

    This must be the transaction's first statement. A no-op UPDATE is used instead of
    ``SELECT ... FOR UPDATE`` because it locks on both backends: on PostgreSQL it takes
    the row lock (later statements then read the latest committed state), on SQLite it
    takes the database's write lock before anything is read, so a concurrent writer waits
    instead of failing on a stale snapshot.
    """
    statement = (
        update(RepoMetadata)
        .where(col(RepoMetadata.repo) == repo, col(RepoMetadata.filename) == filename)
        .values(version=RepoMetadata.version)
    )
    return session.exec(statement).rowcount == 1


class VehicleInventory(SQLModel, table=True):
    """The last verified vehicle version manifest: the vehicle's software inventory.

    ``latest_time`` (the primary's report time) and ``nonces`` (the most recent report
    nonces, JSON list) are what a later manifest must be fresher than: a replay repeats a
    nonce, or is older.
    """

    __tablename__ = "repo_vehicle_inventory"

    vin: str = Field(primary_key=True, max_length=32)
    received_at: datetime = Field(sa_column=Column(DateTime(timezone=True), nullable=False))
    latest_time: datetime = Field(sa_column=Column(DateTime(timezone=True), nullable=False))
    nonces: str = Field(default="[]", max_length=16_384)
    manifest: bytes = Field(sa_column=Column(LargeBinary, nullable=False))
