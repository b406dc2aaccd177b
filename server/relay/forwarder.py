"""The relay's gRPC ``VehicleService``: forwards each call to the upstream unchanged.

The upstream's status code and details reach the vehicle as they were sent (an
INVALID_ARGUMENT stays INVALID_ARGUMENT). When the upstream cannot be reached the vehicle gets
UNAVAILABLE with a message saying that the relay's uplink is down, and retries later.
"""

from __future__ import annotations

from typing import TypeVar

import grpc
from google.protobuf.message import Message
from staffel.v1 import vehicle_pb2, vehicle_pb2_grpc

from server.relay.metrics import RelayMetrics

RequestT = TypeVar("RequestT", bound=Message)
ResponseT = TypeVar("ResponseT", bound=Message)

# Codes that mean the call never got a usable answer from the upstream.
_UPLINK_FAILURES = frozenset({grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED})


class VehicleForwarder(vehicle_pb2_grpc.VehicleServiceServicer):
    """Forwards ``CheckIn`` and ``ReportEvents`` to the upstream ``VehicleService``."""

    def __init__(
        self,
        *,
        channel: grpc.aio.Channel,
        upstream: str,
        deadline: float,
        metrics: RelayMetrics,
    ) -> None:
        """Forwards over ``channel``, which stays owned by the caller.

        Args:
            channel: The channel to the upstream.
            upstream: The upstream's ``HOST:PORT``, for messages.
            deadline: Seconds an upstream call may take at most (the vehicle's own deadline
                applies when it is shorter).
            metrics: Counts forwarded calls and upstream failures.
        """
        self._stub = vehicle_pb2_grpc.VehicleServiceStub(channel)
        self._upstream = upstream
        self._deadline = deadline
        self._metrics = metrics

    async def CheckIn(
        self,
        request: vehicle_pb2.CheckInRequest,
        context: grpc.aio.ServicerContext[vehicle_pb2.CheckInRequest, vehicle_pb2.CheckInResponse],
    ) -> vehicle_pb2.CheckInResponse:
        """Forwards a vehicle's check-in to the upstream."""
        return await self._forward("CheckIn", self._stub.CheckIn, request, context)

    async def ReportEvents(
        self,
        request: vehicle_pb2.ReportEventsRequest,
        context: grpc.aio.ServicerContext[
            vehicle_pb2.ReportEventsRequest, vehicle_pb2.ReportEventsResponse
        ],
    ) -> vehicle_pb2.ReportEventsResponse:
        """Forwards a vehicle's batch of events to the upstream."""
        return await self._forward("ReportEvents", self._stub.ReportEvents, request, context)

    async def _forward(
        self,
        method: str,
        call: grpc.aio.UnaryUnaryMultiCallable[RequestT, ResponseT],
        request: RequestT,
        context: grpc.aio.ServicerContext[RequestT, ResponseT],
    ) -> ResponseT:
        self._metrics.forwarded_rpcs.labels(method=method).inc()
        timeout = self._deadline
        remaining: float | None = context.time_remaining()
        if remaining is not None:
            timeout = min(timeout, max(remaining, 0.0))
        try:
            return await call(request, timeout=timeout)
        except grpc.aio.AioRpcError as exc:
            code, details = self._status_for_vehicle(exc, timeout)
            await context.abort(code, details)

    def _status_for_vehicle(
        self, exc: grpc.aio.AioRpcError, timeout: float
    ) -> tuple[grpc.StatusCode, str]:
        """The status to give the vehicle for a failed upstream call."""
        code = exc.code()
        details = exc.details() or ""
        if code not in _UPLINK_FAILURES:
            return code, details
        self._metrics.upstream_errors.inc()
        if code is grpc.StatusCode.DEADLINE_EXCEEDED:
            return code, (
                f"the relay's uplink to {self._upstream} gave no answer in {timeout:g} s: {details}"
            )
        return code, f"the relay's uplink to {self._upstream} is down: {details}"
