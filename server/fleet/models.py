"""Tables of the fleet registry."""

from __future__ import annotations

from datetime import datetime

from sqlmodel import Field, SQLModel


class Vehicle(SQLModel, table=True):
    """A vehicle known to the fleet, registered at provisioning or by a bulk import."""

    __tablename__ = "fleet_vehicle"

    vin: str = Field(primary_key=True, max_length=17)
    model: str = Field(index=True, max_length=64)
    region: str = Field(default="", index=True, max_length=64)
    site: str = Field(default="", index=True, max_length=64)
    # Tags in the form ",a,b," so that one tag matches with LIKE '%,a,%'.
    tags: str = Field(default=",", max_length=1100)
    # The ECUs' hardware ids, sorted and joined by "+": campaigns stratify waves by it.
    variant: str = Field(default="", max_length=1100)
    registered_at: datetime
    # Last change of anything a selector looks at; late joiners are found by it.
    changed_at: datetime = Field(index=True)
    last_seen: datetime | None = None


class Ecu(SQLModel, table=True):
    """An ECU of a vehicle; the primary one (the gateway) talks to the server."""

    __tablename__ = "fleet_ecu"

    serial: str = Field(primary_key=True, max_length=64)
    vin: str = Field(foreign_key="fleet_vehicle.vin", index=True, max_length=17)
    hardware_id: str = Field(max_length=64)
    primary: bool = False
    installed_sha256: str = Field(default="", index=True, max_length=64)
    # The ECU's public key (securesystemslib key JSON), registered at provisioning; it
    # verifies the ECU's version reports. Empty for a vehicle registered without keys.
    public_key: str = Field(default="", max_length=1024)
