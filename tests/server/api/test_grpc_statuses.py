"""Every API answers bad input with a precise gRPC status, over a real socket."""

from __future__ import annotations

import os
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import grpc
import pytest
from staffel.v1 import (
    auth_pb2,
    auth_pb2_grpc,
    campaign_pb2,
    campaign_pb2_grpc,
    fleet_pb2,
    fleet_pb2_grpc,
    release_pb2,
    release_pb2_grpc,
    vehicle_pb2,
    vehicle_pb2_grpc,
)

from keys.keyset import init_keyset
from server.app import ServerConfig, StaffelServer
from server.auth.roles import ENGINE, Role
from server.auth.tokens import create_token

VIN = "WSF00000000000001"


class TokenMixin:
    """Adds a bearer token to a call's metadata."""

    def __init__(self, token: str) -> None:
        self.token = token

    def _with_token(self, details: Any) -> Any:
        metadata = grpc.aio.Metadata(*(details.metadata or ()))
        metadata.add("authorization", f"Bearer {self.token}")
        return details._replace(metadata=metadata)


class Bearer(TokenMixin, grpc.aio.UnaryUnaryClientInterceptor):  # type: ignore[misc]
    """Adds a bearer token to every unary call of a channel."""

    async def intercept_unary_unary(self, continuation: Any, details: Any, request: Any) -> Any:
        return await continuation(self._with_token(details), request)


class BearerStream(TokenMixin, grpc.aio.StreamUnaryClientInterceptor):  # type: ignore[misc]
    """The same for client-streaming calls (grpc.aio files each interceptor under one kind)."""

    async def intercept_stream_unary(self, continuation: Any, details: Any, requests: Any) -> Any:
        return await continuation(self._with_token(details), requests)


def bearer(secret: str) -> list[Any]:
    return [Bearer(secret), BearerStream(secret)]


@pytest.fixture
async def server(tmp_path: Path, database_url: str) -> AsyncIterator[StaffelServer]:
    init_keyset(tmp_path / "keys")
    server = StaffelServer(
        ServerConfig(
            data_dir=tmp_path / "data",
            keys_dir=tmp_path / "keys",
            database_url=database_url,
            grpc_listen="127.0.0.1:0",
            http_listen="127.0.0.1:0",
        )
    )
    await server.start()
    yield server
    await server.stop()


def token(server: StaffelServer, role: Role) -> str:
    return create_token(server.database, name=role.value, role=role, created_by=ENGINE)


@pytest.fixture
async def channel(server: StaffelServer) -> AsyncIterator[grpc.aio.Channel]:
    """A channel whose calls carry an admin's token."""
    admin = bearer(token(server, Role.ADMIN))
    async with grpc.aio.insecure_channel(server.grpc_address, interceptors=admin) as channel:
        yield channel


async def test_auth_statuses(server: StaffelServer) -> None:
    request = campaign_pb2.StartCampaignRequest(campaign_id="c1")
    async with grpc.aio.insecure_channel(server.grpc_address) as anonymous:
        await expect_status(
            grpc.StatusCode.UNAUTHENTICATED,
            campaign_pb2_grpc.CampaignServiceStub(anonymous).StartCampaign(request),
            "needs a token",
        )
        await expect_status(
            grpc.StatusCode.UNAUTHENTICATED,
            campaign_pb2_grpc.CampaignServiceStub(anonymous).StartCampaign(
                request, metadata=[("authorization", "Bearer stf_forged")]
            ),
            "unknown or revoked",
        )
        # Vehicles are not behind user tokens: the call reaches the handler.
        await expect_status(
            grpc.StatusCode.NOT_FOUND,
            vehicle_pb2_grpc.VehicleServiceStub(anonymous).CheckIn(
                vehicle_pb2.CheckInRequest(vin=VIN, nonce=os.urandom(16))
            ),
            "not registered",
        )
    viewer = bearer(token(server, Role.VIEWER))
    async with grpc.aio.insecure_channel(server.grpc_address, interceptors=viewer) as channel:
        campaigns = campaign_pb2_grpc.CampaignServiceStub(channel)
        await expect_status(
            grpc.StatusCode.PERMISSION_DENIED, campaigns.StartCampaign(request), "may not call"
        )
        await expect_status(
            grpc.StatusCode.NOT_FOUND,
            campaigns.GetCampaign(campaign_pb2.GetCampaignRequest(campaign_id="c1")),
            "does not exist",
        )
        await expect_status(
            grpc.StatusCode.PERMISSION_DENIED,
            auth_pb2_grpc.AuthServiceStub(channel).CreateToken(
                auth_pb2.CreateTokenRequest(name="eve", role="admin")
            ),
            "may not call",
        )


async def expect_status(code: grpc.StatusCode, call: object, match: str) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as raised:
        await call  # type: ignore[misc]
    assert raised.value.code() == code
    assert match in (raised.value.details() or "")


async def upload(
    channel: grpc.aio.Channel, version: str, counter: int, data: bytes
) -> release_pb2.Image:
    async def chunks() -> AsyncIterator[release_pb2.UploadImageChunk]:
        yield release_pb2.UploadImageChunk(
            header=release_pb2.ImageHeader(
                name="gw", version=version, hardware_id="gw-x1", release_counter=counter
            )
        )
        yield release_pb2.UploadImageChunk(data=data)

    return await release_pb2_grpc.ReleaseServiceStub(channel).UploadImage(chunks())


async def test_fleet_statuses(channel: grpc.aio.Channel) -> None:
    fleet = fleet_pb2_grpc.FleetServiceStub(channel)
    gateway = fleet_pb2.Ecu(serial="gw-1", hardware_id="gw-x1", primary=True)
    answer = await fleet.ProvisionVehicle(
        fleet_pb2.ProvisionVehicleRequest(vin=VIN, model="sedan", ecus=[gateway])
    )
    assert b'"_type": "root"' in answer.image_root or b'"_type":"root"' in answer.image_root
    assert answer.director_root != answer.image_root
    await expect_status(
        grpc.StatusCode.ALREADY_EXISTS,
        fleet.ProvisionVehicle(
            fleet_pb2.ProvisionVehicleRequest(vin=VIN, model="sedan", ecus=[gateway])
        ),
        "registered already",
    )
    await expect_status(
        grpc.StatusCode.INVALID_ARGUMENT,
        fleet.ProvisionVehicle(
            fleet_pb2.ProvisionVehicleRequest(vin="short", model="sedan", ecus=[gateway])
        ),
        "VIN",
    )
    await expect_status(
        grpc.StatusCode.NOT_FOUND,
        fleet.GetVehicle(fleet_pb2.GetVehicleRequest(vin="WSF00000000000002")),
        "not registered",
    )


async def test_vehicle_statuses(channel: grpc.aio.Channel) -> None:
    vehicles = vehicle_pb2_grpc.VehicleServiceStub(channel)
    await fleet_pb2_grpc.FleetServiceStub(channel).ProvisionVehicle(
        fleet_pb2.ProvisionVehicleRequest(
            vin=VIN,
            model="sedan",
            ecus=[fleet_pb2.Ecu(serial="gw-1", hardware_id="gw-x1", primary=True)],
        )
    )
    good_ecu = vehicle_pb2.EcuVersion(serial="gw-1", hardware_id="gw-x1", primary=True)
    quiet = await vehicles.CheckIn(
        vehicle_pb2.CheckInRequest(vin=VIN, ecus=[good_ecu], nonce=os.urandom(32))
    )
    assert quiet.WhichOneof("outcome") == "nothing_to_do"
    assert quiet.next_poll_seconds > 0
    await expect_status(
        grpc.StatusCode.NOT_FOUND,
        vehicles.CheckIn(
            vehicle_pb2.CheckInRequest(
                vin="WSF00000000000002", ecus=[good_ecu], nonce=os.urandom(32)
            )
        ),
        "not registered",
    )
    await expect_status(
        grpc.StatusCode.INVALID_ARGUMENT,
        vehicles.CheckIn(vehicle_pb2.CheckInRequest(vin=VIN, ecus=[good_ecu], nonce=b"short")),
        "nonce",
    )
    wrong_hardware = vehicle_pb2.EcuVersion(serial="gw-1", hardware_id="gw-x2", primary=True)
    await expect_status(
        grpc.StatusCode.INVALID_ARGUMENT,
        vehicles.CheckIn(
            vehicle_pb2.CheckInRequest(vin=VIN, ecus=[wrong_hardware], nonce=os.urandom(32))
        ),
        "hardware id",
    )
    await expect_status(
        grpc.StatusCode.INVALID_ARGUMENT,
        vehicles.ReportEvents(
            vehicle_pb2.ReportEventsRequest(
                vin=VIN,
                events=[
                    vehicle_pb2.VehicleEvent(event_id="x", kind=vehicle_pb2.EVENT_KIND_COMMITTED)
                ],
            )
        ),
        "event id",
    )


async def test_release_and_campaign_statuses(channel: grpc.aio.Channel) -> None:
    image = await upload(channel, "1.0", 1, b"firmware" * 1000)
    assert image.target_name == "gw-1.0"
    assert image.length == 8000
    await expect_status(
        grpc.StatusCode.ALREADY_EXISTS, upload(channel, "1.0", 2, b"other"), "exists already"
    )
    await expect_status(
        grpc.StatusCode.INVALID_ARGUMENT, upload(channel, "0.9", 1, b"older"), "release counter"
    )

    async def headless() -> AsyncIterator[release_pb2.UploadImageChunk]:
        yield release_pb2.UploadImageChunk(data=b"no header")

    releases = release_pb2_grpc.ReleaseServiceStub(channel)
    await expect_status(
        grpc.StatusCode.INVALID_ARGUMENT, releases.UploadImage(headless()), "header"
    )
    await expect_status(
        grpc.StatusCode.NOT_FOUND,
        releases.CreateBundle(
            release_pb2.CreateBundleRequest(
                name="b", vehicle_model="sedan", image_target_names=["gw-9.9"]
            )
        ),
        "gw-9.9",
    )
    bundle = await releases.CreateBundle(
        release_pb2.CreateBundleRequest(
            name="b", vehicle_model="sedan", image_target_names=["gw-1.0"]
        )
    )
    campaigns = campaign_pb2_grpc.CampaignServiceStub(channel)
    draft = await campaigns.CreateCampaign(
        campaign_pb2.CreateCampaignRequest(
            name="c",
            bundle_id=bundle.bundle_id,
            selector=campaign_pb2.FleetSelector(vehicle_model="sedan"),
        )
    )
    await expect_status(
        grpc.StatusCode.FAILED_PRECONDITION,
        campaigns.StartCampaign(campaign_pb2.StartCampaignRequest(campaign_id=draft.campaign_id)),
        "only a campaign that is approved",
    )
    await expect_status(
        grpc.StatusCode.INVALID_ARGUMENT,
        campaigns.GetCampaign(campaign_pb2.GetCampaignRequest(campaign_id="nope")),
        "campaign id",
    )


async def test_health_watch_streams_through_the_interceptor(channel: grpc.aio.Channel) -> None:
    from grpc_health.v1 import health_pb2, health_pb2_grpc

    stream = health_pb2_grpc.HealthStub(channel).Watch(
        health_pb2.HealthCheckRequest(service="staffel.v1.VehicleService"), timeout=1
    )
    statuses = []
    with pytest.raises(grpc.aio.AioRpcError) as ended:
        async for answer in stream:
            statuses.append(answer.status)
    assert statuses == [health_pb2.HealthCheckResponse.SERVING]
    assert ended.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
