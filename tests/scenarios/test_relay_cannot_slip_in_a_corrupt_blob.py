"""A relay is not trusted: a blob corrupted in its cache is refused by the vehicle.

The relay checks a cached blob's hash itself whenever the file changed; a compromised relay
would not, so the corruption here keeps the file's inode, size and times, as an attacker
on the relay host could.
"""

from __future__ import annotations

import hashlib
import os
import urllib.request
from pathlib import Path

from client.slots.filebackend import FileBootControl
from tests.scenarios.installation import FACTORY_IMAGE, Installation

VIN = "WSF00000000000021"


def cached_copy(cache_dir: Path, image: bytes) -> Path:
    """The file in the relay's cache that holds ``image``."""
    matches = [
        path
        for path in cache_dir.rglob("*")
        if path.is_file() and path.stat().st_size == len(image) and path.read_bytes() == image
    ]
    assert len(matches) == 1, matches
    return matches[0]


def test_corrupt_cached_blob_is_refused_and_reported(installation: Installation) -> None:
    sha256 = hashlib.sha256(installation.image).hexdigest()
    url = f"{installation.relay.http}/image/targets/{sha256}.{installation.target_name}"
    with urllib.request.urlopen(url, timeout=30) as response:  # noqa: S310 - warm the cache
        assert response.read() == installation.image
    blob = cached_copy(installation.sandbox.root / "relay" / "cache", installation.image)
    corrupt = bytearray(installation.image)
    corrupt[len(corrupt) // 2] ^= 0xFF
    before_write = blob.stat()
    blob.write_bytes(bytes(corrupt))
    os.utime(blob, ns=(before_write.st_atime_ns, before_write.st_mtime_ns))

    vehicle = installation.vehicle(VIN)
    before = FileBootControl(vehicle.slots).read_state()
    campaign_id = installation.start_campaign(VIN)
    exit_codes, output = installation.run_clients(vehicle)
    assert exit_codes == [0], "\n".join(output)

    assert FileBootControl(vehicle.slots).read_state() == before
    assert (vehicle.slots / "A.img").read_bytes() == FACTORY_IMAGE
    events = installation.events(VIN)
    assert [e.kind for e in events][-1] == "failed"
    failure = events[-1]
    assert failure.failure_type == "verification"
    assert sha256 in failure.detail or "hash" in failure.detail.lower()
    campaign = installation.campaign(campaign_id)
    assert campaign["counts"] == {"total": 1, "failed": 1}
    assert campaign["state"] == "CAMPAIGN_STATE_COMPLETED"
