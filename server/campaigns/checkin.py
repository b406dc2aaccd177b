"""A vehicle's check-in: record what it runs; hand it the Director metadata of its assignment."""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlalchemy import and_, or_
from sqlmodel import Session, col, select

from server.campaigns.models import Assignment, AssignmentState, Campaign, CampaignState
from server.campaigns.plan import CampaignPlan
from server.clock import Clock, as_utc, system_clock
from server.errors import InvalidArgumentError
from server.fleet.models import Ecu, Vehicle
from server.fleet.registry import EcuSpec, load_vehicle
from server.releases.catalog import load_bundle_images
from server.releases.models import Image
from server.repository.director import Director, DirectorTarget, SignedDirectorMetadata
from server.store import Database
from server.validation import check_sha256, check_vin

MIN_NONCE_BYTES = 16
MAX_NONCE_BYTES = 64
# last_seen is written at most this often per vehicle, so a quiet check-in writes nothing.
LAST_SEEN_RESOLUTION = timedelta(minutes=1)
_OFFERABLE = (AssignmentState.PENDING, AssignmentState.IN_PROGRESS)


@dataclass(frozen=True)
class CheckInResult:
    """The answer to a check-in: nothing to do, or an assignment with its Director metadata."""

    next_poll_seconds: int
    assignment_id: str = ""
    director: SignedDirectorMetadata | None = None
    # The site's maintenance window (opens, closes) in UTC, when the campaign has one.
    install_window: tuple[datetime, datetime] | None = None


def _check_request(vin: str, ecus: Sequence[EcuSpec], nonce: bytes) -> None:
    check_vin(vin)
    if not MIN_NONCE_BYTES <= len(nonce) <= MAX_NONCE_BYTES:
        raise InvalidArgumentError(
            f"nonce must be {MIN_NONCE_BYTES} to {MAX_NONCE_BYTES} fresh random bytes"
        )
    for ecu in ecus:
        check_sha256(ecu.installed_sha256, "installed image hash")


def _record_inventory(
    session: Session, vin: str, reported: Sequence[EcuSpec], now: datetime
) -> tuple[Vehicle, list[Ecu]]:
    """Checks the reported ECUs against the registry and stores what changed."""
    vehicle, registered = load_vehicle(session, vin)
    by_serial = {ecu.serial: ecu for ecu in registered}
    reported_serials = {ecu.serial for ecu in reported}
    if reported_serials != set(by_serial) or len(reported_serials) != len(reported):
        raise InvalidArgumentError(
            f"vehicle {vin} reported ECUs {sorted(reported_serials)}, "
            f"registered are {sorted(by_serial)}"
        )
    for ecu in reported:
        known: Ecu = by_serial[ecu.serial]
        if ecu.hardware_id != known.hardware_id:
            raise InvalidArgumentError(
                f"ECU {ecu.serial} reported hardware id {ecu.hardware_id!r}, "
                f"registered is {known.hardware_id!r}"
            )
        if ecu.installed_sha256 != known.installed_sha256:
            known.installed_sha256 = ecu.installed_sha256
            session.add(known)
            # Installed images are a selector: the vehicle may now join a campaign.
            vehicle.changed_at = now
            session.add(vehicle)
    last_seen = vehicle.last_seen
    if last_seen is None or now - as_utc(last_seen) >= LAST_SEEN_RESOLUTION:
        vehicle.last_seen = now
        session.add(vehicle)
    return vehicle, registered


def _open_assignment(session: Session, vin: str) -> tuple[Assignment, Campaign] | None:
    """The assignment to offer: released in a running campaign, or taken in a paused one."""
    row = session.exec(
        select(Assignment, Campaign)
        .join(Campaign, col(Campaign.id) == col(Assignment.campaign_id))
        .where(Assignment.vin == vin)
        .where(
            or_(
                and_(
                    col(Campaign.state) == CampaignState.RUNNING,
                    col(Assignment.state).in_(_OFFERABLE),
                ),
                and_(
                    col(Campaign.state) == CampaignState.PAUSED,
                    col(Assignment.state) == AssignmentState.IN_PROGRESS,
                ),
            )
        )
        .order_by(col(Assignment.id))
        .limit(1)
        .with_for_update(of=Assignment)
    ).first()
    return (row[0], row[1]) if row else None


def _targets(
    session: Session, assignment: Assignment, campaign: Campaign, ecus: Sequence[Ecu]
) -> list[DirectorTarget]:
    if assignment.targets:
        wanted: dict[str, str] = json.loads(assignment.targets)
        images = {
            i.target_name: i
            for i in session.exec(
                select(Image).where(col(Image.target_name).in_(wanted.values()))
            ).all()
        }
        pairs = [(images[wanted[e.serial]], e) for e in ecus if wanted.get(e.serial) in images]
    else:
        pairs = [
            (image, ecu)
            for image in load_bundle_images(session, campaign.bundle_id)
            for ecu in ecus
            if ecu.hardware_id == image.hardware_id
        ]
    return [
        DirectorTarget(
            target_name=image.target_name,
            sha256=image.sha256,
            length=image.length,
            ecu_serial=ecu.serial,
            hardware_id=ecu.hardware_id,
        )
        for image, ecu in pairs
    ]


def check_in(
    database: Database,
    director: Director,
    *,
    vin: str,
    ecus: Sequence[EcuSpec],
    nonce: bytes,
    poll_seconds: int,
    clock: Clock = system_clock,
) -> CheckInResult:
    """Handles one check-in.

    Raises:
        InvalidArgumentError: malformed request, or ECUs that differ from the registry.
        NotFoundError: the vehicle is not registered.
    """
    _check_request(vin, ecus, nonce)
    now = clock()
    with database.session() as session:
        vehicle, registered = _record_inventory(session, vin, ecus, now)
        found = _open_assignment(session, vin)
        if found is None:
            return CheckInResult(next_poll_seconds=poll_seconds)
        assignment, campaign = found
        targets = _targets(session, assignment, campaign, registered)
        if not targets:
            assignment.state = AssignmentState.FAILED
            assignment.failure_type = "install"
            assignment.reported_at = now
            assignment.last_event = (
                "failed: no ECU of the vehicle matches the bundle's hardware ids"
            )
            assignment.updated_at = now
            session.add(assignment)
            return CheckInResult(next_poll_seconds=poll_seconds)
        if assignment.state == AssignmentState.PENDING:
            assignment.state = AssignmentState.IN_PROGRESS
            assignment.offered_at = now
            assignment.previous = json.dumps(
                {e.serial: e.installed_sha256 for e in registered}, sort_keys=True
            )
            assignment.last_event = "offered"
            assignment.updated_at = now
            session.add(assignment)
        window = CampaignPlan.from_json(campaign.plan).window_for(vehicle.site)
        install_window = window.occurrence(now) if window is not None else None
        assignment_id = str(assignment.id)
    signed = director.sign_for_vehicle(vin, targets)
    return CheckInResult(
        next_poll_seconds=poll_seconds,
        assignment_id=assignment_id,
        director=signed,
        install_window=install_window,
    )
