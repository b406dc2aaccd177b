"""Endless data: metadata or an image blob larger than declared."""

from __future__ import annotations

from pathlib import Path

from tests.client.support import image_bytes
from tests.scenarios.malicious_relay import attack_bench


def test_endless_metadata_is_cut_off_and_refused(tmp_path: Path) -> None:
    with attack_bench(tmp_path) as bench:
        bench.image.add_image("app-1.1", image_bytes(4096), release_counter=2)
        bench.offer("app-1.1")
        padding = b" " * (4 * 1024 * 1024)
        bench.relay.tamper = lambda path, body: (
            body + padding if path.endswith("/timestamp.json") else body
        )
        before = bench.boot_files()
        bench.run_cycle()
        bench.assert_refused(before, "endless data")


def test_an_endless_blob_is_cut_off_and_refused(tmp_path: Path) -> None:
    with attack_bench(tmp_path) as bench:
        image = image_bytes(64 * 1024)
        bench.image.add_image("app-1.1", image, release_counter=2)
        bench.offer("app-1.1")
        bench.relay.tamper = lambda path, body: (
            body + image_bytes(8 * 1024 * 1024, seed=b"more")
            if path.startswith("/image/targets/")
            else body
        )
        before = bench.boot_files()
        bench.run_cycle()
        bench.assert_refused(before, "more than the signed")
