"""Vehicle version manifests (``client.uptane.manifest``): verified, replay-checked, kept.

A manifest is accepted only when

- the primary ECU's key signed the manifest, and each ECU's own key signed its report;
- every report names an ECU registered for the vehicle, each at most once;
- no report repeats a nonce the vehicle used before (a replayed manifest);

and then it becomes the vehicle's software inventory (``VehicleInventory``).
:func:`verify_manifest` is pure; :func:`record_manifest` does the database part.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, Final

from securesystemslib.exceptions import UnverifiedSignatureError, VerificationError
from securesystemslib.formats import encode_canonical
from securesystemslib.signer import Key, Signature
from sqlmodel import Session, col, delete, select

from server.errors import FailedPreconditionError, InvalidArgumentError, UnauthenticatedError
from server.repository.models import ManifestNonce, VehicleInventory

MAX_MANIFEST_BYTES: Final = 64 * 1024
# Nonces are remembered this long; a manifest older than this is refused by its time.
NONCE_MEMORY: Final = timedelta(days=30)
_NONCE: Final = re.compile(r"[0-9a-f]{32,128}")


@dataclass(frozen=True)
class EcuReport:
    """One verified ECU version report."""

    ecu_serial: str
    image_name: str
    length: int
    sha256: str
    attack_detected: str
    nonce: str


@dataclass(frozen=True)
class VerifiedManifest:
    """A manifest whose signatures, VIN and ECUs checked out (nonces not yet)."""

    vin: str
    primary_ecu_serial: str
    reports: tuple[EcuReport, ...]


def verify_manifest(data: bytes, *, vin: str, ecu_keys: Mapping[str, Key]) -> VerifiedManifest:
    """Checks a vehicle version manifest against the vehicle's registered ECU keys.

    Args:
        data: The manifest as the vehicle sent it.
        vin: The vehicle that checked in.
        ecu_keys: The public key of each registered ECU, by serial.

    Raises:
        InvalidArgumentError: The manifest is too large or malformed.
        UnauthenticatedError: A signature does not verify, or the manifest names another
            vehicle or an unknown ECU.
    """
    if len(data) > MAX_MANIFEST_BYTES:
        raise InvalidArgumentError(
            f"the version manifest has {len(data)} bytes, at most {MAX_MANIFEST_BYTES} allowed"
        )
    try:
        envelope = json.loads(data)
        signed = envelope["signed"]
        primary = str(signed["primary_ecu_serial"])
        reports = [_report(entry, ecu_keys) for entry in signed["ecu_version_reports"]]
        manifest_vin = str(signed["vin"])
    except (ValueError, KeyError, TypeError) as error:
        raise InvalidArgumentError(f"the version manifest is malformed: {error!r}") from error
    if manifest_vin != vin:
        raise UnauthenticatedError(
            f"the version manifest is for vehicle {manifest_vin!r}, not {vin!r}: refused"
        )
    _check_signature(envelope, ecu_keys, primary, "the vehicle version manifest")
    serials = [report.ecu_serial for report in reports]
    if len(set(serials)) != len(serials):
        raise InvalidArgumentError("the version manifest reports one ECU twice")
    if primary not in serials:
        raise InvalidArgumentError(f"the version manifest has no report of primary {primary}")
    return VerifiedManifest(vin=vin, primary_ecu_serial=primary, reports=tuple(reports))


def record_manifest(
    session: Session, manifest: VerifiedManifest, data: bytes, *, now: datetime
) -> None:
    """Refuses replayed nonces, remembers the new ones, stores the inventory.

    Raises:
        FailedPreconditionError: A report carries a nonce the vehicle used before.
    """
    nonces = [report.nonce for report in manifest.reports]
    seen = session.exec(
        select(ManifestNonce.nonce).where(
            ManifestNonce.vin == manifest.vin, col(ManifestNonce.nonce).in_(nonces)
        )
    ).all()
    if seen or len(set(nonces)) != len(nonces):
        raise FailedPreconditionError(
            f"the version manifest of {manifest.vin} repeats a nonce it sent before "
            f"(a replayed manifest): refused; a vehicle makes a fresh nonce every check-in"
        )
    session.exec(
        delete(ManifestNonce).where(
            col(ManifestNonce.vin) == manifest.vin, col(ManifestNonce.seen_at) < now - NONCE_MEMORY
        )
    )
    for nonce in nonces:
        session.add(ManifestNonce(vin=manifest.vin, nonce=nonce, seen_at=now))
    session.merge(VehicleInventory(vin=manifest.vin, received_at=now, manifest=data))


def _report(entry: Any, ecu_keys: Mapping[str, Key]) -> EcuReport:
    signed = entry["signed"]
    serial = str(signed["ecu_serial"])
    if serial not in ecu_keys:
        raise UnauthenticatedError(
            f"the version manifest reports ECU {serial!r}, which is not registered for the "
            f"vehicle (or has no key): register it at provisioning"
        )
    _check_signature(entry, ecu_keys, serial, f"the version report of ECU {serial}")
    image = signed["installed_image"]
    nonce = str(signed["nonce"])
    if _NONCE.fullmatch(nonce) is None:
        raise InvalidArgumentError(f"ECU {serial}: the nonce must be 32 to 128 hex digits")
    return EcuReport(
        ecu_serial=serial,
        image_name=str(image["filename"]),
        length=int(image["length"]),
        sha256=str(image["hashes"]["sha256"]),
        attack_detected=str(signed.get("attack_detected", "")),
        nonce=nonce,
    )


def _check_signature(envelope: Any, keys: Mapping[str, Key], serial: str, what: str) -> None:
    key = keys.get(serial)
    if key is None:
        raise UnauthenticatedError(f"{what}: ECU {serial!r} has no registered key")
    encoded = encode_canonical(envelope["signed"])
    payload = (encoded or "").encode()
    for raw in envelope.get("signatures", []):
        signature = Signature.from_dict(dict(raw))
        if signature.keyid != key.keyid:
            continue
        try:
            key.verify_signature(signature, payload)
        except (UnverifiedSignatureError, VerificationError):
            break
        return
    raise UnauthenticatedError(f"{what} is not signed by ECU {serial}'s registered key: refused")
