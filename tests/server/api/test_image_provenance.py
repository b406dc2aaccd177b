"""Every image records who uploaded it and who signed it, over real gRPC and the CLI."""

from __future__ import annotations

import asyncio
import contextlib
import io
import json
from collections.abc import AsyncIterator, Iterator
from datetime import UTC, datetime, timedelta

import grpc
import pytest
from staffel.v1 import release_pb2, release_pb2_grpc
from tuf.api.metadata import Metadata, Targets

from keys.keyset import BINS_ROLE, KeySet
from server.app import StaffelServer
from server.auth.roles import ENGINE, Role
from server.auth.tokens import create_token
from server.cli.main import main as staffel
from tests.server.api.test_grpc_statuses import bearer, server

__all__ = ["server"]  # the fixture, shared with the status tests


def _chunks(name: str, counter: int, data: bytes) -> Iterator[release_pb2.UploadImageChunk]:
    header = release_pb2.ImageHeader(
        name=name,
        version=f"{counter}.0",
        hardware_id=f"{name}-hw",
        release_counter=counter,
        ecu_type=f"{name}-ecu",
    )
    yield release_pb2.UploadImageChunk(header=header)
    yield release_pb2.UploadImageChunk(data=data)


async def _upload(server: StaffelServer, secret: str, name: str) -> release_pb2.Image:
    async with grpc.aio.insecure_channel(
        server.grpc_address, interceptors=bearer(secret)
    ) as channel:
        stub = release_pb2_grpc.ReleaseServiceStub(channel)
        image: release_pb2.Image = await stub.UploadImage(_chunks(name, 1, name.encode() * 64))
        return image


@pytest.fixture
async def uploads(
    server: StaffelServer,
) -> AsyncIterator[tuple[release_pb2.Image, release_pb2.Image, str]]:
    alice = create_token(
        server.database, name="alice", role=Role.RELEASE_MANAGER, created_by=ENGINE
    )
    bob = create_token(server.database, name="bob", role=Role.ADMIN, created_by=ENGINE)
    first = await _upload(server, alice, "gateway-fw")
    second = await _upload(server, bob, "brake-fw")
    yield first, second, bob


def _bins_keyids(server: StaffelServer) -> list[str]:
    keys = KeySet.load(server.config.keys_dir)
    return sorted(key.keyid for key in keys.public_keys("image", BINS_ROLE))


async def test_each_upload_names_its_uploader_and_signer(
    server: StaffelServer, uploads: tuple[release_pb2.Image, release_pb2.Image, str]
) -> None:
    first, second, bob = uploads
    assert (first.uploaded_by, first.uploader_role) == ("alice", "release_manager")
    assert (second.uploaded_by, second.uploader_role) == ("bob", "admin")
    for image in (first, second):
        assert image.signed_role.startswith("bin-")
        assert list(image.signed_keyids) == _bins_keyids(server)
        now = datetime.now(UTC)
        for moment in (image.uploaded_at, image.signed_at):
            assert now - timedelta(minutes=10) < moment.ToDatetime(tzinfo=UTC) <= now
        # The named metadata version is the one that added the image, signed by those keys.
        stored = server.image_repo.metadata(f"{image.signed_version}.{image.signed_role}.json")
        assert stored is not None
        bin_metadata = Metadata[Targets].from_bytes(stored)
        assert image.target_name in bin_metadata.signed.targets
        # The catalog passes hardware ids, release counter and ECU type into the target.
        custom = bin_metadata.signed.targets[image.target_name].custom
        assert custom["hardware_ids"] == [image.hardware_id]
        assert custom["release_counter"] == image.release_counter == 1
        assert custom["ecu_type"] == image.ecu_type == f"{image.name}-ecu"
        assert sorted(bin_metadata.signatures) == list(image.signed_keyids)
        if image.signed_version > 1:
            older = server.image_repo.metadata(
                f"{image.signed_version - 1}.{image.signed_role}.json"
            )
            assert older is not None
            assert image.target_name not in Metadata[Targets].from_bytes(older).signed.targets

    async with grpc.aio.insecure_channel(server.grpc_address, interceptors=bearer(bob)) as channel:
        listed = await release_pb2_grpc.ReleaseServiceStub(channel).ListImages(
            release_pb2.ListImagesRequest()
        )
    by_name = {image.target_name: image for image in listed.images}
    assert by_name[first.target_name] == first
    assert by_name[second.target_name] == second


def _cli(server: StaffelServer, secret: str, *args: str) -> str:
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        code = staffel(["--server", server.grpc_address, "--token", secret, *args])
    assert code == 0
    return out.getvalue()


async def test_image_list_shows_provenance(
    server: StaffelServer, uploads: tuple[release_pb2.Image, release_pb2.Image, str]
) -> None:
    first, second, bob = uploads
    text = await asyncio.to_thread(_cli, server, bob, "image", "list")
    lines = {line.split()[0]: line for line in text.splitlines()[1:]}
    assert "alice (release_manager)" in lines[first.target_name]
    assert "bob (admin)" in lines[second.target_name]
    assert f"{first.signed_role} v{first.signed_version}" in lines[first.target_name]
    assert first.signed_keyids[0][:8] in lines[first.target_name]

    answer = json.loads(await asyncio.to_thread(_cli, server, bob, "--json", "image", "list"))
    images = {image["targetName"]: image for image in answer["images"]}
    assert images[first.target_name]["uploadedBy"] == "alice"
    assert images[second.target_name]["uploaderRole"] == "admin"
    assert images[second.target_name]["signedKeyids"] == list(second.signed_keyids)
    assert images[second.target_name]["signedRole"] == second.signed_role
    assert "signedAt" in images[second.target_name]
