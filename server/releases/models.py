"""Tables of the release catalog."""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import UniqueConstraint
from sqlmodel import Field, SQLModel


class Image(SQLModel, table=True):
    """An uploaded ECU image; its bytes live in the blob store, its target in the Image repo."""

    __tablename__ = "release_image"

    target_name: str = Field(primary_key=True, max_length=129)
    name: str = Field(index=True, max_length=64)
    version: str = Field(max_length=64)
    hardware_id: str = Field(max_length=64)
    release_counter: int
    ecu_type: str = Field(default="", max_length=64)
    sha256: str = Field(index=True, max_length=64)
    length: int
    uploaded_at: datetime
    # Who uploaded it: the caller's token name and role.
    uploaded_by: str = Field(default="", max_length=64)
    uploader_role: str = Field(default="", max_length=32)
    # Who signed the targets metadata version that added it: role, version, key ids.
    signed_role: str = Field(default="", max_length=64)
    signed_version: int = Field(default=0)
    signed_keyids: str = Field(default="", max_length=2048)  # comma-separated, sorted
    signed_at: datetime | None = Field(default=None)


class Bundle(SQLModel, table=True):
    """Images for one vehicle model, one per hardware id; immutable once created.

    A name and a version name one bundle for good: no call changes its images.
    """

    __tablename__ = "release_bundle"
    __table_args__ = (UniqueConstraint("name", "version", name="uq_release_bundle_name_version"),)

    id: int | None = Field(default=None, primary_key=True)
    name: str = Field(max_length=64)
    version: str = Field(default="1", max_length=64)
    vehicle_model: str = Field(max_length=64)
    created_at: datetime


class BundleImage(SQLModel, table=True):
    """Membership of an image in a bundle."""

    __tablename__ = "release_bundle_image"

    bundle_id: int = Field(foreign_key="release_bundle.id", primary_key=True)
    target_name: str = Field(foreign_key="release_image.target_name", primary_key=True)
