"""The fleet registry on SQLite and PostgreSQL."""

from __future__ import annotations

import pytest

from server.errors import AlreadyExistsError, InvalidArgumentError, NotFoundError
from server.fleet.registry import EcuSpec, get_vehicle, provision_vehicle
from server.store import Database

VIN = "WSF00000000000001"


def gateway(serial: str = "gw-1", hardware_id: str = "gateway-x1") -> EcuSpec:
    return EcuSpec(serial=serial, hardware_id=hardware_id, primary=True)


def test_provisioned_vehicle_reads_back_with_its_ecus(database: Database) -> None:
    provision_vehicle(
        database,
        vin=VIN,
        model="sedan",
        ecus=[gateway(), EcuSpec("brake-1", "brake-ecu-v2")],
    )
    vehicle = get_vehicle(database, VIN)
    assert vehicle.model == "sedan"
    assert {(e.serial, e.hardware_id, e.primary) for e in vehicle.ecus} == {
        ("gw-1", "gateway-x1", True),
        ("brake-1", "brake-ecu-v2", False),
    }
    assert vehicle.last_seen is None


def test_a_vin_is_registered_once(database: Database) -> None:
    provision_vehicle(database, vin=VIN, model="sedan", ecus=[gateway()])
    with pytest.raises(AlreadyExistsError, match=VIN):
        provision_vehicle(database, vin=VIN, model="sedan", ecus=[gateway("gw-2")])


def test_an_ecu_serial_belongs_to_one_vehicle(database: Database) -> None:
    provision_vehicle(database, vin=VIN, model="sedan", ecus=[gateway()])
    with pytest.raises(AlreadyExistsError, match="gw-1"):
        provision_vehicle(database, vin="WSF00000000000002", model="sedan", ecus=[gateway()])
    with pytest.raises(NotFoundError):
        get_vehicle(database, "WSF00000000000002")


@pytest.mark.parametrize(
    ("vin", "ecus", "message"),
    [
        ("WSF0000000000001", [gateway()], "VIN"),  # 16 characters
        ("WSF0000000000000I", [gateway()], "VIN"),  # I is not in the VIN alphabet
        (VIN, [], "at least one ECU"),
        (VIN, [EcuSpec("a", "hw")], "primary"),
        (VIN, [gateway("a"), gateway("a")], "unique"),
        (VIN, [gateway(serial="../etc")], "ECU serial"),
    ],
)
def test_malformed_vehicles_are_refused(
    database: Database, vin: str, ecus: list[EcuSpec], message: str
) -> None:
    with pytest.raises(InvalidArgumentError, match=message):
        provision_vehicle(database, vin=vin, model="sedan", ecus=ecus)
