"""Vehicle RPCs through the relay: check-ins forwarded, events stored and forwarded in order."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from dataclasses import replace
from typing import TYPE_CHECKING

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from staffel.v1 import vehicle_pb2, vehicle_pb2_grpc

from server.relay.app import Relay
from server.relay.config import RelayConfig
from server.relay.uplink import UplinkDownError

if TYPE_CHECKING:
    from tests.server.relay.conftest import UpstreamGRPC

REJECTED_VIN = "WVWZZZREJECTED0001"  # the upstream answers INVALID_ARGUMENT for it
UNKNOWN_ASSIGNMENT = "assignment-unknown"  # the upstream answers NOT_FOUND for it
VIN = "WVWZZZ1JZXW000001"


@pytest.fixture
async def vehicle(relay: Relay) -> AsyncIterator[vehicle_pb2_grpc.VehicleServiceAsyncStub]:
    """A vehicle's stub talking to the relay."""
    async with grpc.aio.insecure_channel(relay.addresses.grpc) as channel:
        yield vehicle_pb2_grpc.VehicleServiceStub(channel)


def _check_in(vin: str) -> vehicle_pb2.CheckInRequest:
    return vehicle_pb2.CheckInRequest(
        vin=vin,
        ecus=[vehicle_pb2.EcuVersion(serial="ECU-1", hardware_id="brake-v2", primary=True)],
        nonce=b"n" * 16,
    )


def _events(
    vin: str, *ids: str, assignment: str = "assignment-1"
) -> vehicle_pb2.ReportEventsRequest:
    return vehicle_pb2.ReportEventsRequest(
        vin=vin,
        events=[
            vehicle_pb2.VehicleEvent(
                event_id=i, assignment_id=assignment, kind=vehicle_pb2.EVENT_KIND_DOWNLOADED
            )
            for i in ids
        ],
    )


async def flush_when_up(relay: Relay) -> None:
    """Flushes the relay's queue, retrying while its channel reconnects to the upstream."""
    for _ in range(300):
        try:
            await relay.flush_events()
        except UplinkDownError:
            await asyncio.sleep(0.1)
        else:
            return
    raise AssertionError("the uplink did not come back within 30 s")


def _forwarded(upstream: UpstreamGRPC, vin: str) -> list[str]:
    return [e.event_id for r in upstream.service.reports if r.vin == vin for e in r.events]


async def test_check_in_is_forwarded(
    vehicle: vehicle_pb2_grpc.VehicleServiceAsyncStub,
    upstream_grpc: UpstreamGRPC,
    metric: Callable[..., float],
) -> None:
    request = _check_in(VIN)
    response = await vehicle.CheckIn(request, timeout=5)
    assert response.WhichOneof("outcome") == "nothing_to_do"
    assert response.next_poll_seconds == 300
    assert upstream_grpc.service.check_ins == [request]
    assert metric("staffel_relay_forwarded_rpcs_total", method="CheckIn") == 1


async def test_events_are_acknowledged_once_queued_and_forwarded_in_order(
    relay: Relay,
    vehicle: vehicle_pb2_grpc.VehicleServiceAsyncStub,
    upstream_grpc: UpstreamGRPC,
    metric: Callable[..., float],
) -> None:
    first = await vehicle.ReportEvents(_events(VIN, "e-1", "e-2", "e-3"), timeout=5)
    again = await vehicle.ReportEvents(_events(VIN, "e-3", "e-4"), timeout=5)
    assert (first.accepted, first.duplicates) == (3, 0)
    assert (again.accepted, again.duplicates) == (1, 1)
    await relay.flush_events()
    assert _forwarded(upstream_grpc, VIN) == ["e-1", "e-2", "e-3", "e-4"]
    assert metric("staffel_relay_events_forwarded_total") == 4
    assert metric("staffel_relay_queue_depth") == 0


async def test_upstream_statuses_reach_the_vehicle_and_refused_events_are_set_aside(
    relay: Relay,
    vehicle: vehicle_pb2_grpc.VehicleServiceAsyncStub,
    upstream_grpc: UpstreamGRPC,
    metric: Callable[..., float],
) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as rejected:
        await vehicle.CheckIn(_check_in(REJECTED_VIN), timeout=5)
    assert rejected.value.code() is grpc.StatusCode.INVALID_ARGUMENT
    assert rejected.value.details() == f"vin {REJECTED_VIN} unknown"

    await vehicle.ReportEvents(_events(VIN, "ok-1"), timeout=5)
    await vehicle.ReportEvents(_events(VIN, "bad-1", assignment=UNKNOWN_ASSIGNMENT), timeout=5)
    await vehicle.ReportEvents(_events(VIN, "ok-2"), timeout=5)
    await relay.flush_events()
    # Requests holding the refused event were aborted by the upstream; the others were taken.
    accepted = [
        e.event_id
        for r in upstream_grpc.service.reports
        if all(e.assignment_id != UNKNOWN_ASSIGNMENT for e in r.events)
        for e in r.events
    ]
    assert accepted == ["ok-1", "ok-2"]
    assert metric("staffel_relay_events_rejected_total") == 1
    assert metric("staffel_relay_queue_depth") == 0
    assert metric("staffel_relay_upstream_errors_total") == 0


async def test_through_an_outage_check_ins_come_from_the_last_answer_and_events_wait(
    relay: Relay,
    vehicle: vehicle_pb2_grpc.VehicleServiceAsyncStub,
    upstream_grpc: UpstreamGRPC,
    metric: Callable[..., float],
) -> None:
    known = await vehicle.CheckIn(_check_in(VIN), timeout=5)
    await upstream_grpc.stop()

    assert await vehicle.CheckIn(_check_in(VIN), timeout=5) == known
    assert metric("staffel_relay_checkins_from_cache_total") == 1
    with pytest.raises(grpc.aio.AioRpcError) as unknown:
        await vehicle.CheckIn(_check_in("WVWZZZ1JZXW000002"), timeout=5)
    assert unknown.value.code() is grpc.StatusCode.UNAVAILABLE
    assert f"the relay's uplink to {upstream_grpc.address} is down" in (
        unknown.value.details() or ""
    )

    for batch in (("a-1", "a-2"), ("a-3",)):
        answer = await vehicle.ReportEvents(_events(VIN, *batch), timeout=5)
        assert answer.accepted == len(batch)
    with pytest.raises(UplinkDownError):
        await relay.flush_events()
    assert metric("staffel_relay_queue_depth") == 3

    await upstream_grpc.restart()
    await flush_when_up(relay)
    assert _forwarded(upstream_grpc, VIN) == ["a-1", "a-2", "a-3"]
    assert metric("staffel_relay_queue_depth") == 0


async def test_queued_events_survive_a_relay_restart(
    relay_config: RelayConfig, upstream_grpc: UpstreamGRPC
) -> None:
    await upstream_grpc.stop()
    config = replace(relay_config, flush_interval=60.0)
    async with (
        Relay.from_config(config) as relay,
        grpc.aio.insecure_channel(relay.addresses.grpc) as channel,
    ):
        stub = vehicle_pb2_grpc.VehicleServiceStub(channel)
        await stub.ReportEvents(_events(VIN, "r-1", "r-2"), timeout=5)
    await upstream_grpc.restart()
    async with Relay.from_config(config) as relay:
        await flush_when_up(relay)
    assert _forwarded(upstream_grpc, VIN) == ["r-1", "r-2"]


async def test_grpc_health_reports_serving(relay: Relay) -> None:
    async with grpc.aio.insecure_channel(relay.addresses.grpc) as channel:
        health = health_pb2_grpc.HealthStub(channel)
        for service in ("", "staffel.v1.VehicleService"):
            answer = await health.Check(health_pb2.HealthCheckRequest(service=service), timeout=5)
            assert answer.status == health_pb2.HealthCheckResponse.SERVING


async def test_heartbeats_pass_through_unchanged_and_an_outage_answers_from_the_cache(
    vehicle: vehicle_pb2_grpc.VehicleServiceAsyncStub,
    upstream_grpc: UpstreamGRPC,
    metric: Callable[..., float],
) -> None:
    """The relay checks no heartbeat (only the server holds the chain); it forwards it.

    While the uplink is down a heartbeat gets the vehicle's last answer like any check-in;
    the link is then spent on the vehicle's side only, and the server takes a later link
    that skips it (within its bound) or the vehicle falls back to a signed manifest.
    """
    request = _check_in(VIN)
    request.heartbeat = bytes(range(32))
    known = await vehicle.CheckIn(request, timeout=5)
    assert upstream_grpc.service.check_ins == [request]
    await upstream_grpc.stop()
    request.heartbeat = bytes(range(1, 33))
    assert await vehicle.CheckIn(request, timeout=5) == known
    assert metric("staffel_relay_checkins_from_cache_total") == 1
