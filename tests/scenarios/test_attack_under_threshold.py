"""Metadata signed by fewer keys than the threshold."""

from __future__ import annotations

from pathlib import Path

from securesystemslib.signer import CryptoSigner

from tests.client.support import image_bytes
from tests.scenarios.malicious_relay import attack_bench, resign


def test_a_timestamp_with_one_of_two_signatures_is_refused(tmp_path: Path) -> None:
    with attack_bench(tmp_path) as bench:
        first, second = CryptoSigner.generate_ed25519(), CryptoSigner.generate_ed25519()
        bench.rotate_image_root("timestamp", [first, second], threshold=2)
        bench.image.add_image("app-1.1", image_bytes(4096), release_counter=2)
        path = bench.image.metadata_dir / "timestamp.json"
        path.write_bytes(resign(path.read_bytes(), [first, second]))
        bench.offer("app-1.1")
        bench.relay.tamper = lambda p, body: (
            resign(body, [first]) if p.endswith("/timestamp.json") else body
        )
        before = bench.boot_files()
        bench.run_cycle()
        bench.assert_refused(before, "not signed by a threshold")
