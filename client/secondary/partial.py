"""Uptane partial verification, pure: a secondary checks the Director's targets itself.

A secondary trusts only the Director root pinned at its provisioning. It accepts the
targets the primary hands it when they are signed by a threshold of the root's targets
keys, not older than the last targets it accepted, not expired, free of delegations, name
the vehicle, name each ECU at most once, and name exactly one image for this ECU's serial
with this ECU's hardware id. The image's length and hash are then checked as it is written
(``client.install.SlotWriter``).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

from securesystemslib.exceptions import FormatError
from tuf.api import exceptions as tuf_errors
from tuf.api.metadata import Metadata, Root, Targets

from client.errors import VerificationError
from client.images import Image


@dataclass(frozen=True)
class SecondaryIdentity:
    """What a secondary knows about itself.

    Attributes:
        vin: The vehicle it is built into.
        serial: Its ECU serial.
        hardware_id: Its hardware id.
    """

    vin: str
    serial: str
    hardware_id: str


@dataclass(frozen=True)
class AcceptedTargets:
    """The outcome of partial verification.

    Attributes:
        image: The image the Director names for this ECU.
        version: The targets version, the floor for the next verification.
    """

    image: Image
    version: int


def _custom(fields: dict[str, Any]) -> dict[str, Any]:
    custom = fields.get("custom")
    return custom if isinstance(custom, dict) else {}


def verify_director_targets(
    root_bytes: bytes,
    targets_bytes: bytes,
    *,
    ecu: SecondaryIdentity,
    version_floor: int,
    now: datetime,
) -> AcceptedTargets:
    """Partially verify the Director's targets for one secondary ECU.

    Args:
        root_bytes: The Director root pinned at provisioning.
        targets_bytes: The Director targets the primary handed over.
        ecu: The verifying secondary.
        version_floor: The version of the last targets this ECU accepted (0: none).
        now: The current UTC time.

    Returns:
        This ECU's image and the targets version.

    Raises:
        VerificationError: Naming the check that failed.
    """
    try:
        root = Metadata[Root].from_bytes(root_bytes)
        targets = Metadata[Targets].from_bytes(targets_bytes)
    except (tuf_errors.RepositoryError, FormatError, ValueError, TypeError, KeyError) as exc:
        raise VerificationError(f"the Director metadata is malformed: {exc}") from exc
    try:
        root.signed.verify_delegate(Targets.type, targets.signed_bytes, targets.signatures)
    except tuf_errors.UnsignedMetadataError as exc:
        raise VerificationError(
            "forged metadata: the Director targets are not signed by a threshold of the "
            f"pinned root's targets keys: {exc}"
        ) from exc
    signed = targets.signed
    if signed.version < version_floor:
        raise VerificationError(
            f"rollback attack: Director targets version {signed.version} is older than "
            f"version {version_floor} this ECU accepted before"
        )
    if signed.is_expired(now):
        raise VerificationError(
            f"freeze attack: the Director targets expired at {signed.expires.isoformat()}"
        )
    if signed.delegations is not None:
        raise VerificationError("the Director targets carry delegations, which Uptane forbids")
    director_vin = _custom(signed.unrecognized_fields).get("vin")
    if director_vin != ecu.vin:
        raise VerificationError(
            f"the Director targets are for vehicle {director_vin!r}, not {ecu.vin!r}; refused"
        )
    return AcceptedTargets(image=_select(signed, ecu), version=signed.version)


def _select(targets: Targets, ecu: SecondaryIdentity) -> Image:
    seen: set[str] = set()
    chosen: list[Image] = []
    for name, target in targets.targets.items():
        ecus = _custom(target.unrecognized_fields).get("ecus")
        if not isinstance(ecus, dict):
            continue
        for serial, entry in ecus.items():
            if serial in seen:
                raise VerificationError(
                    f"the Director targets name ECU {serial} more than once; refused"
                )
            seen.add(serial)
            if serial != ecu.serial:
                continue
            hardware_id = entry.get("hardware_id") if isinstance(entry, dict) else None
            if hardware_id != ecu.hardware_id:
                raise VerificationError(
                    f"wrong hardware id: the Director assigns {name} to ECU {ecu.serial} as "
                    f"hardware id {hardware_id!r}, but that ECU is {ecu.hardware_id!r}"
                )
            sha256 = target.hashes.get("sha256")
            if not sha256:
                raise VerificationError(f"{name}: the Director signs no sha256 hash")
            # The Director signs no release counter; the primary checked it (full verification).
            chosen.append(Image(name, target.length, sha256, release_counter=0))
    if len(chosen) != 1:
        raise VerificationError(
            f"the Director names no image for ECU {ecu.serial}; nothing to install"
        )
    return chosen[0]
