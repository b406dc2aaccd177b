"""Indefinite freeze: a relay keeps serving a genuine timestamp that has expired."""

from __future__ import annotations

from pathlib import Path

from tuf.api.metadata import Metadata, MetaFile, Timestamp

from tests.client.support import image_bytes
from tests.scenarios.malicious_relay import attack_bench, expired, signed_bytes


def test_an_expired_timestamp_replayed_by_the_relay_is_refused(tmp_path: Path) -> None:
    with attack_bench(tmp_path) as bench:
        bench.image.add_image("app-1.1", image_bytes(4096), release_counter=2)
        version = bench.image.version
        # What the relay recorded in the past: genuinely signed, since expired.
        frozen = Metadata(
            Timestamp(version=version, expires=expired(), snapshot_meta=MetaFile(version))
        )
        frozen.sign(bench.image.signers["timestamp"])
        stale = signed_bytes(frozen)
        bench.offer("app-1.1")
        bench.relay.tamper = lambda path, body: stale if path.endswith("/timestamp.json") else body
        before = bench.boot_files()
        bench.run_cycle()
        bench.assert_refused(before, "freeze attack", "expired")
