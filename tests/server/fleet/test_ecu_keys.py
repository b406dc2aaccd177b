"""ECU key pairs at provisioning: made in the vehicle's folder, never in git, public key stored."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from client.uptane.manifest import EcuKey
from server.cli.ecu_keys import KeyPlacementError, ecu_key_path, ecu_public_keys
from server.errors import InvalidArgumentError
from server.fleet.registry import EcuSpec, ecu_public_key, get_vehicle, provision_vehicle
from server.store import Database

VIN = "WSF0KEYS000000001"


def test_keys_are_made_once_and_their_public_halves_registered(
    tmp_path: Path, database: Database
) -> None:
    out = tmp_path / "vehicle"
    public = ecu_public_keys(out, ["gw-1", "brk-2"])
    assert ecu_key_path(out, "gw-1").stat().st_mode & 0o777 == 0o600
    assert ecu_public_keys(out, ["gw-1", "brk-2"]) == public  # a repeated run reuses them
    assert (
        json.loads(public["gw-1"])["keyid"]
        == EcuKey.load(ecu_key_path(out, "gw-1")).public_key.keyid
    )
    provision_vehicle(
        database,
        vin=VIN,
        model="sedan",
        ecus=[
            EcuSpec("gw-1", "gw-x", True, public_key=public["gw-1"]),
            EcuSpec("brk-2", "brk-b", public_key=public["brk-2"]),
        ],
    )
    stored = {ecu.serial: ecu.public_key for ecu in get_vehicle(database, VIN).ecus}
    assert stored == public
    assert ecu_public_key("gw-1", stored["gw-1"]).keytype == "ed25519"


def test_keys_never_go_into_a_git_work_tree(tmp_path: Path) -> None:
    (tmp_path / "repo" / ".git").mkdir(parents=True)
    with pytest.raises(KeyPlacementError, match="never go into git"):
        ecu_public_keys(tmp_path / "repo" / "vehicles" / VIN, ["gw-1"])
    assert not (tmp_path / "repo" / "vehicles").exists()


def test_a_malformed_public_key_is_refused_at_provisioning(database: Database) -> None:
    with pytest.raises(InvalidArgumentError, match="ECU gw-1: the public key"):
        provision_vehicle(
            database, vin=VIN, model="sedan", ecus=[EcuSpec("gw-1", "gw-x", True, public_key="{}")]
        )
