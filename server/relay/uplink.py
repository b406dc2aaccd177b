"""Forwards the events queued at the relay to the upstream, oldest first, until none is left.

Events of one vehicle go in one ``ReportEvents`` call, in the order the relay received them,
and leave the queue only when the upstream acknowledged them. While the uplink is down the
uplink retries every ``flush_interval`` seconds; a batch the upstream refuses for good (an
unknown assignment, say) is retried event by event, and only the refused events are set aside
(logged and counted), so that one bad event never blocks a vehicle's queue.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging

import grpc
from staffel.v1 import vehicle_pb2, vehicle_pb2_grpc

from server.relay.errors import RelayError
from server.relay.metrics import RelayMetrics
from server.relay.outbox import Outbox, QueuedEvent

logger = logging.getLogger(__name__)

# Codes that mean the call never got a usable answer from the upstream.
UPLINK_FAILURES = frozenset({grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED})
_BATCH = 500  # events read from the queue at a time


class UplinkDownError(RelayError):
    """The upstream did not answer; the events stay queued and are sent later."""


class EventUplink:
    """The task that drains the outbox; start it with ``run`` and cancel it to stop."""

    def __init__(
        self,
        *,
        outbox: Outbox,
        channel: grpc.aio.Channel,
        deadline: float,
        interval: float,
        metrics: RelayMetrics,
    ) -> None:
        """Drains ``outbox`` over ``channel`` (both owned by the caller)."""
        self._outbox = outbox
        self._stub = vehicle_pb2_grpc.VehicleServiceStub(channel)
        self._deadline = deadline
        self._interval = interval
        self._metrics = metrics
        self._wakeup = asyncio.Event()
        self._flushing = asyncio.Lock()  # one flush at a time: no event is sent twice

    def wake(self) -> None:
        """Asks for a flush now (events were queued)."""
        self._wakeup.set()

    async def run(self) -> None:
        """Flushes whenever woken, and every ``interval`` seconds while events wait."""
        while True:
            self._wakeup.clear()
            with contextlib.suppress(UplinkDownError):
                await self.flush()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wakeup.wait(), self._interval)

    async def flush(self) -> None:
        """Forwards queued events until the queue is empty.

        Raises:
            UplinkDownError: The upstream did not answer; the rest stays queued.
        """
        async with self._flushing:
            await self._flush()

    async def _flush(self) -> None:
        try:
            while batch := await self._outbox.oldest(_BATCH):
                by_vehicle: dict[str, list[QueuedEvent]] = {}
                for queued in batch:
                    by_vehicle.setdefault(queued.vin, []).append(queued)
                for vin, events in by_vehicle.items():
                    await self._forward(vin, events)
        finally:
            self._metrics.queue_depth.set(await self._outbox.depth())

    async def _forward(self, vin: str, events: list[QueuedEvent]) -> None:
        try:
            await self._send(vin, events)
        except grpc.aio.AioRpcError as exc:
            if len(events) == 1:
                await self._outbox.set_aside(events[0], f"{exc.code().name}: {exc.details()}")
                self._metrics.events_rejected.inc()
                logger.error(  # noqa: TRY400 (the refusal is expected; no traceback needed)
                    "upstream refused event %s of %s for good (%s: %s); set aside",
                    events[0].event.event_id,
                    vin,
                    exc.code().name,
                    exc.details(),
                )
                return
            for event in events:  # find the refused ones, keep the order of the rest
                await self._forward(vin, [event])
            return
        await self._outbox.acknowledge([e.seq for e in events])
        self._metrics.events_forwarded.inc(len(events))

    async def _send(self, vin: str, events: list[QueuedEvent]) -> None:
        request = vehicle_pb2.ReportEventsRequest(vin=vin, events=[e.event for e in events])
        try:
            await self._stub.ReportEvents(request, timeout=self._deadline)
        except grpc.aio.AioRpcError as exc:
            if exc.code() in UPLINK_FAILURES:
                self._metrics.upstream_errors.inc()
                raise UplinkDownError(
                    f"the uplink is down ({exc.code().name}); events stay queued"
                ) from exc
            raise
