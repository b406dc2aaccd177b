"""Bulk import from CSV (100,000 vehicles) and selectors, on SQLite and PostgreSQL."""

from __future__ import annotations

import time
from datetime import UTC, datetime

import pytest

from server.errors import AlreadyExistsError, InvalidArgumentError
from server.fleet.csv_import import import_vehicles
from server.fleet.models import Ecu
from server.fleet.registry import list_vehicles
from server.fleet.selectors import FleetSelector
from server.releases.models import Image
from server.store import Database

HEADER = "vin,model,region,site,tags,ecus\n"


def row(n: int) -> str:
    tags = "pilot eu-homologated" if n % 10 == 0 else "eu-homologated"
    ecus = f"gw-{n}:gateway-x1:primary" + (f";tcu-{n}:tcu-a" if n % 3 == 0 else "")
    model = "sedan" if n % 2 else "van"
    region = "eu" if n % 4 else "us"
    return f"WSF{n:014d},{model},{region},plant-{n % 5},{tags},{ecus}\n"


def test_importing_100k_vehicles_and_selecting_them(database: Database) -> None:
    started = time.monotonic()
    assert import_vehicles(database, (HEADER + "".join(row(n) for n in range(100_000))).encode())
    elapsed = time.monotonic() - started
    assert elapsed < 60, f"import took {elapsed:.1f} s"
    vehicles, total = list_vehicles(database, FleetSelector(), limit=5)
    assert total == 100_000
    assert vehicles[0].vin == "WSF00000000000000"
    assert vehicles[0].variant == "gateway-x1+tcu-a"
    _, pilots = list_vehicles(
        database, FleetSelector("sedan", regions=("eu",), tags=("pilot",)), limit=1
    )
    assert pilots == 0  # pilots are every 10th VIN: even numbers, so vans
    _, pilots = list_vehicles(database, FleetSelector("van", tags=("pilot", "eu-homologated")))
    assert pilots == 10_000
    _, at_site = list_vehicles(database, FleetSelector(sites=("plant-1", "plant-2")))
    assert at_site == 40_000
    with database.session() as session:
        session.add(
            Image(
                target_name="gw-1.0", name="gw", version="1.0", hardware_id="gateway-x1",
                release_counter=1, sha256="cd" * 32, length=1, uploaded_at=datetime.now(UTC),
            )
        )  # fmt: skip
        ecu = session.get(Ecu, "gw-7")
        assert ecu is not None
        ecu.installed_sha256 = "cd" * 32
        session.add(ecu)
    running, count = list_vehicles(database, FleetSelector(installed_images=("gw-1.0",)))
    assert (count, [v.vin for v in running]) == (1, ["WSF00000000000007"])


def test_import_is_all_or_nothing_and_names_the_bad_line(database: Database) -> None:
    with pytest.raises(InvalidArgumentError, match="line 3: VIN"):
        import_vehicles(database, (HEADER + row(1) + "BAD,sedan,eu,p,,gw-x:gw:primary\n").encode())
    with pytest.raises(InvalidArgumentError, match="header"):
        import_vehicles(database, b"vin,model\n")
    import_vehicles(database, (HEADER + row(1)).encode())
    with pytest.raises(AlreadyExistsError, match="registered already"):
        import_vehicles(database, (HEADER + row(2) + row(1)).encode())
    assert list_vehicles(database, FleetSelector())[1] == 1
