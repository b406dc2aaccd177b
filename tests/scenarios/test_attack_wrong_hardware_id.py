"""Wrong hardware id: a compromised Director sends an image built for another ECU type."""

from __future__ import annotations

from pathlib import Path

from tests.client.support import image_bytes
from tests.scenarios.malicious_relay import attack_bench


def test_an_image_for_other_hardware_is_refused(tmp_path: Path) -> None:
    with attack_bench(tmp_path) as bench:
        bench.image.add_image(
            "brake-4.0", image_bytes(4096), hardware_id="brake-b7", release_counter=2
        )
        bench.offer("brake-4.0")  # the Director names our gateway ECU for it
        before = bench.boot_files()
        bench.run_cycle()
        bench.assert_refused(before, "wrong hardware id", "brake-b7")
