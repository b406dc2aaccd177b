"""Metadata signed by a key that was rotated out (revoked after a compromise)."""

from __future__ import annotations

from pathlib import Path

from securesystemslib.signer import CryptoSigner
from tuf.api.metadata import Metadata, MetaFile, Timestamp

from tests.client.support import image_bytes
from tests.scenarios.malicious_relay import attack_bench, signed_bytes


def test_a_timestamp_signed_by_a_revoked_key_is_refused(tmp_path: Path) -> None:
    with attack_bench(tmp_path) as bench:
        compromised = bench.image.signers["timestamp"]
        replacement = CryptoSigner.generate_ed25519()
        bench.rotate_image_root("timestamp", [replacement], threshold=1)
        bench.image.signers["timestamp"] = replacement
        bench.image.add_image("app-1.1", image_bytes(4096), release_counter=2)
        # The attacker still holds the old key and signs a newer-looking timestamp with it.
        version = bench.image.version
        forged = Metadata(
            Timestamp(
                version=version + 100,
                expires=Metadata.from_bytes(bench.metadata_file("timestamp.json")).signed.expires,
                snapshot_meta=MetaFile(version),
            )
        )
        forged.sign(compromised)
        forged_bytes = signed_bytes(forged)
        bench.offer("app-1.1")
        bench.relay.tamper = lambda p, body: forged_bytes if p.endswith("/timestamp.json") else body
        before = bench.boot_files()
        bench.run_cycle()
        detail = bench.assert_refused(before, "forged metadata", "rotated out or revoked")
        assert "timestamp" in detail
