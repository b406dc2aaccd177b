"""Vehicle version manifests signed by real ECU keys: verified, replay refused, recorded."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path

import pytest
from securesystemslib.signer import Key
from sqlmodel import select

from client.uptane.manifest import EcuKey, ecu_version_report, sign_report, vehicle_manifest
from server.errors import InvalidArgumentError, PermissionDeniedError
from server.repository.manifests import check_fresh, record_manifest, verify_manifest
from server.repository.models import VehicleInventory
from server.store import Database

VIN = "WSF00000000000041"
SHA = "ab" * 32


@pytest.fixture
def ecus(tmp_path: Path) -> dict[str, EcuKey]:
    return {serial: EcuKey.generate(tmp_path / f"{serial}.key") for serial in ("gw-1", "brk-2")}


def registered(ecus: dict[str, EcuKey]) -> dict[str, Key]:
    return {serial: key.public_key for serial, key in ecus.items()}


def manifest(ecus: dict[str, EcuKey], *, nonces: tuple[str, str] | None = None) -> bytes:
    reports = [
        sign_report(
            ecu_version_report(
                serial, f"{serial}-fw-1.0", 1024, SHA, nonce=nonces[i] if nonces else None
            ),
            key,
        )
        for i, (serial, key) in enumerate(ecus.items())
    ]
    return vehicle_manifest(VIN, "gw-1", reports, ecus["gw-1"])


def test_a_manifest_signed_by_each_ecu_is_verified_and_recorded(
    ecus: dict[str, EcuKey], database: Database
) -> None:
    data = manifest(ecus)
    verified = verify_manifest(data, vin=VIN, ecu_keys=registered(ecus))
    assert [r.ecu_serial for r in verified.reports] == ["gw-1", "brk-2"]
    assert verified.reports[1].image_name == "brk-2-fw-1.0"
    with database.session() as session:
        record_manifest(session, verified, now=datetime.now(UTC))
    with database.session() as session:
        [inventory] = session.exec(select(VehicleInventory)).all()
    assert inventory.vin == VIN
    assert inventory.manifest == data
    assert set(json.loads(inventory.nonces)) == {r.nonce for r in verified.reports}


def test_a_replayed_manifest_with_an_old_nonce_is_refused(
    ecus: dict[str, EcuKey], database: Database
) -> None:
    old = manifest(ecus)
    keys = registered(ecus)
    with database.session() as session:
        record_manifest(
            session, verify_manifest(old, vin=VIN, ecu_keys=keys), now=datetime.now(UTC)
        )
    fresh = manifest(ecus)
    with database.session() as session:
        record_manifest(
            session, verify_manifest(fresh, vin=VIN, ecu_keys=keys), now=datetime.now(UTC)
        )
    with (
        pytest.raises(PermissionDeniedError, match=r"ECU gw-1 .*nonce [0-9a-f]+ was sent before"),
        database.session() as session,
    ):
        record_manifest(
            session, verify_manifest(old, vin=VIN, ecu_keys=keys), now=datetime.now(UTC)
        )
    with database.session() as session:
        [inventory] = session.exec(select(VehicleInventory)).all()
    assert inventory.manifest == fresh


def test_a_manifest_older_than_the_last_one_is_refused_even_with_new_nonces(
    ecus: dict[str, EcuKey],
) -> None:
    keys = registered(ecus)
    newer = verify_manifest(manifest(ecus), vin=VIN, ecu_keys=keys)
    last = check_fresh(newer, None)
    reports = [
        sign_report(
            ecu_version_report(serial, "fw", 1, SHA, now=datetime(2020, 1, 1, tzinfo=UTC)), key
        )
        for serial, key in ecus.items()
    ]
    older = vehicle_manifest(VIN, "gw-1", reports, ecus["gw-1"])
    with pytest.raises(PermissionDeniedError, match=r"ECU gw-1 .* older than the last accepted"):
        check_fresh(verify_manifest(older, vin=VIN, ecu_keys=keys), last)
    assert (
        len(check_fresh(verify_manifest(manifest(ecus), vin=VIN, ecu_keys=keys), last).nonces) == 4
    )


def test_one_nonce_twice_in_a_manifest_is_refused(ecus: dict[str, EcuKey]) -> None:
    twice = manifest(ecus, nonces=("ab" * 16, "ab" * 16))
    with pytest.raises(PermissionDeniedError, match="nonce abab"):
        check_fresh(verify_manifest(twice, vin=VIN, ecu_keys=registered(ecus)), None)


def test_a_report_not_signed_by_its_ecu_is_refused(ecus: dict[str, EcuKey], tmp_path: Path) -> None:
    impostor = EcuKey.generate(tmp_path / "impostor.key")
    forged = manifest({"gw-1": ecus["gw-1"], "brk-2": impostor})
    with pytest.raises(PermissionDeniedError, match="not signed by ECU brk-2"):
        verify_manifest(forged, vin=VIN, ecu_keys=registered(ecus))


def test_a_tampered_report_is_refused(ecus: dict[str, EcuKey]) -> None:
    envelope = json.loads(manifest(ecus))
    envelope["signed"]["ecu_version_reports"][1]["signed"]["installed_image"]["length"] = 1
    with pytest.raises(PermissionDeniedError, match="brk-2"):
        verify_manifest(json.dumps(envelope).encode(), vin=VIN, ecu_keys=registered(ecus))


def test_unknown_ecus_other_vehicles_and_garbage_are_refused(ecus: dict[str, EcuKey]) -> None:
    keys = registered(ecus)
    with pytest.raises(PermissionDeniedError, match="not registered"):
        verify_manifest(manifest(ecus), vin=VIN, ecu_keys={"gw-1": keys["gw-1"]})
    with pytest.raises(PermissionDeniedError, match="for vehicle"):
        verify_manifest(manifest(ecus), vin="WSF00000000000099", ecu_keys=keys)
    with pytest.raises(InvalidArgumentError, match="malformed"):
        verify_manifest(b"{}", vin=VIN, ecu_keys=keys)
    with pytest.raises(InvalidArgumentError, match="bytes"):
        verify_manifest(b" " * 70_000, vin=VIN, ecu_keys=keys)


def test_an_ecu_key_is_never_overwritten(tmp_path: Path) -> None:
    from client.errors import StateError

    key = EcuKey.generate(tmp_path / "gw.key")
    assert EcuKey.load(tmp_path / "gw.key").public_key == key.public_key
    with pytest.raises(StateError, match="cannot create"):
        EcuKey.generate(tmp_path / "gw.key")
    assert json.loads(key.public_key_json())["keyid"] == key.public_key.keyid


def test_a_report_whose_canonical_form_differs_from_plain_json_still_verifies(
    ecus: dict[str, EcuKey],
) -> None:
    """Control characters are escaped by json.dumps but not by canonical JSON: both agree."""
    reports = [
        sign_report(ecu_version_report(serial, "fw\t1.0\n", 1024, SHA), key)
        for serial, key in ecus.items()
    ]
    data = vehicle_manifest(VIN, "gw-1", reports, ecus["gw-1"])
    verified = verify_manifest(data, vin=VIN, ecu_keys=registered(ecus))
    assert [r.image_name for r in verified.reports] == ["fw\t1.0\n", "fw\t1.0\n"]
    envelope = json.loads(data)
    envelope["signed"]["ecu_version_reports"][1]["signed"]["installed_image"]["filename"] = (
        "fw\t1.1\n"
    )
    with pytest.raises(PermissionDeniedError, match="brk-2"):
        verify_manifest(json.dumps(envelope).encode(), vin=VIN, ecu_keys=registered(ecus))
