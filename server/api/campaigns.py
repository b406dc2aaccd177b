"""CampaignService: create, start and follow campaigns."""

from __future__ import annotations

import asyncio
from typing import Any

import grpc
from staffel.v1 import campaign_pb2, campaign_pb2_grpc

from server.api.convert import campaign_message
from server.campaigns.engine import FleetSelector, create_campaign, get_campaign, start_campaign
from server.store import Database


class CampaignServicer(campaign_pb2_grpc.CampaignServiceServicer):
    """The release managers' view of campaigns."""

    def __init__(self, *, database: Database) -> None:
        self._database = database

    async def CreateCampaign(
        self,
        request: campaign_pb2.CreateCampaignRequest,
        context: grpc.aio.ServicerContext[Any, Any],
    ) -> campaign_pb2.Campaign:
        view = await asyncio.to_thread(
            create_campaign,
            self._database,
            name=request.name,
            bundle_id=request.bundle_id,
            selector=FleetSelector(
                vehicle_model=request.selector.vehicle_model, vins=tuple(request.selector.vins)
            ),
        )
        return campaign_message(view)

    async def StartCampaign(
        self,
        request: campaign_pb2.StartCampaignRequest,
        context: grpc.aio.ServicerContext[Any, Any],
    ) -> campaign_pb2.Campaign:
        view = await asyncio.to_thread(start_campaign, self._database, request.campaign_id)
        return campaign_message(view)

    async def GetCampaign(
        self, request: campaign_pb2.GetCampaignRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> campaign_pb2.Campaign:
        view = await asyncio.to_thread(get_campaign, self._database, request.campaign_id)
        return campaign_message(view)
