"""Supplier delegations of the Image repository, read by a real ngclient over HTTP."""

from __future__ import annotations

import argparse
import asyncio
import hashlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from tuf.api.metadata import Metadata, MetaFile, Snapshot, TargetFile, Targets, Timestamp
from tuf.api.serialization.json import JSONSerializer
from tuf.ngclient import TargetFile as ClientTargetFile
from tuf.ngclient import Updater, Urllib3Fetcher

from keys.cli import add_parser
from keys.keyset import KeySet, init_keyset
from keys.manage import add_supplier
from server.repository.blobs import BlobStore
from server.repository.image_repo import ImageRepository
from server.repository.models import RepoMetadata, metadata_row
from server.store import Database

SUPPLIER = "supplier-brakes"
BRAKE_IMAGE = b"brake controller 4.2 " * 1024
BOOT_IMAGE = b"boot loader 2.1 " * 512


class CountingFetcher(Urllib3Fetcher):
    """A real HTTP fetcher that records each URL it fetched and the bytes it received."""

    def __init__(self) -> None:
        super().__init__()
        self.fetched: list[tuple[str, int]] = []

    def _fetch(self, url: str) -> Iterator[bytes]:
        received = 0
        try:
            for chunk in super()._fetch(url):
                received += len(chunk)
                yield chunk
        finally:
            self.fetched.append((url.rsplit("/", 1)[1], received))


def custom(name: str, version: str) -> dict[str, Any]:
    return {
        "name": name,
        "version": version,
        "hardware_ids": [f"{name}-hw"],
        "release_counter": 3,
        "ecu_type": "brake",
    }


def publish(repo: ImageRepository, blobs: BlobStore, target_name: str, data: bytes) -> str:
    with blobs.writer(len(data)) as writer:
        writer.write(data)
        info = writer.commit()
    name, _, version = target_name.rpartition("-")
    signing = repo.add_image(
        target_name=target_name,
        sha256=info.sha256,
        length=info.length,
        custom=custom(name, version),
    )
    return signing.role


def signed(repo: ImageRepository, filename: str) -> Any:
    data = repo.metadata(filename)
    assert data is not None, filename
    return Metadata.from_bytes(data).signed


def current_snapshot(repo: ImageRepository) -> Snapshot:
    timestamp = signed(repo, "timestamp.json")
    snapshot: Snapshot = signed(repo, f"{timestamp.snapshot_meta.version}.snapshot.json")
    return snapshot


@pytest.fixture
def supplier_keyset(keyset: KeySet) -> KeySet:
    """The test key set with the brakes supplier, added after the repository exists."""
    add_supplier(keyset.directory, "brakes", ["brake-ecu-*"])
    return keyset


class Client:
    """A real ngclient over HTTP against the served Image repository."""

    def __init__(self, repo: ImageRepository, base_url: str, home: Path) -> None:
        self.repo = repo
        self.base_url = base_url
        self.metadata_dir = home / "metadata"
        self.target_dir = home / "targets"
        self.metadata_dir.mkdir(parents=True)
        self.target_dir.mkdir()

    def lookup(self, *names: str) -> tuple[dict[str, ClientTargetFile | None], CountingFetcher]:
        fetcher = CountingFetcher()
        updater = Updater(
            str(self.metadata_dir),
            f"{self.base_url}/image/metadata/",
            str(self.target_dir),
            f"{self.base_url}/image/targets/",
            fetcher=fetcher,
            bootstrap=self.repo.root(),
        )
        updater.refresh()
        return {name: updater.get_targetinfo(name) for name in names}, fetcher


async def test_a_supplier_image_is_published_into_the_supplier_role_and_resolved(
    image_repo: ImageRepository,
    supplier_keyset: KeySet,
    blobs: BlobStore,
    base_url: str,
    tmp_path: Path,
) -> None:
    assert publish(image_repo, blobs, "brake-ecu-4.2", BRAKE_IMAGE) == SUPPLIER
    assert publish(image_repo, blobs, "boot-2.1", BOOT_IMAGE).startswith("bin-")

    targets = signed(image_repo, "2.targets.json")
    assert list(targets.delegations.roles) == [SUPPLIER, "bins"]
    delegation = targets.delegations.roles[SUPPLIER]
    assert delegation.terminating is True
    assert delegation.paths == ["brake-ecu-*"]
    supplier_key = supplier_keyset.public_keys("image", SUPPLIER)[0].keyid
    assert delegation.keyids == [supplier_key]
    snapshot = current_snapshot(image_repo)
    assert snapshot.meta[f"{SUPPLIER}.json"].version == 2
    role_file = f"2.{SUPPLIER}.json"
    role = Metadata[Targets].from_bytes(image_repo.metadata(role_file) or b"")
    assert list(role.signatures) == [supplier_key]
    assert list(role.signed.targets) == ["brake-ecu-4.2"]

    client = Client(image_repo, base_url, tmp_path / "client")
    found, _ = await asyncio.to_thread(client.lookup, "brake-ecu-4.2", "boot-2.1", "brake-ecu-9")

    brake = found["brake-ecu-4.2"]
    assert brake is not None
    assert brake.custom == custom("brake-ecu", "4.2")
    assert brake.hashes == {"sha256": hashlib.sha256(BRAKE_IMAGE).hexdigest()}
    boot = found["boot-2.1"]
    assert boot is not None
    assert boot.custom == custom("boot", "2.1")
    assert found["brake-ecu-9"] is None


async def test_a_target_outside_the_supplier_paths_is_not_found(
    *,
    image_repo: ImageRepository,
    supplier_keyset: KeySet,
    database: Database,
    blobs: BlobStore,
    base_url: str,
    tmp_path: Path,
) -> None:
    publish(image_repo, blobs, "brake-ecu-4.2", BRAKE_IMAGE)
    # The supplier's key signs a role version naming an image outside its paths.
    craft_supplier_target(database, supplier_keyset, "boot-6.6", BOOT_IMAGE)

    client = Client(image_repo, base_url, tmp_path / "client")
    found, fetcher = await asyncio.to_thread(client.lookup, "brake-ecu-4.2", "boot-6.6")

    assert found["brake-ecu-4.2"] is not None
    assert found["boot-6.6"] is None
    # The client did read the crafted supplier version, and looked boot-6.6 up in a bin.
    assert f"3.{SUPPLIER}.json" in [name for name, _ in fetcher.fetched]


async def test_the_refresh_after_one_supplier_image_stays_small(
    image_repo: ImageRepository,
    supplier_keyset: KeySet,
    blobs: BlobStore,
    base_url: str,
    tmp_path: Path,
) -> None:
    publish(image_repo, blobs, "brake-ecu-4.2", BRAKE_IMAGE)
    for number in range(20):
        publish(image_repo, blobs, f"app{number}-1.0", f"app {number}".encode())
    client = Client(image_repo, base_url, tmp_path / "client")
    await asyncio.to_thread(client.lookup, "brake-ecu-4.2", "app3-1.0")

    publish(image_repo, blobs, "brake-ecu-4.3", BRAKE_IMAGE + b"!")
    found, fetcher = await asyncio.to_thread(client.lookup, "brake-ecu-4.3")

    assert found["brake-ecu-4.3"] is not None
    names = [name for name, _ in fetcher.fetched]
    assert names == ["2.root.json", "timestamp.json", "23.snapshot.json", f"3.{SUPPLIER}.json"]
    supplier_bytes = dict(fetcher.fetched)[f"3.{SUPPLIER}.json"]
    assert supplier_bytes < 2_000
    assert sum(received for _, received in fetcher.fetched) < 8_000


def test_a_supplier_known_at_initialize_gets_its_role_first(
    database: Database, keyset: KeySet
) -> None:
    add_supplier(keyset.directory, "brakes", ["brake-ecu-*", "abs-*"])
    repo = ImageRepository(database, keyset, bin_bits=4)
    repo.initialize()

    targets = signed(repo, "1.targets.json")
    assert list(targets.delegations.roles) == [SUPPLIER, "bins"]
    assert targets.delegations.roles[SUPPLIER].paths == ["brake-ecu-*", "abs-*"]
    assert signed(repo, f"1.{SUPPLIER}.json").targets == {}
    assert current_snapshot(repo).meta[f"{SUPPLIER}.json"].version == 1
    assert repo.add_image(target_name="abs-1.0", sha256="a" * 64, length=1, custom={}).role == (
        SUPPLIER
    )


def craft_supplier_target(database: Database, keys: KeySet, target_name: str, data: bytes) -> None:
    """Publishes, as the supplier key's holder, a role version with ``target_name``.

    Snapshot and timestamp are re-signed with the repository's own keys, so only the
    delegation's paths stand between the crafted entry and the client.
    """
    serializer = JSONSerializer()
    with database.session() as session:
        timestamp_row = metadata_row(session, "image", "timestamp.json")
        assert timestamp_row is not None
        timestamp = Metadata[Timestamp].from_bytes(timestamp_row.data)
        snapshot_name = f"{timestamp.signed.snapshot_meta.version}.snapshot.json"
        snapshot_row = metadata_row(session, "image", snapshot_name)
        assert snapshot_row is not None
        snapshot = Metadata[Snapshot].from_bytes(snapshot_row.data)
        role_version = snapshot.signed.meta[f"{SUPPLIER}.json"].version
        role_row = metadata_row(session, "image", f"{role_version}.{SUPPLIER}.json")
        assert role_row is not None
        role = Metadata[Targets].from_bytes(role_row.data)

        role.signed.targets[target_name] = TargetFile.from_data(target_name, data, ["sha256"])
        role.signed.version += 1
        for signer in keys.signers("image", SUPPLIER):
            role.sign(signer)
        snapshot.signed.meta[f"{SUPPLIER}.json"] = MetaFile(version=role.signed.version)
        snapshot.signed.version += 1
        for signer in keys.signers("image", "snapshot"):
            snapshot.sign(signer)
        timestamp.signed.snapshot_meta = MetaFile(version=snapshot.signed.version)
        timestamp.signed.version += 1
        for signer in keys.signers("image", "timestamp"):
            timestamp.sign(signer)

        for metadata, filename in (
            (role, f"{role.signed.version}.{SUPPLIER}.json"),
            (snapshot, f"{snapshot.signed.version}.snapshot.json"),
        ):
            row = RepoMetadata(
                repo="image",
                filename=filename,
                version=metadata.signed.version,
                data=metadata.to_bytes(serializer),
            )
            session.add(row)
        timestamp_row.version = timestamp.signed.version
        timestamp_row.data = timestamp.to_bytes(serializer)
        session.add(timestamp_row)


def test_keys_supplier_add_creates_the_role_its_key_and_paths(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    keys = init_keyset(tmp_path / "keys")
    parser = argparse.ArgumentParser(prog="staffel")
    add_parser(parser.add_subparsers(dest="command", required=True))

    def run(*argv: str) -> int:
        args = parser.parse_args(["keys", "supplier", "add", "--dir", str(keys.directory), *argv])
        code: int = args.func(args)
        return code

    assert run("--name", "brakes", "--paths", "brake-ecu-*", "abs-*") == 0
    assert "image.supplier-brakes" in capsys.readouterr().out
    assert keys.suppliers() == {SUPPLIER: ("brake-ecu-*", "abs-*")}
    assert len(keys.signers("image", SUPPLIER)) == 1
    assert run("--name", "brakes", "--paths", "x-*") == 1
    assert "exists already" in capsys.readouterr().err
    assert run("--name", "Brakes!", "--paths", "x-*") == 1
    assert keys.suppliers() == {SUPPLIER: ("brake-ecu-*", "abs-*")}
