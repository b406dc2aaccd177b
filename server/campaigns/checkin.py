"""A vehicle's check-in: record what it runs; hand it the Director metadata of its assignment."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from sqlmodel import Session, col, select

from server.campaigns.engine import complete_if_done
from server.campaigns.models import (
    FINAL_ASSIGNMENT_STATES,
    Assignment,
    AssignmentState,
    Campaign,
    CampaignState,
)
from server.errors import InvalidArgumentError
from server.fleet.models import Ecu
from server.fleet.registry import EcuSpec, load_vehicle
from server.releases.catalog import load_bundle_images
from server.repository.director import Director, DirectorTarget, SignedDirectorMetadata
from server.store import Database
from server.validation import check_sha256, check_vin

MIN_NONCE_BYTES = 16
MAX_NONCE_BYTES = 64
# last_seen is written at most this often per vehicle, so a quiet check-in writes nothing.
LAST_SEEN_RESOLUTION = timedelta(minutes=1)


@dataclass(frozen=True)
class CheckInResult:
    """The answer to a check-in: nothing to do, or an assignment with its Director metadata."""

    next_poll_seconds: int
    assignment_id: str = ""
    director: SignedDirectorMetadata | None = None


def _check_request(vin: str, ecus: Sequence[EcuSpec], nonce: bytes) -> None:
    check_vin(vin)
    if not MIN_NONCE_BYTES <= len(nonce) <= MAX_NONCE_BYTES:
        raise InvalidArgumentError(
            f"nonce must be {MIN_NONCE_BYTES} to {MAX_NONCE_BYTES} fresh random bytes"
        )
    for ecu in ecus:
        check_sha256(ecu.installed_sha256, "installed image hash")


def _record_inventory(session: Session, vin: str, reported: Sequence[EcuSpec]) -> None:
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
    now = datetime.now(UTC)
    last_seen = vehicle.last_seen
    if last_seen is not None and last_seen.tzinfo is None:
        last_seen = last_seen.replace(tzinfo=UTC)
    if last_seen is None or now - last_seen >= LAST_SEEN_RESOLUTION:
        vehicle.last_seen = now
        session.add(vehicle)


def _open_assignment(session: Session, vin: str) -> tuple[Assignment, Campaign] | None:
    row = session.exec(
        select(Assignment, Campaign)
        .join(Campaign, col(Campaign.id) == col(Assignment.campaign_id))
        .where(Assignment.vin == vin)
        .where(Campaign.state == CampaignState.RUNNING)
        .where(col(Assignment.state).not_in(FINAL_ASSIGNMENT_STATES))
        .order_by(col(Assignment.id))
        .limit(1)
    ).first()
    return (row[0], row[1]) if row else None


def check_in(
    database: Database,
    director: Director,
    *,
    vin: str,
    ecus: Sequence[EcuSpec],
    nonce: bytes,
    poll_seconds: int,
) -> CheckInResult:
    """Handles one check-in.

    Raises:
        InvalidArgumentError: malformed request, or ECUs that differ from the registry.
        NotFoundError: the vehicle is not registered.
    """
    _check_request(vin, ecus, nonce)
    with database.session() as session:
        _record_inventory(session, vin, ecus)
        found = _open_assignment(session, vin)
        if found is None:
            return CheckInResult(next_poll_seconds=poll_seconds)
        assignment, campaign = found
        assert campaign.id is not None  # noqa: S101 - persisted campaigns have ids
        _, registered = load_vehicle(session, vin)
        targets = [
            DirectorTarget(
                target_name=image.target_name,
                sha256=image.sha256,
                length=image.length,
                ecu_serial=ecu.serial,
                hardware_id=ecu.hardware_id,
            )
            for image in load_bundle_images(session, campaign.bundle_id)
            for ecu in registered
            if ecu.hardware_id == image.hardware_id
        ]
        now = datetime.now(UTC).replace(microsecond=0)
        if not targets:
            assignment.state = AssignmentState.FAILED
            assignment.last_event = (
                "failed: no ECU of the vehicle matches the bundle's hardware ids"
            )
            assignment.updated_at = now
            session.add(assignment)
            session.flush()
            complete_if_done(session, campaign.id)
            return CheckInResult(next_poll_seconds=poll_seconds)
        if assignment.state == AssignmentState.PENDING:
            assignment.state = AssignmentState.IN_PROGRESS
            assignment.last_event = "offered"
            assignment.updated_at = now
            session.add(assignment)
        assignment_id = str(assignment.id)
    signed = director.sign_for_vehicle(vin, targets)
    return CheckInResult(
        next_poll_seconds=poll_seconds, assignment_id=assignment_id, director=signed
    )
