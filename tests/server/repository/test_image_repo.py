"""The Image repository: signing, publishing, expiry, and a real ngclient over HTTP."""

from __future__ import annotations

import asyncio
import hashlib
import threading
from datetime import timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest
from tuf.api.metadata import Metadata, Root, Snapshot, Targets, Timestamp
from tuf.ngclient import Updater

from keys.keyset import init_keyset
from server.errors import AlreadyExistsError, InvalidArgumentError, RepositoryError
from server.repository.blobs import BlobStore
from server.repository.image_repo import ImageRepository
from server.store import Database
from tests.server.repository.conftest import BIN_BITS

if TYPE_CHECKING:
    from tests.server.repository.conftest import Clock

BOOT_IMAGE = b"boot loader 2.1 " * 512
INFOTAINMENT_IMAGE = b"infotainment 7.3 " * 2048


def image_custom(name: str, version: str, hardware_id: str, counter: int) -> dict[str, Any]:
    return {
        "name": name,
        "version": version,
        "hardware_ids": [hardware_id],
        "release_counter": counter,
    }


def publish(repo: ImageRepository, blobs: BlobStore, target_name: str, data: bytes) -> str:
    with blobs.writer(len(data)) as writer:
        writer.write(data)
        info = writer.commit()
    name, _, version = target_name.rpartition("-")
    repo.add_image(
        target_name=target_name,
        sha256=info.sha256,
        length=info.length,
        custom=image_custom(name, version, f"{name}-hw", 1),
    )
    return info.sha256


def signed(repo: ImageRepository, filename: str) -> Any:
    data = repo.metadata(filename)
    assert data is not None, filename
    return Metadata.from_bytes(data).signed


def bin_file(repo: ImageRepository, target_name: str) -> str:
    """The current ``N.bin-XXX.json`` that holds ``target_name``."""
    bins = signed(repo, "1.bins.json")
    role = bins.delegations.succinct_roles.get_role_for_target(target_name)
    timestamp = signed(repo, "timestamp.json")
    snapshot = signed(repo, f"{timestamp.snapshot_meta.version}.snapshot.json")
    return f"{snapshot.meta[f'{role}.json'].version}.{role}.json"


def test_initialize_creates_version_one_of_every_role(image_repo: ImageRepository) -> None:
    root = signed(image_repo, "1.root.json")
    assert isinstance(root, Root)
    assert root.consistent_snapshot is True
    targets = signed(image_repo, "1.targets.json")
    assert isinstance(targets, Targets)
    assert targets.targets == {}
    assert list(targets.delegations.roles) == ["bins"]
    bins = signed(image_repo, "1.bins.json")
    assert bins.delegations.succinct_roles.bit_length == BIN_BITS
    snapshot = signed(image_repo, "1.snapshot.json")
    assert isinstance(snapshot, Snapshot)
    assert len(snapshot.meta) == 2 + 2**BIN_BITS
    timestamp = signed(image_repo, "timestamp.json")
    assert isinstance(timestamp, Timestamp)
    assert timestamp.version == 1
    assert timestamp.expires.microsecond == 0
    assert image_repo.root() == image_repo.metadata("1.root.json")


def test_initialize_again_changes_nothing(image_repo: ImageRepository, clock: Clock) -> None:
    before = [image_repo.metadata(f) for f in ("1.root.json", "timestamp.json")]
    clock.advance(timedelta(hours=1))
    image_repo.initialize()
    assert [image_repo.metadata(f) for f in ("1.root.json", "timestamp.json")] == before


def test_initialize_with_another_key_set_is_refused(
    database: Database, image_repo: ImageRepository, tmp_path: Path
) -> None:
    other = ImageRepository(database, init_keyset(tmp_path / "other-keys"))
    with pytest.raises(RepositoryError, match="key set the repository was created with"):
        other.initialize()


def test_add_image_signs_new_targets_snapshot_and_timestamp(
    image_repo: ImageRepository, blobs: BlobStore
) -> None:
    sha256 = publish(image_repo, blobs, "boot-2.1", BOOT_IMAGE)

    holder = bin_file(image_repo, "boot-2.1")
    assert holder.startswith("2.bin-")
    target = signed(image_repo, holder).targets["boot-2.1"]
    assert target.hashes == {"sha256": sha256}
    assert target.length == len(BOOT_IMAGE)
    assert target.custom == image_custom("boot", "2.1", "boot-hw", 1)
    snapshot = signed(image_repo, "2.snapshot.json")
    assert snapshot.meta["targets.json"].version == 1
    assert snapshot.meta[holder.split(".", 1)[1]].version == 2
    timestamp = signed(image_repo, "timestamp.json")
    assert (timestamp.version, timestamp.snapshot_meta.version) == (2, 2)
    # Published versions stay; the old bin is still served.
    assert "boot-2.1" not in signed(image_repo, "1." + holder.split(".", 1)[1]).targets


def test_a_published_target_name_cannot_be_reused(
    image_repo: ImageRepository, blobs: BlobStore
) -> None:
    publish(image_repo, blobs, "boot-2.1", BOOT_IMAGE)
    with pytest.raises(AlreadyExistsError, match=r"boot-2\.1 is already published"):
        publish(image_repo, blobs, "boot-2.1", INFOTAINMENT_IMAGE)
    assert image_repo.metadata("3.snapshot.json") is None


@pytest.mark.parametrize(
    ("target_name", "sha256", "length", "match"),
    [
        ("../boot", "a" * 64, 1, "invalid target name"),
        (".hidden", "a" * 64, 1, "invalid target name"),
        ("boot/2.1", "a" * 64, 1, "invalid target name"),
        ("boot-2.1", "A" * 64, 1, "invalid SHA-256"),
        ("boot-2.1", "a" * 64, -1, "invalid length"),
    ],
)
def test_malformed_images_are_refused(
    image_repo: ImageRepository, target_name: str, sha256: str, length: int, match: str
) -> None:
    with pytest.raises(InvalidArgumentError, match=match):
        image_repo.add_image(target_name=target_name, sha256=sha256, length=length, custom={})


def test_custom_fields_must_be_json(image_repo: ImageRepository) -> None:
    with pytest.raises(InvalidArgumentError, match="not JSON"):
        image_repo.add_image(
            target_name="boot-2.1", sha256="a" * 64, length=1, custom={"when": object()}
        )


def test_add_image_needs_an_initialized_repository(database: Database, tmp_path: Path) -> None:
    repo = ImageRepository(database, init_keyset(tmp_path / "keys"))
    with pytest.raises(RepositoryError, match="not initialized"):
        repo.add_image(target_name="boot-2.1", sha256="a" * 64, length=1, custom={})
    with pytest.raises(RepositoryError, match="not initialized"):
        repo.root()


def test_concurrent_publishers_each_get_their_own_version(image_repo: ImageRepository) -> None:
    names = [f"ecu{i}-1.0" for i in range(6)]
    barrier = threading.Barrier(len(names))
    errors: list[BaseException] = []

    def publish_one(name: str) -> None:
        barrier.wait()
        try:
            image_repo.add_image(
                target_name=name,
                sha256=hashlib.sha256(name.encode()).hexdigest(),
                length=1,
                custom={},
            )
        except BaseException as error:  # reported below, in the test's thread
            errors.append(error)

    threads = [threading.Thread(target=publish_one, args=(name,)) for name in names]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()

    assert errors == []
    timestamp = signed(image_repo, "timestamp.json")
    assert timestamp.version == len(names) + 1
    for name in names:
        assert name in signed(image_repo, bin_file(image_repo, name)).targets


def test_refresh_expiring_resigns_timestamp_then_snapshot(
    image_repo: ImageRepository, clock: Clock
) -> None:
    margin = timedelta(hours=1)
    clock.advance(timedelta(hours=12))
    assert image_repo.refresh_expiring(margin) is False
    assert signed(image_repo, "timestamp.json").version == 1

    clock.advance(timedelta(hours=11, minutes=30))  # timestamp expires in 30 minutes
    assert image_repo.refresh_expiring(margin) is True
    timestamp = signed(image_repo, "timestamp.json")
    assert (timestamp.version, timestamp.snapshot_meta.version) == (2, 1)
    assert timestamp.expires == (clock.now + timedelta(days=1)).replace(microsecond=0)

    clock.advance(timedelta(days=6))  # snapshot expires in 30 minutes
    assert image_repo.refresh_expiring(margin) is True
    timestamp = signed(image_repo, "timestamp.json")
    assert (timestamp.version, timestamp.snapshot_meta.version) == (3, 2)
    assert signed(image_repo, "2.snapshot.json").meta == signed(image_repo, "1.snapshot.json").meta


async def test_ngclient_finds_and_downloads_published_images_over_http(
    image_repo: ImageRepository, blobs: BlobStore, base_url: str, tmp_path: Path
) -> None:
    boot_sha256 = publish(image_repo, blobs, "boot-2.1", BOOT_IMAGE)
    publish(image_repo, blobs, "infotainment-7.3", INFOTAINMENT_IMAGE)
    metadata_dir = tmp_path / "client" / "metadata"
    target_dir = tmp_path / "client" / "targets"
    metadata_dir.mkdir(parents=True)
    target_dir.mkdir()

    def update() -> dict[str, tuple[Any, bytes]]:
        updater = Updater(
            str(metadata_dir),
            f"{base_url}/image/metadata/",
            str(target_dir),
            f"{base_url}/image/targets/",
            bootstrap=image_repo.root(),
        )
        updater.refresh()
        found = {}
        for name in ("boot-2.1", "infotainment-7.3"):
            info = updater.get_targetinfo(name)
            assert info is not None, name
            found[name] = (info, Path(updater.download_target(info)).read_bytes())
        assert updater.get_targetinfo("boot-9.9") is None
        return found

    found = await asyncio.to_thread(update)

    boot_info, boot_bytes = found["boot-2.1"]
    assert boot_bytes == BOOT_IMAGE
    assert boot_info.hashes == {"sha256": boot_sha256}
    assert boot_info.custom == image_custom("boot", "2.1", "boot-hw", 1)
    assert found["infotainment-7.3"][1] == INFOTAINMENT_IMAGE
