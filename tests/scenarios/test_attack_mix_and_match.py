"""Mix-and-match: the relay answers the snapshot's targets version with another version."""

from __future__ import annotations

from pathlib import Path

from tests.client.support import image_bytes
from tests.scenarios.malicious_relay import attack_bench


def test_targets_from_another_snapshot_version_are_refused(tmp_path: Path) -> None:
    with attack_bench(tmp_path) as bench:
        bench.image.add_image("app-1.1", image_bytes(4096), release_counter=2)
        mixed_in = bench.metadata_file(f"{bench.image.version}.targets.json")
        bench.image.add_image("app-1.2", image_bytes(4096, seed=b"1.2"), release_counter=3)
        current = f"/{bench.image.version}.targets.json"
        bench.offer("app-1.1")
        bench.relay.tamper = lambda path, body: mixed_in if path.endswith(current) else body
        before = bench.boot_files()
        bench.run_cycle()
        bench.assert_refused(before, "mix-and-match attack")
