"""Rollback: older metadata than the vehicle trusts, or an image with a lower release counter."""

from __future__ import annotations

from pathlib import Path

from tuf.ngclient import Updater

from tests.client.support import image_bytes
from tests.scenarios.malicious_relay import attack_bench


def test_older_image_metadata_replayed_by_the_relay_is_refused(tmp_path: Path) -> None:
    with attack_bench(tmp_path) as bench:
        old_timestamp = bench.metadata_file("timestamp.json")
        bench.image.add_image("app-1.1", image_bytes(4096), release_counter=2)
        # The vehicle saw the newer repository on an earlier cycle.
        cache = bench.vehicle.state_dir / "image-metadata"
        cache.mkdir(parents=True)
        Updater(
            str(cache),
            f"{bench.honest_url}/image/metadata/",
            bootstrap=bench.image.root_bytes,
        ).refresh()
        bench.offer("app-1.1")
        bench.relay.tamper = lambda path, body: (
            old_timestamp if path.endswith("/timestamp.json") else body
        )
        before = bench.boot_files()
        bench.run_cycle()
        bench.assert_refused(before, "rollback attack", "older metadata")


def test_an_image_with_a_lower_release_counter_is_refused(tmp_path: Path) -> None:
    with attack_bench(tmp_path) as bench:
        bench.image.add_image("app-3.0", image_bytes(4096, seed=b"3.0"), release_counter=3)
        bench.offer("app-3.0", assignment_id="1")
        bench.run_cycle()
        assert bench.director.kinds()[-1] == "COMMITTED"
        # A compromised Director offers an old, genuinely signed, vulnerable image.
        bench.image.add_image("app-1.0", image_bytes(4096, seed=b"1.0"), release_counter=1)
        bench.offer("app-1.0", assignment_id="2")
        installed = bench.vehicle.slot("B")
        before = bench.boot_files()
        bench.run_cycle()
        assert bench.boot_files() == before
        assert bench.vehicle.slot("B") == installed
        kinds = bench.director.kinds()
        assert kinds[-1] == "FAILED", kinds
        detail = bench.director.events[-1].detail
        assert "rollback attack" in detail
        assert "release counter 1 is lower than the installed image's 3" in detail
