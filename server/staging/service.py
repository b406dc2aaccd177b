"""The server's ``RelayService``: staging plans for relays and their readiness reports.

A site's plan holds the blobs of the bundles of every running or paused campaign that still
has unfinished assignments for vehicles of the site (queued ones included: their wave has not
opened yet, which is the point of staging).
"""

from __future__ import annotations

import hashlib
import logging
from datetime import UTC, datetime
from typing import Any

import grpc
from sqlmodel import col, select
from staffel.v1 import relay_pb2, relay_pb2_grpc

from server.campaigns.models import Assignment, AssignmentState, Campaign, CampaignState
from server.fleet.models import Vehicle
from server.releases.models import BundleImage, Image
from server.staging.models import RelayReadiness, ensure_tables
from server.store import Database

logger = logging.getLogger(__name__)

_UNFINISHED = [s.value for s in AssignmentState if not s.is_final]
_PLANNED_CAMPAIGNS = [CampaignState.RUNNING, CampaignState.PAUSED, CampaignState.APPROVED]


def plan_for_site(database: Database, site: str) -> relay_pb2.StagingPlan:
    """The staging plan of ``site`` (its ``plan_id`` is a digest of its blobs)."""
    query = (
        select(Image.sha256, Image.target_name, Image.length)
        .distinct()
        .join(BundleImage, col(BundleImage.target_name) == col(Image.target_name))
        .join(Campaign, col(Campaign.bundle_id) == col(BundleImage.bundle_id))
        .join(Assignment, col(Assignment.campaign_id) == col(Campaign.id))
        .join(Vehicle, col(Vehicle.vin) == col(Assignment.vin))
        .where(Vehicle.site == site)
        .where(col(Campaign.state).in_(_PLANNED_CAMPAIGNS))
        .where(col(Assignment.state).in_(_UNFINISHED))
        .order_by(col(Image.sha256), col(Image.target_name))
    )
    with database.session() as session:
        rows = session.exec(query).all()
    blobs = [
        relay_pb2.StagedBlob(sha256=sha, target_name=target_name, length=length)
        for sha, target_name, length in rows
    ]
    digest = hashlib.sha256(" ".join(f"{b.sha256}.{b.target_name}" for b in blobs).encode())
    return relay_pb2.StagingPlan(plan_id=digest.hexdigest()[:32], blobs=blobs)


class RelayServicer(relay_pb2_grpc.RelayServiceServicer):
    """Answers relays: their site's plan, and their readiness reports."""

    def __init__(self, *, database: Database) -> None:
        """Serves from ``database``; creates the staging tables if needed."""
        self._database = database
        ensure_tables(database.engine)

    async def GetStagingPlan(  # noqa: N802 (the name is fixed by the proto contract)
        self,
        request: relay_pb2.GetStagingPlanRequest,
        context: grpc.aio.ServicerContext[Any, Any],
    ) -> relay_pb2.StagingPlan:
        """The blobs the relay's site will need."""
        if not request.site or not request.relay_id:
            await context.abort(
                grpc.StatusCode.INVALID_ARGUMENT, "name the relay (relay_id) and its site"
            )
        return plan_for_site(self._database, request.site)

    async def ReportReadiness(  # noqa: N802 (the name is fixed by the proto contract)
        self,
        request: relay_pb2.ReadinessReport,
        context: grpc.aio.ServicerContext[Any, Any],
    ) -> relay_pb2.ReadinessAck:
        """Records which blobs of its plan the relay holds."""
        if not request.site or not request.relay_id:
            await context.abort(
                grpc.StatusCode.INVALID_ARGUMENT, "name the relay (relay_id) and its site"
            )
        with self._database.session() as session:
            record = session.get(RelayReadiness, request.relay_id) or RelayReadiness(
                relay_id=request.relay_id, site=request.site, reported_at=datetime.now(UTC)
            )
            record.site = request.site
            record.plan_id = request.plan_id
            record.cached_sha256 = " ".join(sorted(set(request.cached_sha256)))
            record.blobs_total = request.blobs_total
            record.reported_at = datetime.now(UTC)
            session.add(record)
        logger.info(
            "relay %s of site %s holds %d of %d staged blobs",
            request.relay_id,
            request.site,
            len(request.cached_sha256),
            request.blobs_total,
        )
        return relay_pb2.ReadinessAck()
