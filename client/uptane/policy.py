"""Uptane full verification rules, pure: which Director images are ours, and do both
repositories agree on them. No I/O; every refusal names exactly what disagreed."""

from __future__ import annotations

import re
from typing import Any

from tuf.api.metadata import TargetFile, Targets

from client.config import EcuConfig
from client.errors import VerificationError
from client.images import Image

_TARGET_NAME = re.compile(r"[A-Za-z0-9._-]+")


def _custom(fields: dict[str, Any]) -> dict[str, Any]:
    custom = fields.get("custom")
    return custom if isinstance(custom, dict) else {}


def select_director_image(targets: Targets, *, vin: str, ecu: EcuConfig) -> TargetFile:
    """Return the one image the Director's targets name for ``ecu`` of this vehicle.

    Args:
        targets: The verified Director targets of this vehicle.
        vin: This vehicle's VIN; the targets must name it (anti-replay).
        ecu: The ECU that installs the image (the primary).

    Raises:
        VerificationError: The targets name another vehicle, carry delegations, name this
            ECU with another hardware id, or name no image or several for this ECU.
    """
    director_vin = _custom(targets.unrecognized_fields).get("vin")
    if director_vin != vin:
        raise VerificationError(
            f"the Director targets are for vehicle {director_vin!r}, not {vin!r}; refused"
        )
    if targets.delegations is not None:
        raise VerificationError("the Director targets carry delegations, which Uptane forbids")
    chosen: list[TargetFile] = []
    for name, target_file in targets.targets.items():
        ecus = _custom(target_file.unrecognized_fields).get("ecus")
        if not isinstance(ecus, dict) or ecu.serial not in ecus:
            continue
        entry = ecus[ecu.serial]
        hardware_id = entry.get("hardware_id") if isinstance(entry, dict) else None
        if hardware_id != ecu.hardware_id:
            raise VerificationError(
                f"wrong hardware id: the Director assigns {name} to ECU {ecu.serial} as "
                f"hardware id {hardware_id!r}, but that ECU is {ecu.hardware_id!r}"
            )
        chosen.append(target_file)
    if len(chosen) != 1:
        names = ", ".join(sorted(target.path for target in chosen)) or "none"
        raise VerificationError(
            f"the Director must name exactly one image for ECU {ecu.serial}; it names {names}"
        )
    return chosen[0]


def check_agreement(
    director: TargetFile,
    image_repo: TargetFile | None,
    *,
    hardware_id: str,
    release_counter_floor: int,
) -> Image:
    """Check that the Image repository agrees with the Director on one image.

    Args:
        director: The Director's target for our ECU.
        image_repo: The Image repository's target of the same name, None if absent.
        hardware_id: Our ECU's hardware id.
        release_counter_floor: The release counter of the installed image.

    Returns:
        The verified image.

    Raises:
        VerificationError: Naming what disagreed: presence, length, a hash, the hardware
            id, or a release counter lower than the installed one.
    """
    name = director.path
    if not _TARGET_NAME.fullmatch(name):
        raise VerificationError(f"the Director names an invalid image {name!r}")
    if image_repo is None:
        raise VerificationError(
            f"the Director and the Image repository disagree: the Image repository has no "
            f"image {name}"
        )
    if director.length != image_repo.length:
        raise VerificationError(
            f"{name}: the Director and the Image repository disagree: the Director signs "
            f"a length of {director.length} bytes, the Image repository {image_repo.length}"
        )
    if "sha256" not in director.hashes or "sha256" not in image_repo.hashes:
        raise VerificationError(f"{name}: both repositories must sign a sha256 hash")
    for algorithm in sorted(director.hashes.keys() & image_repo.hashes.keys()):
        if director.hashes[algorithm] != image_repo.hashes[algorithm]:
            raise VerificationError(
                f"{name}: the Director and the Image repository disagree: the Director "
                f"signs {algorithm} {director.hashes[algorithm]}, the Image repository "
                f"{image_repo.hashes[algorithm]}"
            )
    custom = _custom(image_repo.unrecognized_fields)
    hardware_ids = custom.get("hardware_ids")
    if not isinstance(hardware_ids, list) or hardware_id not in hardware_ids:
        raise VerificationError(
            f"{name}: wrong hardware id: the Image repository lists hardware ids "
            f"{hardware_ids!r}, not this ECU's {hardware_id!r}"
        )
    release_counter = custom.get("release_counter")
    if not isinstance(release_counter, int) or isinstance(release_counter, bool):
        raise VerificationError(f"{name}: the Image repository signs no release counter")
    if release_counter < release_counter_floor:
        raise VerificationError(
            f"{name}: rollback attack: release counter {release_counter} is lower than "
            f"the installed image's {release_counter_floor}; refused"
        )
    return Image(
        target=name,
        length=director.length,
        sha256=director.hashes["sha256"],
        release_counter=release_counter,
    )
