"""Uptane full verification against real TUF repositories served over HTTP."""

from __future__ import annotations

from pathlib import Path

import pytest

from client.config import EcuConfig
from client.errors import DownloadError, VerificationError
from client.images import Image
from client.uptane import DirectorMetadata, UptaneVerifier
from tests.client.support import HARDWARE_ID, PRIMARY_SERIAL, VIN, Repositories, image_bytes

PRIMARY = EcuConfig(serial=PRIMARY_SERIAL, hardware_id=HARDWARE_ID, primary=True)


def _verifier(tmp_path: Path, repositories: Repositories) -> UptaneVerifier:
    pinned = tmp_path / "pinned"
    pinned.mkdir(exist_ok=True)
    (pinned / "image-root.json").write_bytes(repositories.image.root_bytes)
    (pinned / "director-root.json").write_bytes(repositories.director.root_bytes)
    return UptaneVerifier(
        state_dir=tmp_path / "state",
        repo_url=repositories.url,
        image_root=pinned / "image-root.json",
        director_root=pinned / "director-root.json",
        timeout_seconds=5,
    )


def _verify(verifier: UptaneVerifier, director: DirectorMetadata, floor: int = 0) -> Image:
    return verifier.verify(director, vin=VIN, ecu=PRIMARY, release_counter_floor=floor)


def test_accepts_an_image_both_repositories_agree_on(
    tmp_path: Path, repositories: Repositories
) -> None:
    data = image_bytes(4096)
    target = repositories.image.add_image("app-1.1", data, release_counter=7)
    verifier = _verifier(tmp_path, repositories)

    image = _verify(verifier, repositories.director.metadata_for([target]))

    assert image == Image(
        target="app-1.1", length=4096, sha256=target.hashes["sha256"], release_counter=7
    )
    # A second check-in with newer Director metadata verifies from the caches.
    assert _verify(verifier, repositories.director.metadata_for([target])) == image


def test_refuses_a_director_hash_that_differs_from_the_image_repository(
    tmp_path: Path, repositories: Repositories
) -> None:
    target = repositories.image.add_image("app-1.1", image_bytes(1000))
    forged = repositories.image.targets["app-1.1"]
    forged = type(forged)(forged.length, {"sha256": "ab" * 32}, forged.path)
    director = repositories.director.metadata_for([forged])

    with pytest.raises(
        VerificationError,
        match=r"app-1.1: the Director and the Image repository disagree: .* sha256 abab",
    ):
        _verify(_verifier(tmp_path, repositories), director)
    assert target.hashes["sha256"] != "ab" * 32


def test_refuses_a_director_length_that_differs(tmp_path: Path, repositories: Repositories) -> None:
    target = repositories.image.add_image("app-1.1", image_bytes(1000))
    longer = type(target)(2000, dict(target.hashes), target.path)

    with pytest.raises(VerificationError, match="length of 2000 bytes, the Image repository 1000"):
        _verify(_verifier(tmp_path, repositories), repositories.director.metadata_for([longer]))


def test_refuses_an_image_for_another_hardware_id(
    tmp_path: Path, repositories: Repositories
) -> None:
    target = repositories.image.add_image("app-1.1", image_bytes(100), hardware_id="telematics-t2")

    with pytest.raises(VerificationError, match="hardware ids \\['telematics-t2'\\]"):
        _verify(_verifier(tmp_path, repositories), repositories.director.metadata_for([target]))


def test_refuses_a_director_entry_naming_another_hardware_id_for_our_ecu(
    tmp_path: Path, repositories: Repositories
) -> None:
    target = repositories.image.add_image("app-1.1", image_bytes(100))
    director = repositories.director.metadata_for([target], hardware_id="telematics-t2")

    with pytest.raises(VerificationError, match="as hardware id 'telematics-t2'"):
        _verify(_verifier(tmp_path, repositories), director)


def test_refuses_director_metadata_for_another_vehicle(
    tmp_path: Path, repositories: Repositories
) -> None:
    target = repositories.image.add_image("app-1.1", image_bytes(100))
    director = repositories.director.metadata_for([target], vin="WVWZZZ1KZ00000002")

    with pytest.raises(VerificationError, match="for vehicle 'WVWZZZ1KZ00000002'"):
        _verify(_verifier(tmp_path, repositories), director)


def test_refuses_an_image_the_image_repository_does_not_have(
    tmp_path: Path, repositories: Repositories
) -> None:
    repositories.image.add_image("app-1.1", image_bytes(100))
    ghost = type(repositories.image.targets["app-1.1"]).from_data("app-6.6", b"ghost")

    with pytest.raises(VerificationError, match=r"the Image repository has no image app-6\.6"):
        _verify(_verifier(tmp_path, repositories), repositories.director.metadata_for([ghost]))


def test_refuses_a_release_counter_lower_than_the_installed_one(
    tmp_path: Path, repositories: Repositories
) -> None:
    target = repositories.image.add_image("app-1.0", image_bytes(100), release_counter=3)

    with pytest.raises(VerificationError, match=r"release counter 3 is lower than .* 4"):
        _verify(_verifier(tmp_path, repositories), repositories.director.metadata_for([target]), 4)


def test_refuses_no_image_for_our_ecu(tmp_path: Path, repositories: Repositories) -> None:
    target = repositories.image.add_image("app-1.1", image_bytes(100))
    director = repositories.director.metadata_for([target], serial="other-ecu")

    with pytest.raises(VerificationError, match="exactly one image for ECU gw-0001; it names none"):
        _verify(_verifier(tmp_path, repositories), director)


def test_refuses_director_metadata_signed_by_an_untrusted_key(
    tmp_path: Path, repositories: Repositories
) -> None:
    target = repositories.image.add_image("app-1.1", image_bytes(100))
    signers = repositories.director.signers
    signers["targets"], signers["snapshot"] = signers["snapshot"], signers["targets"]

    with pytest.raises(
        VerificationError,
        match="Director metadata refused: forged metadata: not signed by a threshold",
    ):
        _verify(_verifier(tmp_path, repositories), repositories.director.metadata_for([target]))


def test_refuses_replayed_older_director_metadata(
    tmp_path: Path, repositories: Repositories
) -> None:
    target = repositories.image.add_image("app-1.1", image_bytes(100))
    verifier = _verifier(tmp_path, repositories)
    old = repositories.director.metadata_for([target])
    _verify(verifier, repositories.director.metadata_for([target]))

    with pytest.raises(
        VerificationError, match=r"rollback attack: older metadata than the vehicle already trusts"
    ):
        _verify(verifier, old)


def test_an_unreachable_image_repository_is_a_download_failure(
    tmp_path: Path, repositories: Repositories
) -> None:
    target = repositories.image.add_image("app-1.1", image_bytes(100))
    (repositories.image.metadata_dir / "timestamp.json").unlink()

    with pytest.raises(DownloadError, match="cannot fetch Image repository metadata"):
        _verify(_verifier(tmp_path, repositories), repositories.director.metadata_for([target]))
