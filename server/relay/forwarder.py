"""The relay's gRPC ``VehicleService``: check-ins go upstream, events go through the outbox.

``CheckIn`` is forwarded; the upstream's status code and details reach the vehicle as they
were sent (an INVALID_ARGUMENT stays INVALID_ARGUMENT). Each answer is kept, and while the
uplink is down a vehicle gets its latest answer again: its assignment and the Director
metadata signed centrally for it, whose expiry bounds how long that remains usable. A vehicle
the relay never saw gets UNAVAILABLE and retries later. Heartbeat check-ins (a link of the
hash chain the vehicle's signed manifest committed to) pass through unchanged and unchecked
(only the server holds the chain); one answered from the cache spends a link the server
never saw, which it skips (up to its bound) or the vehicle falls back to a signed manifest.

``ReportEvents`` is acknowledged once the events are durably queued at the relay; the
``EventUplink`` forwards them in order, exactly once (see ``server.relay.outbox``).

With mTLS on, a vehicle may only speak for its own VIN and must belong to the relay's site.
"""

from __future__ import annotations

import logging
from typing import Any

import grpc
from staffel.v1 import vehicle_pb2, vehicle_pb2_grpc

from server.relay.access import SitePolicy, grpc_peer_identity
from server.relay.errors import AccessDeniedError, CacheError
from server.relay.metrics import RelayMetrics
from server.relay.outbox import Outbox
from server.relay.uplink import UPLINK_FAILURES, EventUplink

logger = logging.getLogger(__name__)

MAX_EVENTS_PER_REPORT = 1000


class VehicleForwarder(vehicle_pb2_grpc.VehicleServiceServicer):
    """Serves ``CheckIn`` and ``ReportEvents`` for the site's vehicles."""

    def __init__(
        self,
        *,
        channel: grpc.aio.Channel,
        upstream: str,
        deadline: float,
        metrics: RelayMetrics,
        outbox: Outbox,
        uplink: EventUplink,
        policy: SitePolicy,
    ) -> None:
        """Forwards over ``channel``; channel, outbox and uplink stay owned by the caller.

        Args:
            channel: The channel to the upstream.
            upstream: The upstream's ``HOST:PORT``, for messages.
            deadline: Seconds an upstream call may take at most (the vehicle's own deadline
                applies when it is shorter).
            metrics: Counts forwarded calls and upstream failures.
            outbox: Queues events and keeps the last check-in answers.
            uplink: Woken when events were queued.
            policy: Who may be answered.
        """
        self._stub = vehicle_pb2_grpc.VehicleServiceStub(channel)
        self._upstream = upstream
        self._deadline = deadline
        self._metrics = metrics
        self._outbox = outbox
        self._uplink = uplink
        self._policy = policy

    async def _admit(self, context: grpc.aio.ServicerContext[Any, Any], vin: str) -> None:
        try:
            self._policy.admit(grpc_peer_identity(context.auth_context()), vin=vin)
        except AccessDeniedError as exc:
            self._metrics.refused.labels(reason=exc.reason).inc()
            logger.warning("refused a call about %s: %s", vin, exc)
            await context.abort(grpc.StatusCode.PERMISSION_DENIED, str(exc))

    async def CheckIn(
        self,
        request: vehicle_pb2.CheckInRequest,
        context: grpc.aio.ServicerContext[vehicle_pb2.CheckInRequest, vehicle_pb2.CheckInResponse],
    ) -> vehicle_pb2.CheckInResponse:
        """Forwards a vehicle's check-in; answers from the last answer while the uplink is down."""
        await self._admit(context, request.vin)
        self._metrics.forwarded_rpcs.labels(method="CheckIn").inc()
        timeout = self._timeout(context)
        try:
            answer: vehicle_pb2.CheckInResponse = await self._stub.CheckIn(request, timeout=timeout)
        except grpc.aio.AioRpcError as exc:
            if exc.code() not in UPLINK_FAILURES:
                await context.abort(exc.code(), exc.details() or "")
            self._metrics.upstream_errors.inc()
            cached = await self._outbox.last_check_in(request.vin)
            if cached is None:
                await context.abort(exc.code(), self._uplink_down(exc, timeout))
            self._metrics.checkins_from_cache.inc()
            logger.info("uplink down: answered %s with its last check-in answer", request.vin)
            return cached
        try:
            await self._outbox.remember_check_in(request.vin, answer)
        except CacheError as exc:
            logger.warning("cannot keep the check-in answer of %s: %s", request.vin, exc)
        return answer

    async def ReportEvents(
        self,
        request: vehicle_pb2.ReportEventsRequest,
        context: grpc.aio.ServicerContext[
            vehicle_pb2.ReportEventsRequest, vehicle_pb2.ReportEventsResponse
        ],
    ) -> vehicle_pb2.ReportEventsResponse:
        """Queues a vehicle's events durably, then acknowledges them."""
        await self._admit(context, request.vin)
        if len(request.events) > MAX_EVENTS_PER_REPORT:
            await context.abort(
                grpc.StatusCode.INVALID_ARGUMENT,
                f"send at most {MAX_EVENTS_PER_REPORT} events per report",
            )
        if any(not event.event_id for event in request.events):
            await context.abort(
                grpc.StatusCode.INVALID_ARGUMENT,
                "every event needs an event_id made by the vehicle",
            )
        self._metrics.forwarded_rpcs.labels(method="ReportEvents").inc()
        try:
            fresh = await self._outbox.enqueue(request.vin, request.events)
        except CacheError as exc:
            logger.error("cannot queue events of %s: %s", request.vin, exc)  # noqa: TRY400
            await context.abort(
                grpc.StatusCode.UNAVAILABLE, f"the relay cannot queue events: {exc}"
            )
        self._uplink.wake()
        return vehicle_pb2.ReportEventsResponse(
            accepted=fresh, duplicates=len(request.events) - fresh
        )

    def _timeout(self, context: grpc.aio.ServicerContext[Any, Any]) -> float:
        timeout = self._deadline
        remaining: float | None = context.time_remaining()
        if remaining is not None:
            timeout = min(timeout, max(remaining, 0.0))
        return timeout

    def _uplink_down(self, exc: grpc.aio.AioRpcError, timeout: float) -> str:
        details = exc.details() or ""
        if exc.code() is grpc.StatusCode.DEADLINE_EXCEEDED:
            return (
                f"the relay's uplink to {self._upstream} gave no answer in {timeout:g} s: {details}"
            )
        return f"the relay's uplink to {self._upstream} is down: {details}"
