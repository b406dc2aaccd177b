"""The Director and the Image repository disagree on an image (a compromised Director)."""

from __future__ import annotations

import hashlib
from pathlib import Path

from tuf.api.metadata import TargetFile

from tests.client.support import image_bytes
from tests.scenarios.malicious_relay import attack_bench


def test_a_director_image_the_image_repository_signs_differently_is_refused(
    tmp_path: Path,
) -> None:
    with attack_bench(tmp_path) as bench:
        genuine = bench.image.add_image("app-1.1", image_bytes(4096), release_counter=2)
        malware = image_bytes(4096, seed=b"malware")
        # The attacker controls the Director and places its blob under the genuine name.
        forged = TargetFile(
            len(malware), {"sha256": hashlib.sha256(malware).hexdigest()}, genuine.path
        )
        bench.image.store_blob("app-1.1", malware, sha256=forged.hashes["sha256"])
        bench.director.offer("1", bench.repositories.director.metadata_for([forged]))
        before = bench.boot_files()
        bench.run_cycle()
        bench.assert_refused(before, "the Director and the Image repository disagree")
