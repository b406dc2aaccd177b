"""Provisioning and look-ups of vehicles and their ECUs."""

from __future__ import annotations

import json
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Protocol

from securesystemslib.signer import Key, SSlibKey
from sqlalchemy import func
from sqlmodel import Session, col, select

from server.clock import system_clock
from server.errors import AlreadyExistsError, InvalidArgumentError, NotFoundError
from server.fleet.models import Ecu, Vehicle
from server.fleet.selectors import FleetSelector, tags_column_value, tags_from_column
from server.store import Database
from server.validation import check_name, check_sha256, check_vin

MAX_ECUS_PER_VEHICLE = 64
MAX_TAGS_PER_VEHICLE = 32
MAX_LIST_LIMIT = 10_000
MAX_PUBLIC_KEY_CHARS = 1024  # an Ed25519 key's JSON takes ~200, ECDSA P-256 ~350


class ReportedEcu(Protocol):
    """What a check-in says of one ECU: an :class:`EcuSpec`, or the request's message."""

    @property
    def serial(self) -> str: ...
    @property
    def hardware_id(self) -> str: ...
    @property
    def installed_sha256(self) -> str: ...


@dataclass(frozen=True)
class EcuSpec:
    """An ECU as a caller describes it."""

    serial: str
    hardware_id: str
    primary: bool = False
    installed_sha256: str = ""
    # securesystemslib key JSON of the ECU's version-report key; empty when not registered.
    public_key: str = ""


@dataclass(frozen=True)
class VehicleRecord:
    """A vehicle with its ECUs, detached from any session."""

    vin: str
    model: str
    ecus: tuple[EcuSpec, ...]
    last_seen: datetime | None
    region: str = ""
    site: str = ""
    tags: tuple[str, ...] = ()
    variant: str = ""


def variant_of(ecus: Sequence[EcuSpec]) -> str:
    """A vehicle's hardware variant: its ECUs' hardware ids, sorted, joined by ``+``."""
    return "+".join(sorted(ecu.hardware_id for ecu in ecus))


def check_ecus(ecus: Sequence[EcuSpec]) -> None:
    """Raises InvalidArgumentError unless the ECUs make a valid vehicle."""
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
        if ecu.public_key:
            ecu_public_key(ecu.serial, ecu.public_key)


def ecu_public_key(serial: str, text: str) -> Key:
    """The ECU's registered public key parsed from its key JSON.

    Raises:
        InvalidArgumentError: ``text`` is not an Ed25519 or ECDSA key in securesystemslib's
            JSON form (``keyid``, ``keytype``, ``scheme``, ``keyval``).
    """
    if len(text) > MAX_PUBLIC_KEY_CHARS:
        raise InvalidArgumentError(f"ECU {serial}: the public key is longer than allowed")
    try:
        raw = json.loads(text)
        keyid = raw.pop("keyid")
        key = SSlibKey.from_dict(str(keyid), raw)
    except (ValueError, KeyError, TypeError, AttributeError) as error:
        raise InvalidArgumentError(
            f"ECU {serial}: the public key is not securesystemslib key JSON: {error!r}"
        ) from error
    if key.keytype not in ("ed25519", "ecdsa"):
        raise InvalidArgumentError(f"ECU {serial}: key type {key.keytype!r} is not allowed")
    return key


def check_placement(region: str, site: str, tags: Sequence[str]) -> None:
    """Raises InvalidArgumentError unless region, site and tags are valid names."""
    if region:
        check_name(region, "region")
    if site:
        check_name(site, "site")
    if len(tags) > MAX_TAGS_PER_VEHICLE:
        raise InvalidArgumentError(f"a vehicle has at most {MAX_TAGS_PER_VEHICLE} tags")
    for tag in tags:
        check_name(tag, "tag")


def provision_vehicle(
    database: Database,
    *,
    vin: str,
    model: str,
    ecus: Sequence[EcuSpec],
    region: str = "",
    site: str = "",
    tags: Sequence[str] = (),
) -> VehicleRecord:
    """Registers a new vehicle with its ECUs.

    Raises:
        InvalidArgumentError: the VIN, model, placement or ECUs are malformed.
        AlreadyExistsError: the VIN or an ECU serial is registered already.
    """
    check_vin(vin)
    check_name(model, "vehicle model")
    check_placement(region, site, tags)
    check_ecus(ecus)
    now = system_clock()
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
        session.add(
            Vehicle(
                vin=vin,
                model=model,
                region=region,
                site=site,
                tags=tags_column_value(list(tags)),
                variant=variant_of(ecus),
                registered_at=now,
                changed_at=now,
            )
        )
        session.flush()
        for ecu in ecus:
            session.add(
                Ecu(
                    serial=ecu.serial,
                    vin=vin,
                    hardware_id=ecu.hardware_id,
                    primary=ecu.primary,
                    installed_sha256=ecu.installed_sha256,
                    public_key=ecu.public_key,
                )
            )
    return VehicleRecord(
        vin=vin,
        model=model,
        ecus=tuple(ecus),
        last_seen=None,
        region=region,
        site=site,
        tags=tuple(sorted(set(tags))),
        variant=variant_of(ecus),
    )


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


def _record(vehicle: Vehicle, ecus: Sequence[Ecu]) -> VehicleRecord:
    return VehicleRecord(
        vin=vehicle.vin,
        model=vehicle.model,
        ecus=tuple(
            EcuSpec(e.serial, e.hardware_id, e.primary, e.installed_sha256, e.public_key)
            for e in ecus
        ),
        last_seen=vehicle.last_seen,
        region=vehicle.region,
        site=vehicle.site,
        tags=tags_from_column(vehicle.tags),
        variant=vehicle.variant,
    )


def get_vehicle(database: Database, vin: str) -> VehicleRecord:
    """The vehicle with this VIN and its ECUs."""
    check_vin(vin)
    with database.session() as session:
        vehicle, ecus = load_vehicle(session, vin)
        return _record(vehicle, ecus)


def list_vehicles(
    database: Database, selector: FleetSelector, *, limit: int = 100
) -> tuple[list[VehicleRecord], int]:
    """The first ``limit`` selected vehicles by VIN, and how many the selector picks."""
    selector.validate()
    if not 1 <= limit <= MAX_LIST_LIMIT:
        raise InvalidArgumentError(f"limit must be 1 to {MAX_LIST_LIMIT}")
    where = selector.conditions()
    with database.session() as session:
        total = session.exec(select(func.count()).select_from(Vehicle).where(*where)).one()
        vehicles = session.exec(
            select(Vehicle).where(*where).order_by(col(Vehicle.vin)).limit(limit)
        ).all()
        ecus: dict[str, list[Ecu]] = defaultdict(list)
        for ecu in session.exec(
            select(Ecu).where(col(Ecu.vin).in_([v.vin for v in vehicles])).order_by(col(Ecu.serial))
        ).all():
            ecus[ecu.vin].append(ecu)
        return [_record(v, ecus[v.vin]) for v in vehicles], int(total)
