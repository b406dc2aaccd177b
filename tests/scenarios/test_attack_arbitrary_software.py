"""Arbitrary software: a relay swaps the image's bytes, or the hash its metadata signs."""

from __future__ import annotations

import json
from pathlib import Path

from tests.client.support import image_bytes
from tests.scenarios.malicious_relay import attack_bench


def test_a_blob_swapped_by_the_relay_is_refused(tmp_path: Path) -> None:
    with attack_bench(tmp_path) as bench:
        bench.image.add_image("app-1.1", image_bytes(256 * 1024), release_counter=2)
        bench.offer("app-1.1")
        malware = image_bytes(256 * 1024, seed=b"malware")

        def swap(path: str, body: bytes) -> bytes:
            return malware if path.startswith("/image/targets/") else body

        bench.relay.tamper = swap
        before = bench.boot_files()
        bench.run_cycle()
        bench.assert_refused(before, "SHA-256", "refused")


def test_a_target_hash_changed_in_the_metadata_is_refused(tmp_path: Path) -> None:
    with attack_bench(tmp_path) as bench:
        bench.image.add_image("app-1.1", image_bytes(4096), release_counter=2)
        bench.offer("app-1.1")

        def rewrite_hash(path: str, body: bytes) -> bytes:
            if not path.endswith(".targets.json"):
                return body
            metadata = json.loads(body)
            for target in metadata["signed"]["targets"].values():
                target["hashes"]["sha256"] = "0" * 64
            return json.dumps(metadata).encode()

        bench.relay.tamper = rewrite_hash
        before = bench.boot_files()
        bench.run_cycle()
        bench.assert_refused(before, "forged metadata", "threshold")
