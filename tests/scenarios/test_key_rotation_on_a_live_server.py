"""Root and targets keys rotated on a live server through the offline ceremony; a vehicle
provisioned with the old roots walks the root chain and still installs.

The ceremony runs as an operator would: ``staffel keys add``/``revoke`` change the key set,
``keys root export`` and ``keys targets export`` write unsigned metadata, ``keys sign``
signs it with offline key files, ``keys root import --targets`` publishes both while the
server keeps serving.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

from tuf.api.metadata import Metadata, Root

from client.slots.filebackend import FileBootControl
from server.sandbox import tool
from tests.scenarios.installation import FACTORY_IMAGE, Installation

VIN = "WSF00000000000031"


def keyid_of(output: str) -> str:
    match = re.search(r"added ([0-9a-f]{64})", output)
    assert match is not None, output
    return match.group(1)


def test_rotated_root_and_targets_keys_are_followed_by_an_old_vehicle(
    installation: Installation, tmp_path: Path
) -> None:
    sandbox = installation.sandbox
    keys = sandbox.root / "keys"
    offline = tmp_path / "offline"
    database = ("--keys-dir", str(keys), "--database-url", installation.database_url)

    def staffel_keys(*arguments: str) -> str:
        return sandbox.run(tool("staffel"), "keys", *arguments).stdout

    vehicle = installation.vehicle(VIN)  # pins image and Director root version 1
    before = json.loads((sandbox.root / "keys" / "keyset.json").read_text())
    [old_root] = before["roles"]["image.root"]["keys"]
    [old_targets] = before["roles"]["image.targets"]["keys"]

    # 1. The key set: three new offline root keys (2 of 3), a new offline targets key.
    add_root = ("add", "--dir", str(keys), "--role", "image.root", "--offline-dir", str(offline))
    new_root_keys = [keyid_of(staffel_keys(*add_root)) for _ in range(3)]
    staffel_keys("revoke", "--dir", str(keys), "--keyid", old_root["keyid"], "--threshold", "2")
    staffel_keys(
        "add", "--dir", str(keys), "--role", "image.targets", "--offline-dir", str(offline)
    )
    staffel_keys("revoke", "--dir", str(keys), "--keyid", old_targets["keyid"])

    # 2. Export, sign offline (old root key + two new ones; the new targets key), import.
    root_file, targets_file = tmp_path / "2.root.json", tmp_path / "targets.json"
    staffel_keys("root", "export", *database, "--repo", "image", "--out", str(root_file))
    staffel_keys("targets", "export", *database, "--out", str(targets_file))
    # The revoked root key's file was renamed out of use; the ceremony still holds it.
    old_root_file = keys / f"{old_root['file']}.revoked"
    staffel_keys("sign", str(root_file), "--key", str(old_root_file),
                 "--key", str(offline / "image.root.2.key"),
                 "--key", str(offline / "image.root.3.key"))  # fmt: skip
    staffel_keys("sign", str(targets_file), "--key", str(offline / "image.targets.2.key"))
    staffel_keys("root", "import", *database, "--repo", "image", str(root_file),
                 "--targets", str(targets_file))  # fmt: skip

    # The Director root is rotated too (same keys, next version): the chain grows.
    director_root = tmp_path / "director-2.root.json"
    staffel_keys("root", "export", *database, "--repo", "director", "--out", str(director_root))
    staffel_keys("sign", str(director_root), "--key", str(keys / "director.root.key"))
    staffel_keys("root", "import", *database, "--repo", "director", str(director_root))

    new_root = Metadata[Root].from_bytes(root_file.read_bytes()).signed
    assert sorted(new_root.roles["root"].keyids) == sorted(new_root_keys)
    assert new_root.roles["root"].threshold == 2
    assert old_targets["keyid"] not in new_root.roles["targets"].keyids

    # 3. The vehicle, still pinned to root version 1, updates through the chain.
    campaign_id = installation.start_campaign(VIN)
    exit_codes, output = installation.run_clients(vehicle)
    assert exit_codes == [0], "\n".join(output)
    events = installation.events(VIN)
    assert [e.kind for e in events][-1] == "committed", [(e.kind, e.detail) for e in events]
    state = FileBootControl(vehicle.slots).read_state()
    assert state.committed == "B"
    assert (vehicle.slots / "B.img").read_bytes() == installation.image
    assert (vehicle.slots / "A.img").read_bytes() == FACTORY_IMAGE
    trusted = json.loads((vehicle.directory / "state" / "image-metadata" / "root.json").read_text())
    assert trusted["signed"]["version"] == 2
    assert installation.campaign(campaign_id)["state"] == "CAMPAIGN_STATE_COMPLETED"
