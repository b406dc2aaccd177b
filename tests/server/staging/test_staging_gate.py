"""Staging readiness gates a wave at a site; a relay never ready delays it only for the wait."""

from __future__ import annotations

import os
from collections.abc import AsyncIterator
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any

import grpc
import pytest
from staffel.v1 import relay_pb2, relay_pb2_grpc

from server.relay.app import Relay
from server.relay.config import RelayConfig
from server.staging.gate import may_open_wave
from server.staging.models import ensure_tables
from server.staging.service import RelayServicer
from server.store import Database

if TYPE_CHECKING:
    from tests.server.relay.conftest import UpstreamHTTP

T0 = datetime(2026, 11, 2, 6, 0, tzinfo=UTC)
WAIT = timedelta(minutes=30)


class PlanningServer(relay_pb2_grpc.RelayServiceServicer):
    """An upstream whose plan is set by the test; readiness goes to the real servicer."""

    def __init__(self, servicer: RelayServicer) -> None:
        self.plan = relay_pb2.StagingPlan(plan_id="p1")
        self.servicer = servicer

    async def GetStagingPlan(  # noqa: N802 (the method name comes from the proto)
        self, request: relay_pb2.GetStagingPlanRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> relay_pb2.StagingPlan:
        return self.plan

    async def ReportReadiness(  # noqa: N802 (the method name comes from the proto)
        self, request: relay_pb2.ReadinessReport, context: grpc.aio.ServicerContext[Any, Any]
    ) -> relay_pb2.ReadinessAck:
        return await self.servicer.ReportReadiness(request, context)


@pytest.fixture
def database(tmp_path: Path) -> Database:
    """A staging store on SQLite."""
    database = Database.from_url(f"sqlite:///{tmp_path / 'staging.db'}")
    ensure_tables(database.engine)
    return database


@pytest.fixture
async def planning(database: Database) -> AsyncIterator[tuple[PlanningServer, str]]:
    """The planning upstream on a free loopback port."""
    server = grpc.aio.server()
    planner = PlanningServer(RelayServicer(database=database))
    relay_pb2_grpc.add_RelayServiceServicer_to_server(planner, server)
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    yield planner, f"127.0.0.1:{port}"
    await server.stop(None)


def _gate(database: Database, site: str, needed: set[str], now: datetime) -> bool:
    with database.session() as session:
        return may_open_wave(
            session, campaign_id=1, wave=2, site=site, needed_sha256=needed, now=now, wait=WAIT
        )


async def test_wave_opens_at_a_site_once_its_relay_holds_the_bundle(
    database: Database,
    planning: tuple[PlanningServer, str],
    upstream_http: UpstreamHTTP,
    relay_config: RelayConfig,
) -> None:
    planner, address = planning
    data = os.urandom(256 * 1024)
    filename = upstream_http.add_blob(data, "gateway-fw-3.0")
    sha = filename[:64]
    planner.plan.blobs.append(
        relay_pb2.StagedBlob(sha256=sha, target_name="gateway-fw-3.0", length=len(data))
    )
    upstream_http.failures[f"/image/targets/{filename}"] = 500  # not fetchable yet
    config = replace(
        relay_config, upstream_grpc=address, site="plant-munich", relay_id="relay-muc-1"
    )
    async with Relay.from_config(config) as relay:
        stager = relay.stager()
        assert not await stager.stage_once()
        assert not _gate(database, "plant-munich", {sha}, T0)
        assert not _gate(database, "plant-munich", {sha}, T0 + WAIT / 2)
        del upstream_http.failures[f"/image/targets/{filename}"]
        assert await stager.stage_once()
        assert _gate(database, "plant-munich", {sha}, T0 + WAIT / 2)
        assert (config.cache_dir / "blobs" / filename).read_bytes() == data
        ready = relay.metrics.registry.get_sample_value("staffel_relay_staging_ready")
        assert ready == 1


async def test_a_relay_that_never_becomes_ready_delays_the_wave_only_for_the_wait(
    database: Database, planning: tuple[PlanningServer, str]
) -> None:
    _, address = planning
    async with grpc.aio.insecure_channel(address) as channel:
        await relay_pb2_grpc.RelayServiceStub(channel).ReportReadiness(
            relay_pb2.ReadinessReport(
                relay_id="relay-lej-1", site="plant-leipzig", plan_id="p1", blobs_total=1
            ),
            timeout=5,
        )
    needed = {"ab" * 32}
    assert not _gate(database, "plant-leipzig", needed, T0)
    assert not _gate(database, "plant-leipzig", needed, T0 + WAIT - timedelta(seconds=1))
    assert _gate(database, "plant-leipzig", needed, T0 + WAIT)
    # A site without a relay never waits.
    assert _gate(database, "dealer-bonn", needed, T0)
