"""FleetService: provisioning and look-ups of vehicles."""

from __future__ import annotations

import asyncio
from typing import Any

import grpc
from staffel.v1 import fleet_pb2, fleet_pb2_grpc

from server.api.convert import vehicle_message
from server.fleet.registry import EcuSpec, get_vehicle, provision_vehicle
from server.repository.director import Director
from server.repository.image_repo import ImageRepository
from server.store import Database


class FleetServicer(fleet_pb2_grpc.FleetServiceServicer):
    """Registers vehicles and hands them the roots they pin."""

    def __init__(
        self, *, database: Database, image_repo: ImageRepository, director: Director
    ) -> None:
        self._database = database
        self._image_repo = image_repo
        self._director = director

    async def ProvisionVehicle(
        self,
        request: fleet_pb2.ProvisionVehicleRequest,
        context: grpc.aio.ServicerContext[Any, Any],
    ) -> fleet_pb2.ProvisionVehicleResponse:
        vehicle = await asyncio.to_thread(
            provision_vehicle,
            self._database,
            vin=request.vin,
            model=request.model,
            ecus=[
                EcuSpec(e.serial, e.hardware_id, e.primary, e.installed_sha256)
                for e in request.ecus
            ],
        )
        image_root = await asyncio.to_thread(self._image_repo.root)
        director_root = await asyncio.to_thread(self._director.root)
        return fleet_pb2.ProvisionVehicleResponse(
            vehicle=vehicle_message(vehicle), image_root=image_root, director_root=director_root
        )

    async def GetVehicle(
        self, request: fleet_pb2.GetVehicleRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> fleet_pb2.Vehicle:
        vehicle = await asyncio.to_thread(get_vehicle, self._database, request.vin)
        return vehicle_message(vehicle)
