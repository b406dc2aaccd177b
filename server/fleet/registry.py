"""Provisioning and look-ups of vehicles and their ECUs."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime

from sqlmodel import Session, col, select

from server.errors import AlreadyExistsError, InvalidArgumentError, NotFoundError
from server.fleet.models import Ecu, Vehicle
from server.store import Database
from server.validation import check_name, check_sha256, check_vin

MAX_ECUS_PER_VEHICLE = 64


@dataclass(frozen=True)
class EcuSpec:
    """An ECU as a caller describes it."""

    serial: str
    hardware_id: str
    primary: bool = False
    installed_sha256: str = ""


@dataclass(frozen=True)
class VehicleRecord:
    """A vehicle with its ECUs, detached from any session."""

    vin: str
    model: str
    ecus: tuple[EcuSpec, ...]
    last_seen: datetime | None


def _check_ecus(ecus: Sequence[EcuSpec]) -> None:
    if not ecus:
        raise InvalidArgumentError("a vehicle needs at least one ECU")
    if len(ecus) > MAX_ECUS_PER_VEHICLE:
        raise InvalidArgumentError(f"a vehicle has at most {MAX_ECUS_PER_VEHICLE} ECUs")
    serials = [ecu.serial for ecu in ecus]
    if len(set(serials)) != len(serials):
        raise InvalidArgumentError("ECU serials must be unique within a vehicle")
    if sum(ecu.primary for ecu in ecus) != 1:
        raise InvalidArgumentError("exactly one ECU must be the primary (the gateway)")
    for ecu in ecus:
        check_name(ecu.serial, "ECU serial")
        check_name(ecu.hardware_id, "hardware id")
        check_sha256(ecu.installed_sha256, "installed image hash")


def provision_vehicle(
    database: Database, *, vin: str, model: str, ecus: Sequence[EcuSpec]
) -> VehicleRecord:
    """Registers a new vehicle with its ECUs.

    Raises:
        InvalidArgumentError: the VIN, model or ECUs are malformed.
        AlreadyExistsError: the VIN or an ECU serial is registered already.
    """
    check_vin(vin)
    check_name(model, "vehicle model")
    _check_ecus(ecus)
    with database.session() as session:
        if session.get(Vehicle, vin) is not None:
            raise AlreadyExistsError(f"vehicle {vin} is registered already")
        taken = session.exec(
            select(Ecu.serial).where(col(Ecu.serial).in_([e.serial for e in ecus]))
        ).all()
        if taken:
            raise AlreadyExistsError(
                f"ECU serial(s) registered to another vehicle: {', '.join(taken)}"
            )
        session.add(Vehicle(vin=vin, model=model, registered_at=datetime.now(UTC)))
        session.flush()
        for ecu in ecus:
            session.add(
                Ecu(
                    serial=ecu.serial,
                    vin=vin,
                    hardware_id=ecu.hardware_id,
                    primary=ecu.primary,
                    installed_sha256=ecu.installed_sha256,
                )
            )
    return VehicleRecord(vin=vin, model=model, ecus=tuple(ecus), last_seen=None)


def load_vehicle(session: Session, vin: str) -> tuple[Vehicle, list[Ecu]]:
    """The vehicle and its ECUs inside ``session``.

    Raises:
        NotFoundError: no vehicle has this VIN.
    """
    vehicle = session.get(Vehicle, vin)
    if vehicle is None:
        raise NotFoundError(f"vehicle {vin} is not registered: provision it first")
    ecus = list(session.exec(select(Ecu).where(Ecu.vin == vin).order_by(col(Ecu.serial))).all())
    return vehicle, ecus


def get_vehicle(database: Database, vin: str) -> VehicleRecord:
    """The vehicle with this VIN and its ECUs."""
    check_vin(vin)
    with database.session() as session:
        vehicle, ecus = load_vehicle(session, vin)
        return VehicleRecord(
            vin=vehicle.vin,
            model=vehicle.model,
            ecus=tuple(
                EcuSpec(e.serial, e.hardware_id, e.primary, e.installed_sha256) for e in ecus
            ),
            last_seen=vehicle.last_seen,
        )
