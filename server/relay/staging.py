"""Pre-staging at the relay: fetch the site's staging plan, fill the cache, report readiness.

Every ``staging_interval`` seconds the relay asks its upstream for the plan of its site,
pins the plan's blobs (eviction keeps them), fetches those it lacks through the same single
flight as vehicle requests, and reports which blobs it holds. A relay whose upstream is a
regional relay gets the plan through it (``RelayForwarder``).
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

import grpc
from staffel.v1 import relay_pb2, relay_pb2_grpc

from server.relay import artifacts
from server.relay.access import SitePolicy, grpc_peer_identity
from server.relay.config import RelayConfig
from server.relay.errors import AccessDeniedError, RelayError
from server.relay.metrics import RelayMetrics
from server.relay.mirror import SiteMirror

logger = logging.getLogger(__name__)


class Stager:
    """The relay's staging loop (one per relay; cancel ``run`` to stop it)."""

    def __init__(
        self,
        *,
        config: RelayConfig,
        mirror: SiteMirror,
        channel: grpc.aio.Channel,
        metrics: RelayMetrics,
    ) -> None:
        """Stages through ``mirror`` and talks to the upstream over ``channel``."""
        self._config = config
        self._mirror = mirror
        self._stub = relay_pb2_grpc.RelayServiceStub(channel)
        self._metrics = metrics

    async def run(self) -> None:
        """Stages, then waits ``staging_interval`` seconds, forever."""
        while True:
            try:
                await self.stage_once()
            except grpc.aio.AioRpcError as exc:
                self._metrics.upstream_errors.inc()
                logger.warning("staging: the upstream did not answer: %s", exc.details())
            await asyncio.sleep(self._config.staging_interval)

    async def stage_once(self) -> bool:
        """One round: plan, pin, fetch, report. True when every blob of the plan is cached.

        Raises:
            grpc.aio.AioRpcError: The upstream did not answer the plan request or the report.
        """
        config = self._config
        plan: relay_pb2.StagingPlan = await self._stub.GetStagingPlan(
            relay_pb2.GetStagingPlanRequest(relay_id=config.relay_id, site=config.site),
            timeout=config.rpc_deadline,
        )
        self._mirror.cache.pin(blob.sha256 for blob in plan.blobs)
        results = await asyncio.gather(*(self._stage(blob) for blob in plan.blobs))
        cached = [blob.sha256 for blob, ok in zip(plan.blobs, results, strict=True) if ok]
        ready = len(cached) == len(plan.blobs)
        self._metrics.staging_blobs.labels(state="total").set(len(plan.blobs))
        self._metrics.staging_blobs.labels(state="cached").set(len(cached))
        self._metrics.staging_ready.set(1 if ready else 0)
        await self._stub.ReportReadiness(
            relay_pb2.ReadinessReport(
                relay_id=config.relay_id,
                site=config.site,
                plan_id=plan.plan_id,
                cached_sha256=cached,
                blobs_total=len(plan.blobs),
            ),
            timeout=config.rpc_deadline,
        )
        logger.info(
            "staging plan %s: %d of %d blobs cached", plan.plan_id, len(cached), len(plan.blobs)
        )
        return ready

    async def _stage(self, blob: relay_pb2.StagedBlob) -> bool:
        try:
            artifact = artifacts.blob(f"{blob.sha256}.{blob.target_name}")
            await self._mirror.immutable(artifact)
        except RelayError as exc:
            logger.warning("staging %s.%s failed: %s", blob.sha256, blob.target_name, exc)
            return False
        return True


class RelayForwarder(relay_pb2_grpc.RelayServiceServicer):
    """A regional relay's ``RelayService``: passes the calls of relays below it upstream."""

    def __init__(self, *, channel: grpc.aio.Channel, deadline: float, policy: SitePolicy) -> None:
        """Forwards over ``channel`` (owned by the caller); only relays may call."""
        self._stub = relay_pb2_grpc.RelayServiceStub(channel)
        self._deadline = deadline
        self._policy = policy

    async def _admit_relay(self, context: grpc.aio.ServicerContext[Any, Any]) -> None:
        peer = grpc_peer_identity(context.auth_context())
        if self._policy.enforced and (peer is None or peer.kind != "relay"):
            error = AccessDeniedError("not_a_relay", "only relays may call RelayService")
            await context.abort(grpc.StatusCode.PERMISSION_DENIED, str(error))

    async def GetStagingPlan(  # noqa: N802 (the name is fixed by the proto contract)
        self,
        request: relay_pb2.GetStagingPlanRequest,
        context: grpc.aio.ServicerContext[relay_pb2.GetStagingPlanRequest, relay_pb2.StagingPlan],
    ) -> relay_pb2.StagingPlan:
        """Passes a lower relay's plan request upstream."""
        await self._admit_relay(context)
        try:
            plan: relay_pb2.StagingPlan = await self._stub.GetStagingPlan(
                request, timeout=self._deadline
            )
        except grpc.aio.AioRpcError as exc:
            await context.abort(exc.code(), exc.details() or "")
        return plan

    async def ReportReadiness(  # noqa: N802 (the name is fixed by the proto contract)
        self,
        request: relay_pb2.ReadinessReport,
        context: grpc.aio.ServicerContext[relay_pb2.ReadinessReport, relay_pb2.ReadinessAck],
    ) -> relay_pb2.ReadinessAck:
        """Passes a lower relay's readiness report upstream."""
        await self._admit_relay(context)
        try:
            ack: relay_pb2.ReadinessAck = await self._stub.ReportReadiness(
                request, timeout=self._deadline
            )
        except grpc.aio.AioRpcError as exc:
            await context.abort(exc.code(), exc.details() or "")
        return ack
