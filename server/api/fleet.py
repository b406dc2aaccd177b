"""FleetService: provisioning and look-ups of vehicles."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import grpc
from staffel.v1 import fleet_pb2, fleet_pb2_grpc

from server.api.convert import selector_from, vehicle_message
from server.errors import InvalidArgumentError
from server.fleet.csv_import import MAX_IMPORT_BYTES, import_vehicles
from server.fleet.registry import EcuSpec, get_vehicle, list_vehicles, provision_vehicle
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
            region=request.region,
            site=request.site,
            tags=list(request.tags),
            ecus=[
                EcuSpec(e.serial, e.hardware_id, e.primary, e.installed_sha256, e.public_key)
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

    async def ImportVehicles(
        self,
        request_iterator: AsyncIterator[fleet_pb2.ImportVehiclesChunk],
        context: grpc.aio.ServicerContext[Any, Any],
    ) -> fleet_pb2.ImportVehiclesResponse:
        data = bytearray()
        async for chunk in request_iterator:
            data += chunk.csv
            if len(data) > MAX_IMPORT_BYTES:
                raise InvalidArgumentError(
                    f"an import is at most {MAX_IMPORT_BYTES} bytes; split the file"
                )
        imported = await asyncio.to_thread(import_vehicles, self._database, bytes(data))
        return fleet_pb2.ImportVehiclesResponse(imported=imported)

    async def ListVehicles(
        self, request: fleet_pb2.ListVehiclesRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> fleet_pb2.ListVehiclesResponse:
        vehicles, total = await asyncio.to_thread(
            list_vehicles,
            self._database,
            selector_from(request.selector),
            limit=request.limit or 100,
        )
        return fleet_pb2.ListVehiclesResponse(
            vehicles=[vehicle_message(v) for v in vehicles], total=total
        )
