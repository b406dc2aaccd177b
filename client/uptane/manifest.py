"""Uptane version reports: what each ECU has installed, signed with that ECU's own key.

Two documents, both JSON envelopes ``{"signed": {...}, "signatures": [{"keyid", "sig"}]}``
signed over the canonical JSON of ``signed`` (as TUF metadata is):

- an **ECU version report**, made and signed by one ECU (the primary or a secondary)::

      {"ecu_serial", "installed_image": {"filename", "length", "hashes": {"sha256"}},
       "attack_detected", "latest_time", "nonce"}

- the **vehicle version manifest**, made and signed by the primary: the VIN, the primary's
  serial and every ECU's signed report, sent at each check-in.

The server accepts a manifest only when every report is signed by its ECU's registered key,
names a known ECU, and carries a nonce it has never seen for the vehicle. A secondary builds
its report with :func:`ecu_version_report` and :func:`sign_report`, and hands the result to
the primary, which passes it to :func:`vehicle_manifest` unchanged.

Typical use on the primary::

    key = EcuKey.load(path)                         # or EcuKey.generate(path) at provisioning
    report = sign_report(ecu_version_report(serial, image_name, length, sha256), key)
    manifest = vehicle_manifest(vin, serial, [report, *secondary_reports], key)
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ed25519
from securesystemslib.formats import encode_canonical
from securesystemslib.signer import CryptoSigner, Signer, SSlibKey

from client.errors import StateError

NONCE_BYTES = 16
MAX_MANIFEST_BYTES = 64 * 1024  # a vehicle of 64 ECUs stays well below


@dataclass(frozen=True)
class EcuKey:
    """An ECU's signing key: an Ed25519 private key kept in one PEM file on the ECU."""

    signer: Signer

    @property
    def public_key(self) -> SSlibKey:
        """The public key the server registers for the ECU at provisioning."""
        key = self.signer.public_key
        assert isinstance(key, SSlibKey)  # noqa: S101 - CryptoSigner keys are SSlibKeys
        return key

    def public_key_json(self) -> str:
        """The public key as the fleet registry stores it (securesystemslib key JSON)."""
        return json.dumps({"keyid": self.public_key.keyid, **self.public_key.to_dict()})

    @classmethod
    def generate(cls, path: Path) -> EcuKey:
        """Creates a new key at ``path`` (mode 0600); an existing file is never replaced.

        Raises:
            StateError: ``path`` exists or cannot be written.
        """
        private_key = ed25519.Ed25519PrivateKey.generate()
        pem = private_key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
        try:
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            with os.fdopen(fd, "wb") as file:
                file.write(pem)
        except OSError as exc:
            raise StateError(f"cannot create the ECU key {path}: {exc}") from exc
        return cls(CryptoSigner(private_key))

    @classmethod
    def load(cls, path: Path) -> EcuKey:
        """Reads the ECU's key.

        Raises:
            StateError: The file is missing or not a PEM private key.
        """
        try:
            private_key = serialization.load_pem_private_key(path.read_bytes(), password=None)
        except (OSError, ValueError) as exc:
            raise StateError(
                f"cannot read the ECU key {path}: {exc}; the ECU must be reprovisioned"
            ) from exc
        return cls(CryptoSigner(private_key))


def new_nonce() -> str:
    """A fresh random nonce (hex); a new one for every report."""
    return os.urandom(NONCE_BYTES).hex()


def ecu_version_report(
    ecu_serial: str,
    image_name: str,
    length: int,
    sha256: str,
    *,
    attack_detected: str = "",
    nonce: str | None = None,
    now: datetime | None = None,
) -> dict[str, Any]:
    """The unsigned version report of one ECU.

    Args:
        ecu_serial: The ECU's serial.
        image_name: The installed image's target name (empty when unknown, e.g. factory).
        length: The installed image's length in bytes.
        sha256: The installed image's SHA-256 (hex; empty when unknown).
        attack_detected: The attack the ECU detected last cycle, empty if none.
        nonce: The report's nonce (default: a fresh one).
        now: The ECU's current time (default: the clock).
    """
    moment = (now or datetime.now(UTC)).astimezone(UTC).replace(microsecond=0)
    return {
        "ecu_serial": ecu_serial,
        "installed_image": {
            "filename": image_name,
            "length": length,
            "hashes": {"sha256": sha256},
        },
        "attack_detected": attack_detected,
        "latest_time": moment.isoformat().replace("+00:00", "Z"),
        "nonce": nonce or new_nonce(),
    }


def canonical_bytes(signed: dict[str, Any]) -> bytes:
    """The bytes a report's or manifest's signature covers (canonical JSON)."""
    encoded = encode_canonical(signed)
    assert encoded is not None  # noqa: S101 - returns None only when writing to a callback
    return encoded.encode()


def sign_report(signed: dict[str, Any], key: EcuKey) -> dict[str, Any]:
    """``signed`` in an envelope signed with ``key``."""
    signature = key.signer.sign(canonical_bytes(signed))
    return {"signed": signed, "signatures": [signature.to_dict()]}


def vehicle_manifest(
    vin: str,
    primary_serial: str,
    reports: list[dict[str, Any]],
    primary_key: EcuKey,
    *,
    heartbeat: dict[str, Any] | None = None,
) -> bytes:
    """The vehicle version manifest: every signed ECU report, signed by the primary.

    Args:
        vin: The vehicle.
        primary_serial: The primary ECU's serial.
        reports: Every ECU's signed version report.
        primary_key: The primary's key.
        heartbeat: The commitment to a heartbeat chain
            (``client.uptane.heartbeat.HeartbeatChain.commitment``), signed with the rest.

    Returns:
        The manifest as sent in ``CheckInRequest.manifest`` (UTF-8 JSON).
    """
    signed: dict[str, Any] = {
        "vin": vin,
        "primary_ecu_serial": primary_serial,
        "ecu_version_reports": reports,
    }
    if heartbeat is not None:
        signed["heartbeat"] = heartbeat
    return json.dumps(sign_report(signed, primary_key), sort_keys=True).encode()
