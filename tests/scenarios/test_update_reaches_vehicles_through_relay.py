"""The walking skeleton: publish, campaign, relay, verify, install, reboot, health, commit."""

from __future__ import annotations

import hashlib
from collections import Counter

from client.slots import FileBootControl, SlotInventory
from tests.scenarios.installation import FACTORY_IMAGE, Installation

HEALTHY_VIN = "WSF00000000000011"
BROKEN_VIN = "WSF00000000000012"
FAILING_HEALTH = ("/bin/sh", "-c", "echo 'service brake-monitor did not start' >&2; exit 1")


def test_one_vehicle_commits_and_one_rolls_back(installation: Installation) -> None:
    healthy = installation.vehicle(HEALTHY_VIN)
    broken = installation.vehicle(BROKEN_VIN, health_command=FAILING_HEALTH)
    campaign_id = installation.start_campaign(HEALTHY_VIN, BROKEN_VIN)

    exit_codes, output = installation.run_clients(healthy, broken)
    assert exit_codes == [0, 0], "\n".join(output)

    # The healthy vehicle boots slot B, committed, holding the published image byte for byte.
    state = FileBootControl(healthy.slots).read_state()
    assert (state.committed, state.booted, state.trying) == ("B", "B", None)
    slot_b = (healthy.slots / "B.img").read_bytes()
    assert slot_b[: len(installation.image)] == installation.image
    slot_images = SlotInventory(healthy.slots).read()
    assert slot_images["B"] is not None
    assert slot_images["B"].sha256 == hashlib.sha256(installation.image).hexdigest()

    # The broken vehicle fell back to slot A, whose factory image is untouched.
    state = FileBootControl(broken.slots).read_state()
    assert (state.committed, state.booted, state.trying) == ("A", "A", None)
    assert (broken.slots / "A.img").read_bytes() == FACTORY_IMAGE

    # The server recorded every step of each vehicle, once.
    healthy_events = installation.events(HEALTHY_VIN)
    assert Counter(e.kind for e in healthy_events) == Counter(
        ["checked_in", "downloaded", "verified", "installed", "rebooted", "healthy", "committed"]
    )
    assert healthy_events[-1].kind == "committed"
    assert healthy_events[-1].slot == "B"
    broken_events = installation.events(BROKEN_VIN)
    assert Counter(e.kind for e in broken_events) == Counter(
        [
            "checked_in",
            "downloaded",
            "verified",
            "installed",
            "rebooted",
            "health_failed",
            "rolled_back",
        ]
    )
    assert broken_events[-1].kind == "rolled_back"
    assert broken_events[-1].slot == "A"
    health_failed = next(e for e in broken_events if e.kind == "health_failed")
    assert "brake-monitor" in health_failed.detail

    campaign = installation.campaign(campaign_id)
    assert campaign["state"] == "CAMPAIGN_STATE_COMPLETED"
    assert campaign["counts"] == {"total": 2, "committed": 1, "rolledBack": 1}
