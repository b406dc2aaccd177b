"""Bundles are named by name and version, created once, and never change (real gRPC)."""

from __future__ import annotations

import asyncio
import contextlib
import io
import json
from collections.abc import Iterator

import grpc
from staffel.v1 import release_pb2, release_pb2_grpc

from server.app import StaffelServer
from server.auth.roles import ENGINE, Role
from server.auth.tokens import create_token
from server.cli.main import main as staffel
from tests.server.api.test_grpc_statuses import bearer, expect_status, server

__all__ = ["server"]  # the fixture, shared with the status tests


def _chunks(name: str, data: bytes) -> Iterator[release_pb2.UploadImageChunk]:
    header = release_pb2.ImageHeader(
        name=name, version="1.0", hardware_id=f"{name}-hw", release_counter=1
    )
    yield release_pb2.UploadImageChunk(header=header)
    yield release_pb2.UploadImageChunk(data=data)


def _request(version: str, *images: str) -> release_pb2.CreateBundleRequest:
    return release_pb2.CreateBundleRequest(
        name="sedan-2026", vehicle_model="sedan", image_target_names=images, version=version
    )


async def test_a_bundle_version_is_created_once(server: StaffelServer) -> None:
    secret = create_token(server.database, name="rm", role=Role.RELEASE_MANAGER, created_by=ENGINE)
    async with grpc.aio.insecure_channel(
        server.grpc_address, interceptors=bearer(secret)
    ) as channel:
        releases = release_pb2_grpc.ReleaseServiceStub(channel)
        for name in ("gw", "brake", "door"):
            await releases.UploadImage(_chunks(name, name.encode() * 100))

        first = await releases.CreateBundle(_request("2026.1", "gw-1.0", "brake-1.0"))
        assert (first.name, first.version) == ("sedan-2026", "2026.1")
        # The same images again (in any order): the same bundle, nothing new.
        again = await releases.CreateBundle(_request("2026.1", "brake-1.0", "gw-1.0"))
        assert again == first
        # Other images, or another model, under the same name and version: refused.
        await expect_status(
            grpc.StatusCode.ALREADY_EXISTS,
            releases.CreateBundle(_request("2026.1", "gw-1.0", "door-1.0")),
            "bundle sedan-2026 version 2026.1 exists already",
        )
        other_model = _request("2026.1", "gw-1.0", "brake-1.0")
        other_model.vehicle_model = "coupe"
        await expect_status(
            grpc.StatusCode.ALREADY_EXISTS,
            releases.CreateBundle(other_model),
            "create it under a new version",
        )
        # A new version may hold other images; the default version is "1".
        second = await releases.CreateBundle(_request("2026.2", "gw-1.0", "door-1.0"))
        default = await releases.CreateBundle(_request("", "door-1.0"))
        assert default.version == "1"
        await expect_status(
            grpc.StatusCode.INVALID_ARGUMENT,
            releases.CreateBundle(_request("bad version", "gw-1.0")),
            "bundle version",
        )

        listed = await releases.ListBundles(release_pb2.ListBundlesRequest())
    assert [(b.bundle_id, b.version) for b in listed.bundles] == [
        (first.bundle_id, "2026.1"),
        (second.bundle_id, "2026.2"),
        (default.bundle_id, "1"),
    ]
    assert [i.target_name for i in listed.bundles[0].images] == ["brake-1.0", "gw-1.0"]
    assert [i.target_name for i in listed.bundles[1].images] == ["door-1.0", "gw-1.0"]

    text = await asyncio.to_thread(_cli, server, secret, "bundle", "list")
    assert "sedan-2026" in text
    assert "2026.2" in text
    answer = json.loads(await asyncio.to_thread(_cli, server, secret, "--json", "bundle", "list"))
    assert [b["version"] for b in answer["bundles"]] == ["2026.1", "2026.2", "1"]
    # The CLI's create without --version keeps working: version "1", idempotent.
    created = await asyncio.to_thread(
        _cli,
        server,
        secret,
        "bundle",
        "create",
        "--name",
        "sedan-2026",
        "--model",
        "sedan",
        "door-1.0",
    )
    assert f"bundle {default.bundle_id} (sedan-2026 version 1)" in created


def test_no_call_changes_a_bundle() -> None:
    methods = set(release_pb2.DESCRIPTOR.services_by_name["ReleaseService"].methods_by_name)
    assert methods == {"UploadImage", "CreateBundle", "ListImages", "ListBundles"}


def _cli(server: StaffelServer, secret: str, *args: str) -> str:
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        code = staffel(["--server", server.grpc_address, "--token", secret, *args])
    assert code == 0
    return out.getvalue()
