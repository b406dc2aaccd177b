"""A server started with a release batch holds to it from the first wave on: the start of a
campaign, through CampaignService, releases no more than the batch; the engine the rest."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import grpc
import pytest
from staffel.v1 import campaign_pb2, campaign_pb2_grpc

from keys.keyset import init_keyset
from server.app import ServerConfig, StaffelServer
from server.auth.roles import ENGINE, Role
from server.auth.tokens import create_token
from tests.server.api.test_grpc_statuses import bearer
from tests.server.campaigns.support import add_vehicle, publish

BATCH, VEHICLES = 2, 5


@pytest.fixture
async def server(tmp_path: Path, database_url: str) -> AsyncIterator[StaffelServer]:
    init_keyset(tmp_path / "keys")
    staffel = StaffelServer(
        ServerConfig(
            data_dir=tmp_path / "data",
            keys_dir=tmp_path / "keys",
            database_url=database_url,
            grpc_listen="127.0.0.1:0",
            http_listen="127.0.0.1:0",
            engine_interval_seconds=0,
            presign_interval_seconds=0,
            release_batch=BATCH,
        )
    )
    await staffel.start()
    yield staffel
    await staffel.stop()


async def test_a_start_releases_at_most_the_servers_release_batch(server: StaffelServer) -> None:
    for number in range(1, VEHICLES + 1):
        add_vehicle(server.database, number)
    bundle = publish(server.database)
    manager = create_token(
        server.database, name="alice", role=Role.RELEASE_MANAGER, created_by=ENGINE
    )
    approver = create_token(server.database, name="bob", role=Role.APPROVER, created_by=ENGINE)
    address = server.grpc_address
    async with (
        grpc.aio.insecure_channel(address, interceptors=bearer(manager)) as as_manager,
        grpc.aio.insecure_channel(address, interceptors=bearer(approver)) as as_approver,
    ):
        created = await campaign_pb2_grpc.CampaignServiceStub(as_manager).CreateCampaign(
            campaign_pb2.CreateCampaignRequest(name="gw-2", bundle_id=bundle)
        )
        await campaign_pb2_grpc.CampaignServiceStub(as_approver).ApproveCampaign(
            campaign_pb2.CampaignAction(campaign_id=created.campaign_id)
        )
        started = await campaign_pb2_grpc.CampaignServiceStub(as_manager).StartCampaign(
            campaign_pb2.StartCampaignRequest(campaign_id=created.campaign_id)
        )
    assert started.state == campaign_pb2.CAMPAIGN_STATE_RUNNING
    assert (started.counts.pending, started.counts.queued) == (BATCH, VEHICLES - BATCH)
    released = [sum(outcome.released for outcome in server.engine.step()) for _ in range(3)]
    assert released == [BATCH, VEHICLES - 2 * BATCH, 0]
