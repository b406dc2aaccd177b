"""Vehicle version manifests (``client.uptane.manifest``): verified, replay-checked, kept.

A manifest is accepted only when

- the primary ECU's key signed the manifest, and each ECU's own key signed its report;
- every report names an ECU registered for the vehicle, each at most once;
- it is fresh: no report repeats one of the vehicle's last ``RECENT_NONCES`` nonces, and the
  primary's report is not older than the last accepted one (a replayed manifest fails one
  of the two);

and then it becomes the vehicle's software inventory (``VehicleInventory``).

A manifest may commit, in its signed part, to a heartbeat hash chain
(``"heartbeat": {"anchor": hex(h_N), "length": N}``, :class:`HeartbeatCommitment`): the
vehicle's next check-ins, while its inventory stays the same, reveal the chain's links
instead of signing a manifest each time (``server.repository.manifest_gate``). Manifests
without it stay valid.

The primary's own report is signed by the same key as the manifest around it, whose
signature covers the report and its signature too; a check-in answered "nothing to do"
(which stores nothing) may skip that one redundant check (``primary_report_covered``),
and :func:`check_primary_report` makes it before the manifest is stored.
:func:`verify_manifest` and :func:`check_fresh` are pure; :func:`record_manifest` does the
database part. Refusals are ``PermissionDeniedError`` (signature, unknown ECU, replay) or
``InvalidArgumentError`` (malformed), each naming the ECU or the nonce.
"""

from __future__ import annotations

import functools
import json
import re
from collections.abc import Mapping
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from typing import Any, Final, Protocol

from nacl.exceptions import BadSignatureError
from nacl.signing import VerifyKey
from securesystemslib.exceptions import UnverifiedSignatureError, VerificationError
from securesystemslib.formats import encode_canonical
from securesystemslib.signer import Key, Signature
from sqlmodel import Session, select

from server.errors import InvalidArgumentError, PermissionDeniedError
from server.repository.models import VehicleInventory

MAX_MANIFEST_BYTES: Final = 64 * 1024
# The vehicle's most recent report nonces kept; older replays fail on the report time.
RECENT_NONCES: Final = 256
_NONCE: Final = re.compile(r"[0-9a-f]{32,128}")
HEARTBEAT_LINK_BYTES: Final = 32  # one SHA-256 digest
# The longest heartbeat chain a manifest may commit to (a vehicle polling every minute
# for two years); a longer one is refused as malformed.
MAX_HEARTBEAT_CHAIN: Final = 1 << 20
_ANCHOR: Final = re.compile(r"[0-9a-f]{64}")


@dataclass(frozen=True)
class EcuReport:
    """One verified ECU version report."""

    ecu_serial: str
    image_name: str
    length: int
    sha256: str
    attack_detected: str
    nonce: str
    latest_time: datetime


@dataclass(frozen=True)
class HeartbeatCommitment:
    """The heartbeat chain a signed manifest commits to: its last link and its length."""

    anchor: bytes  # h_N, 32 bytes
    length: int  # N: links h_(N-1) ... h_0 may be revealed, in that order


@dataclass(frozen=True)
class VerifiedManifest:
    """A manifest whose signatures, VIN and ECUs checked out (freshness not yet)."""

    vin: str
    primary_ecu_serial: str
    reports: tuple[EcuReport, ...]
    data: bytes = b""
    # False while the primary's own report signature (covered by the manifest's) is unchecked.
    primary_report_checked: bool = True
    # The heartbeat chain the manifest's signed part commits to, if any.
    heartbeat: HeartbeatCommitment | None = None

    @property
    def latest_time(self) -> datetime:
        """The primary's report time: the manifest's moment."""
        return next(r.latest_time for r in self.reports if r.ecu_serial == self.primary_ecu_serial)


@dataclass(frozen=True)
class Freshness:
    """What the vehicle's next manifest must be fresher than."""

    latest_time: datetime
    nonces: tuple[str, ...]


def verify_manifest(
    data: bytes,
    *,
    vin: str,
    ecu_keys: Mapping[str, Key],
    primary_report_covered: bool = False,
) -> VerifiedManifest:
    """Checks a vehicle version manifest against the vehicle's registered ECU keys.

    Args:
        data: The manifest as the vehicle sent it.
        vin: The vehicle that checked in.
        ecu_keys: The public key of each registered ECU, by serial.
        primary_report_covered: Skip the signature of the primary's own report, which the
            manifest's signature (same key) covers; the result then says so, and
            :func:`check_primary_report` must pass before it is stored.

    Raises:
        InvalidArgumentError: The manifest is too large or malformed.
        PermissionDeniedError: A signature does not verify, or the manifest names another
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
        skip = primary if primary_report_covered else None
        reports = [_report(entry, ecu_keys, skip) for entry in signed["ecu_version_reports"]]
        manifest_vin = str(signed["vin"])
        heartbeat = _commitment(signed.get("heartbeat"))
    except (ValueError, KeyError, TypeError) as error:
        raise InvalidArgumentError(f"the version manifest is malformed: {error!r}") from error
    if manifest_vin != vin:
        raise PermissionDeniedError(
            f"the version manifest is for vehicle {manifest_vin!r}, not {vin!r}: refused"
        )
    _check_signature(envelope, ecu_keys, primary, "the vehicle version manifest")
    serials = [report.ecu_serial for report in reports]
    if len(set(serials)) != len(serials):
        raise InvalidArgumentError("the version manifest reports one ECU twice")
    if primary not in serials:
        raise InvalidArgumentError(f"the version manifest has no report of primary {primary}")
    return VerifiedManifest(
        vin=vin,
        primary_ecu_serial=primary,
        reports=tuple(reports),
        data=data,
        primary_report_checked=not primary_report_covered,
        heartbeat=heartbeat,
    )


def check_primary_report(
    manifest: VerifiedManifest, ecu_keys: Mapping[str, Key]
) -> VerifiedManifest:
    """Completes a manifest verified with ``primary_report_covered``: the primary's report.

    Raises:
        PermissionDeniedError: The primary's report is not signed by the primary's key.
    """
    if manifest.primary_report_checked:
        return manifest
    primary = manifest.primary_ecu_serial
    entries = json.loads(manifest.data)["signed"]["ecu_version_reports"]
    for entry in entries:
        if str(entry["signed"]["ecu_serial"]) == primary:
            _check_signature(entry, ecu_keys, primary, f"the version report of ECU {primary}")
    return replace(manifest, primary_report_checked=True)


def check_fresh(manifest: VerifiedManifest, last: Freshness | None) -> Freshness:
    """Refuses a replayed manifest; returns what the next one must be fresher than.

    Args:
        manifest: The verified manifest.
        last: The freshness of the vehicle's last accepted manifest (None: the first).

    Raises:
        PermissionDeniedError: A report repeats a recent nonce (or one twice), or the
            primary's report is older than the last accepted one.
    """
    seen = set(last.nonces) if last is not None else set()
    for report in manifest.reports:
        if report.nonce in seen:
            raise PermissionDeniedError(
                f"ECU {report.ecu_serial} of {manifest.vin}: nonce {report.nonce} was sent "
                f"before (a replayed version manifest): refused; a vehicle makes a fresh nonce "
                f"for every report"
            )
        seen.add(report.nonce)
    if last is not None and manifest.latest_time < last.latest_time:
        raise PermissionDeniedError(
            f"ECU {manifest.primary_ecu_serial} of {manifest.vin}: the version report of "
            f"{manifest.latest_time.isoformat()} is older than the last accepted one "
            f"({last.latest_time.isoformat()}; a replayed version manifest): refused; check "
            f"the ECU's clock"
        )
    kept = (*(last.nonces if last is not None else ()), *(r.nonce for r in manifest.reports))
    return Freshness(latest_time=manifest.latest_time, nonces=kept[-RECENT_NONCES:])


class StoredInventory(Protocol):
    """What freshness needs of an inventory row (the model, or a row of its columns)."""

    @property
    def latest_time(self) -> datetime: ...

    @property
    def nonces(self) -> str: ...


def stored_freshness(row: StoredInventory | None) -> Freshness | None:
    """The freshness an inventory row holds (None: no manifest accepted yet)."""
    if row is None:
        return None
    moment = row.latest_time
    return Freshness(
        latest_time=moment if moment.tzinfo is not None else moment.replace(tzinfo=UTC),
        nonces=tuple(json.loads(row.nonces)),
    )


def record_manifest(session: Session, manifest: VerifiedManifest, *, now: datetime) -> Freshness:
    """Checks freshness against the stored inventory and stores the manifest as the new one.

    The vehicle's inventory row is locked (PostgreSQL) for the transaction, so two server
    processes cannot both accept one manifest.

    Returns:
        The vehicle's new freshness.

    Raises:
        PermissionDeniedError: The manifest is a replay (see :func:`check_fresh`).
    """
    row = session.exec(
        select(VehicleInventory).where(VehicleInventory.vin == manifest.vin).with_for_update()
    ).first()
    fresh = check_fresh(manifest, stored_freshness(row))
    if row is None:
        row = VehicleInventory(
            vin=manifest.vin,
            received_at=now,
            latest_time=fresh.latest_time,
            manifest=manifest.data,
        )
    row.received_at = now
    row.latest_time = fresh.latest_time
    row.nonces = json.dumps(list(fresh.nonces))
    row.manifest = manifest.data
    session.add(row)
    return fresh


def manifest_required(vin: str) -> PermissionDeniedError:
    """The refusal of a check-in without a manifest from a vehicle with ECU keys."""
    return PermissionDeniedError(
        f"vehicle {vin} has registered ECU keys: its check-in must carry a version "
        f"manifest signed by its ECUs; refused"
    )


def _commitment(raw: Any) -> HeartbeatCommitment | None:
    """The heartbeat commitment of a manifest's signed part (None when it has none).

    Raises:
        InvalidArgumentError: The commitment is malformed.
    """
    if raw is None:
        return None
    anchor, length = raw["anchor"], raw["length"]
    if not isinstance(anchor, str) or _ANCHOR.fullmatch(anchor) is None:
        raise InvalidArgumentError(
            "the version manifest's heartbeat anchor must be 64 lowercase hex digits (SHA-256)"
        )
    if isinstance(length, bool) or not isinstance(length, int):
        raise InvalidArgumentError("the version manifest's heartbeat length must be an integer")
    if not 1 <= length <= MAX_HEARTBEAT_CHAIN:
        raise InvalidArgumentError(
            f"the version manifest's heartbeat chain has {length} links; 1 to "
            f"{MAX_HEARTBEAT_CHAIN} allowed"
        )
    return HeartbeatCommitment(anchor=bytes.fromhex(anchor), length=length)


def _report(entry: Any, ecu_keys: Mapping[str, Key], covered: str | None) -> EcuReport:
    signed = entry["signed"]
    serial = str(signed["ecu_serial"])
    if serial not in ecu_keys:
        raise PermissionDeniedError(
            f"the version manifest reports ECU {serial!r}, which is not registered for the "
            f"vehicle (or has no key): refused; register the ECU with its key at provisioning"
        )
    if serial != covered:
        _check_signature(entry, ecu_keys, serial, f"the version report of ECU {serial}")
    image = signed["installed_image"]
    nonce = str(signed["nonce"])
    if _NONCE.fullmatch(nonce) is None:
        raise InvalidArgumentError(f"ECU {serial}: the nonce must be 32 to 128 hex digits")
    moment = datetime.fromisoformat(str(signed["latest_time"]))
    if moment.tzinfo is None:
        raise InvalidArgumentError(f"ECU {serial}: latest_time must carry a time zone (Z)")
    return EcuReport(
        ecu_serial=serial,
        image_name=str(image["filename"]),
        length=int(image["length"]),
        sha256=str(image["hashes"]["sha256"]),
        attack_detected=str(signed.get("attack_detected", "")),
        nonce=nonce,
        latest_time=moment.astimezone(UTC),
    )


def _check_signature(envelope: Any, keys: Mapping[str, Key], serial: str, what: str) -> None:
    key = keys.get(serial)
    if key is None:
        raise PermissionDeniedError(f"{what}: ECU {serial!r} has no registered key: refused")
    for raw in envelope.get("signatures", []):
        signature = Signature.from_dict(dict(raw))
        if signature.keyid != key.keyid:
            continue
        if _verifies(key, signature, envelope["signed"]):
            return
        break
    raise PermissionDeniedError(f"{what} is not signed by ECU {serial}'s registered key: refused")


def _verifies(key: Key, signature: Signature, signed: Any) -> bool:
    """Whether ``signature`` by ``key`` covers ``signed`` (its canonical JSON).

    Every check-in comes here, so the common case is made cheap: ``json.dumps`` with sorted
    keys and no spaces is byte for byte canonical JSON unless a string holds a control
    character, and a signature that verifies over those bytes was made over exactly this
    content; only when it does not is the slower canonical encoder asked. Ed25519 keys are
    verified with libsodium, the others through securesystemslib.
    """
    quick = json.dumps(signed, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()
    if _verify(key, signature, quick):
        return True
    canonical = (encode_canonical(signed) or "").encode()
    return canonical != quick and _verify(key, signature, canonical)


def _verify(key: Key, signature: Signature, payload: bytes) -> bool:
    if key.keytype == "ed25519" and key.scheme == "ed25519":
        try:
            _ed25519_key(str(key.keyval["public"])).verify(
                payload, bytes.fromhex(signature.signature)
            )
        except (BadSignatureError, ValueError, TypeError):
            return False
        return True
    try:
        key.verify_signature(signature, payload)
    except (UnverifiedSignatureError, VerificationError):
        return False
    return True


@functools.lru_cache(maxsize=65_536)
def _ed25519_key(public_hex: str) -> VerifyKey:
    return VerifyKey(bytes.fromhex(public_hex))
