"""CampaignService: the campaign lifecycle and live progress, for authenticated people."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import grpc
from staffel.v1 import campaign_pb2, campaign_pb2_grpc

from server.api.convert import campaign_message, plan_from, selector_from
from server.auth.interceptor import caller
from server.campaigns.engine import RELEASE_BATCH
from server.campaigns.lifecycle import CampaignActions
from server.campaigns.views import get_campaign, list_campaigns
from server.campaigns.watch import watch_campaign
from server.clock import Clock, system_clock
from server.store import Database

Context = grpc.aio.ServicerContext[Any, Any]


class CampaignServicer(campaign_pb2_grpc.CampaignServiceServicer):
    """The release managers' view of campaigns."""

    def __init__(
        self,
        *,
        database: Database,
        clock: Clock = system_clock,
        watch_interval_seconds: float = 0.5,
        release_batch: int = RELEASE_BATCH,
    ) -> None:
        self._database = database
        self._clock = clock
        self._actions = CampaignActions(database, clock=clock, release_batch=release_batch)
        self._watch_interval = watch_interval_seconds

    async def CreateCampaign(
        self, request: campaign_pb2.CreateCampaignRequest, context: Context
    ) -> campaign_pb2.Campaign:
        view = await asyncio.to_thread(
            self._actions.create,
            caller(),
            name=request.name,
            bundle_id=request.bundle_id,
            selector=selector_from(request.selector),
            plan=plan_from(request),
            draft=request.draft,
        )
        return campaign_message(view)

    async def StartCampaign(
        self, request: campaign_pb2.StartCampaignRequest, context: Context
    ) -> campaign_pb2.Campaign:
        view = await asyncio.to_thread(self._actions.start, caller(), request.campaign_id)
        return campaign_message(view)

    async def GetCampaign(
        self, request: campaign_pb2.GetCampaignRequest, context: Context
    ) -> campaign_pb2.Campaign:
        view = await asyncio.to_thread(
            get_campaign,
            self._database,
            request.campaign_id,
            assignment_limit=request.assignment_limit or 1000,
            clock=self._clock,
        )
        return campaign_message(view)

    async def ListCampaigns(
        self, request: campaign_pb2.ListCampaignsRequest, context: Context
    ) -> campaign_pb2.ListCampaignsResponse:
        views = await asyncio.to_thread(list_campaigns, self._database, clock=self._clock)
        return campaign_pb2.ListCampaignsResponse(campaigns=[campaign_message(v) for v in views])

    async def SubmitCampaign(
        self, request: campaign_pb2.CampaignAction, context: Context
    ) -> campaign_pb2.Campaign:
        view = await asyncio.to_thread(self._actions.submit, caller(), request.campaign_id)
        return campaign_message(view)

    async def ApproveCampaign(
        self, request: campaign_pb2.CampaignAction, context: Context
    ) -> campaign_pb2.Campaign:
        view = await asyncio.to_thread(
            self._actions.approve, caller(), request.campaign_id, request.reason
        )
        return campaign_message(view)

    async def PauseCampaign(
        self, request: campaign_pb2.CampaignAction, context: Context
    ) -> campaign_pb2.Campaign:
        view = await asyncio.to_thread(
            self._actions.pause, caller(), request.campaign_id, request.reason
        )
        return campaign_message(view)

    async def ResumeCampaign(
        self, request: campaign_pb2.CampaignAction, context: Context
    ) -> campaign_pb2.Campaign:
        view = await asyncio.to_thread(
            self._actions.resume, caller(), request.campaign_id, request.reason
        )
        return campaign_message(view)

    async def AbortCampaign(
        self, request: campaign_pb2.CampaignAction, context: Context
    ) -> campaign_pb2.Campaign:
        view = await asyncio.to_thread(
            self._actions.abort, caller(), request.campaign_id, request.reason
        )
        return campaign_message(view)

    async def RollbackCampaign(
        self, request: campaign_pb2.CampaignAction, context: Context
    ) -> campaign_pb2.Campaign:
        view = await asyncio.to_thread(
            self._actions.rollback, caller(), request.campaign_id, request.reason
        )
        return campaign_message(view)

    async def RetryCampaign(
        self, request: campaign_pb2.RetryCampaignRequest, context: Context
    ) -> campaign_pb2.Campaign:
        view, _ = await asyncio.to_thread(
            self._actions.retry, caller(), request.campaign_id, list(request.failure_types)
        )
        return campaign_message(view)

    async def WatchCampaign(
        self, request: campaign_pb2.WatchCampaignRequest, context: Context
    ) -> AsyncIterator[campaign_pb2.Campaign]:
        async for view in watch_campaign(
            self._database,
            request.campaign_id,
            interval_seconds=self._watch_interval,
            clock=self._clock,
        ):
            yield campaign_message(view)
