"""The check-in's manifest gate: cheap where it is safe, never less strict where it matters.

A vehicle without keys is trusted to have none only while the offer epoch stands still,
and giving an ECU a key moves the epoch; a quiet check-in skips only the signature the
manifest's own signature covers, and nothing is stored without it.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import event, update
from sqlmodel import select

from client.uptane.manifest import EcuKey, ecu_version_report, sign_report, vehicle_manifest
from server.campaigns.offers import QuietVehicles, read_epoch
from server.errors import PermissionDeniedError
from server.fleet.models import Ecu
from server.fleet.registry import EcuSpec, provision_vehicle
from server.repository.manifest_gate import ManifestGate
from server.repository.models import VehicleInventory
from server.store import Database

VIN = "WSF00000000000077"
SERIAL = "gw-77"
SHA = "cd" * 32


@pytest.fixture
def reads(database: Database) -> Iterator[list[str]]:
    """Every statement that reads the fleet's ECUs while the test runs."""
    seen: list[str] = []

    def note(_conn: object, _cursor: object, statement: str, *_: object) -> None:
        if statement.lstrip().upper().startswith("SELECT") and "fleet_ecu" in statement:
            seen.append(statement)

    event.listen(database.engine, "before_cursor_execute", note)
    yield seen
    event.remove(database.engine, "before_cursor_execute", note)


def _epoch_source(database: Database) -> QuietVehicles:
    quiet = QuietVehicles()
    quiet.refresh(database)
    return quiet


def _manifest(key: EcuKey, *, primary_report_key: EcuKey | None = None) -> bytes:
    report = sign_report(
        ecu_version_report(SERIAL, "gw-fw-1.0", 10, SHA), primary_report_key or key
    )
    return vehicle_manifest(VIN, SERIAL, [report], key)


def test_no_keys_is_trusted_until_an_ecu_gets_a_key(
    database: Database, tmp_path: Path, reads: list[str]
) -> None:
    provision_vehicle(database, vin=VIN, model="sedan", ecus=[EcuSpec(SERIAL, "gw-x1", True)])
    quiet = _epoch_source(database)
    gate = ManifestGate(database, offer_epoch=lambda: quiet.epoch)
    ecus = [EcuSpec(SERIAL, "gw-x1", True)]

    assert asyncio.run(gate.admit(VIN, b"", ecus)) is None
    reads.clear()
    for _ in range(5):
        assert asyncio.run(gate.admit(VIN, b"", ecus)) is None
    assert reads == [], "a keyless vehicle is not read again while the epoch stands still"

    key = EcuKey.generate(tmp_path / "gw.key")
    before = read_epoch(database)
    with database.session() as session:
        session.exec(
            update(Ecu).where(Ecu.serial == SERIAL).values(public_key=key.public_key_json())
        )  # type: ignore[call-overload]
    assert read_epoch(database) > before, "a new ECU key moves the offer epoch"
    quiet.refresh(database)

    with pytest.raises(PermissionDeniedError, match="must carry a version manifest"):
        asyncio.run(gate.admit(VIN, b"", ecus))
    admitted = asyncio.run(gate.admit(VIN, _manifest(key), [EcuSpec(SERIAL, "gw-x1", True, SHA)]))
    assert admitted is not None and admitted.vin == VIN


def test_without_an_epoch_a_keyless_vehicle_is_read_again_later(
    database: Database, reads: list[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    provision_vehicle(database, vin=VIN, model="sedan", ecus=[EcuSpec(SERIAL, "gw-x1", True)])
    gate = ManifestGate(database)  # no epoch source: the time-based re-read
    ecus = [EcuSpec(SERIAL, "gw-x1", True)]
    assert asyncio.run(gate.admit(VIN, b"", ecus)) is None
    reads.clear()
    assert asyncio.run(gate.admit(VIN, b"", ecus)) is None
    assert reads == []
    monkeypatch.setattr("server.repository.manifest_gate.KEYLESS_RECHECK_SECONDS", -1.0)
    assert asyncio.run(gate.admit(VIN, b"", ecus)) is None
    assert len(reads) == 1


def test_a_quiet_check_in_skips_only_the_covered_signature_and_never_stores_it(
    database: Database, tmp_path: Path
) -> None:
    key = EcuKey.generate(tmp_path / "gw.key")
    other = EcuKey.generate(tmp_path / "other.key")
    provision_vehicle(
        database,
        vin=VIN,
        model="sedan",
        ecus=[EcuSpec(SERIAL, "gw-x1", True, "", key.public_key_json())],
    )
    gate = ManifestGate(database)
    ecus = [EcuSpec(SERIAL, "gw-x1", True, SHA)]
    # The primary signs the manifest, but its own report carries another key's signature.
    odd = _manifest(key, primary_report_key=other)

    with pytest.raises(PermissionDeniedError, match=f"version report of ECU {SERIAL}"):
        asyncio.run(gate.admit(VIN, odd, ecus))
    quietly = asyncio.run(gate.admit(VIN, odd, ecus, quiet=True))
    assert quietly is not None and not quietly.primary_report_checked
    with pytest.raises(PermissionDeniedError, match=f"version report of ECU {SERIAL}"):
        gate.record(quietly)
    with database.session() as session:
        assert session.exec(select(VehicleInventory)).all() == []

    # A manifest signed throughout: admitted quietly, completed and stored.
    good = asyncio.run(gate.admit(VIN, _manifest(key), ecus, quiet=True))
    assert good is not None
    gate.record(good)
    with database.session() as session:
        [stored] = session.exec(select(VehicleInventory)).all()
    assert stored.manifest == good.data

    # The outer signature is never skipped.
    with pytest.raises(PermissionDeniedError, match="vehicle version manifest"):
        asyncio.run(gate.admit(VIN, _manifest(other, primary_report_key=key), ecus, quiet=True))


def test_a_vehicle_confirmed_keyless_by_its_check_in_is_held_until_the_epoch_moves(
    database: Database, tmp_path: Path, reads: list[str]
) -> None:
    provision_vehicle(database, vin=VIN, model="sedan", ecus=[EcuSpec(SERIAL, "gw-x1", True)])
    quiet = _epoch_source(database)
    gate = ManifestGate(database, offer_epoch=lambda: quiet.epoch)
    ecus = [EcuSpec(SERIAL, "gw-x1", True)]
    assert gate.keyless_to_confirm(VIN), "a vehicle new to the gate"
    reads.clear()

    gate.confirm_keyless(VIN, gate.epoch_now())  # its check-in's read found no keys
    assert not gate.needs_read(VIN) and not gate.keyless_to_confirm(VIN)
    assert asyncio.run(gate.admit(VIN, b"", ecus)) is None
    assert reads == [], "held without a read of the gate's own"

    key = EcuKey.generate(tmp_path / "gw.key")
    with database.session() as session:
        session.exec(
            update(Ecu).where(Ecu.serial == SERIAL).values(public_key=key.public_key_json())
        )  # type: ignore[call-overload]
    quiet.refresh(database)
    assert gate.needs_read(VIN) and gate.keyless_to_confirm(VIN), "the epoch moved"
    with pytest.raises(PermissionDeniedError, match="must carry a version manifest"):
        asyncio.run(gate.admit(VIN, b"", ecus))
    gate.confirm_keyless(VIN, gate.epoch_now())  # a late confirmation must not undo the keys
    assert not gate.keyless_to_confirm(VIN)
    with pytest.raises(PermissionDeniedError, match="must carry a version manifest"):
        asyncio.run(gate.admit(VIN, b"", ecus))
