"""Vehicle RPCs through the relay: forwarded upstream, statuses passed through unchanged."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from typing import TYPE_CHECKING

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from staffel.v1 import vehicle_pb2, vehicle_pb2_grpc

from server.relay.app import Relay

if TYPE_CHECKING:
    from tests.server.relay.conftest import UpstreamGRPC

REJECTED_VIN = "WVWZZZREJECTED0001"  # the upstream answers INVALID_ARGUMENT for it
UNKNOWN_ASSIGNMENT = "assignment-unknown"  # the upstream answers NOT_FOUND for it


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


async def test_check_in_is_forwarded(
    vehicle: vehicle_pb2_grpc.VehicleServiceAsyncStub,
    upstream_grpc: UpstreamGRPC,
    metric: Callable[..., float],
) -> None:
    request = _check_in("WVWZZZ1JZXW000001")
    response = await vehicle.CheckIn(request, timeout=5)
    assert response.WhichOneof("outcome") == "nothing_to_do"
    assert response.next_poll_seconds == 300
    assert upstream_grpc.service.check_ins == [request]
    assert metric("staffel_relay_forwarded_rpcs_total", method="CheckIn") == 1


async def test_report_events_is_forwarded(
    vehicle: vehicle_pb2_grpc.VehicleServiceAsyncStub,
    upstream_grpc: UpstreamGRPC,
    metric: Callable[..., float],
) -> None:
    request = vehicle_pb2.ReportEventsRequest(
        vin="WVWZZZ1JZXW000001",
        events=[
            vehicle_pb2.VehicleEvent(
                event_id=f"event-{i}",
                assignment_id="assignment-1",
                kind=vehicle_pb2.EVENT_KIND_DOWNLOADED,
            )
            for i in range(3)
        ],
    )
    response = await vehicle.ReportEvents(request, timeout=5)
    assert response.accepted == 3
    assert upstream_grpc.service.reports == [request]
    assert metric("staffel_relay_forwarded_rpcs_total", method="ReportEvents") == 1


async def test_upstream_statuses_reach_the_vehicle_unchanged(
    vehicle: vehicle_pb2_grpc.VehicleServiceAsyncStub, metric: Callable[..., float]
) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as rejected:
        await vehicle.CheckIn(_check_in(REJECTED_VIN), timeout=5)
    assert rejected.value.code() is grpc.StatusCode.INVALID_ARGUMENT
    assert rejected.value.details() == f"vin {REJECTED_VIN} unknown"

    report = vehicle_pb2.ReportEventsRequest(
        vin="WVWZZZ1JZXW000001",
        events=[vehicle_pb2.VehicleEvent(event_id="e-1", assignment_id=UNKNOWN_ASSIGNMENT)],
    )
    with pytest.raises(grpc.aio.AioRpcError) as missing:
        await vehicle.ReportEvents(report, timeout=5)
    assert missing.value.code() is grpc.StatusCode.NOT_FOUND
    assert missing.value.details() == "assignment-unknown does not exist"
    assert metric("staffel_relay_upstream_errors_total") == 0


async def test_unreachable_upstream_is_unavailable_with_uplink_down(
    vehicle: vehicle_pb2_grpc.VehicleServiceAsyncStub,
    upstream_grpc: UpstreamGRPC,
    metric: Callable[..., float],
) -> None:
    await upstream_grpc.stop()
    with pytest.raises(grpc.aio.AioRpcError) as check_in:
        await vehicle.CheckIn(_check_in("WVWZZZ1JZXW000001"), timeout=5)
    with pytest.raises(grpc.aio.AioRpcError) as report:
        await vehicle.ReportEvents(
            vehicle_pb2.ReportEventsRequest(vin="WVWZZZ1JZXW000001"), timeout=5
        )
    for down in (check_in.value, report.value):
        assert down.code() is grpc.StatusCode.UNAVAILABLE
        assert f"the relay's uplink to {upstream_grpc.address} is down" in (down.details() or "")
    assert metric("staffel_relay_upstream_errors_total") == 2


async def test_grpc_health_reports_serving(relay: Relay) -> None:
    async with grpc.aio.insecure_channel(relay.addresses.grpc) as channel:
        health = health_pb2_grpc.HealthStub(channel)
        for service in ("", "staffel.v1.VehicleService"):
            answer = await health.Check(health_pb2.HealthCheckRequest(service=service), timeout=5)
            assert answer.status == health_pb2.HealthCheckResponse.SERVING
