"""ReleaseService: image uploads and bundles."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import grpc
from staffel.v1 import release_pb2, release_pb2_grpc

from server.api.convert import bundle_message, image_message
from server.auth.interceptor import caller
from server.errors import InvalidArgumentError
from server.metrics import ServerMetrics
from server.releases.catalog import (
    ImageHeader,
    check_image_is_new,
    create_bundle,
    list_bundles,
    list_images,
    register_image,
)
from server.repository.blobs import BlobStore
from server.repository.image_repo import ImageRepository
from server.store import Database

MAX_CHUNK_BYTES = 4 * 1024 * 1024


class ReleaseServicer(release_pb2_grpc.ReleaseServiceServicer):
    """Takes images from release managers and groups them into bundles."""

    def __init__(
        self,
        *,
        database: Database,
        image_repo: ImageRepository,
        blobs: BlobStore,
        metrics: ServerMetrics,
        max_image_bytes: int,
    ) -> None:
        self._database = database
        self._image_repo = image_repo
        self._blobs = blobs
        self._metrics = metrics
        self._max_image_bytes = max_image_bytes

    async def UploadImage(
        self,
        request_iterator: AsyncIterator[release_pb2.UploadImageChunk],
        context: grpc.aio.ServicerContext[Any, Any],
    ) -> release_pb2.Image:
        chunks = aiter(request_iterator)
        uploader = caller()
        first = await anext(chunks, None)
        if first is None or not first.HasField("header"):
            raise InvalidArgumentError("the first message of an upload must be the image header")
        header = ImageHeader(
            name=first.header.name,
            version=first.header.version,
            hardware_id=first.header.hardware_id,
            release_counter=first.header.release_counter,
            ecu_type=first.header.ecu_type,
        )
        await asyncio.to_thread(check_image_is_new, self._database, header)
        writer = self._blobs.writer(self._max_image_bytes)
        try:
            async for chunk in chunks:
                if chunk.HasField("header"):
                    raise InvalidArgumentError("an upload carries exactly one header, first")
                if len(chunk.data) > MAX_CHUNK_BYTES:
                    raise InvalidArgumentError(f"chunks are at most {MAX_CHUNK_BYTES} bytes")
                writer.write(chunk.data)
                self._metrics.image_bytes_received.inc(len(chunk.data))
            blob = await asyncio.to_thread(writer.commit)
        except BaseException:
            writer.abort()
            raise
        image = await asyncio.to_thread(
            register_image, self._database, self._image_repo, header, blob, uploader=uploader
        )
        self._metrics.images_published.inc()
        return image_message(image)

    async def CreateBundle(
        self, request: release_pb2.CreateBundleRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> release_pb2.Bundle:
        bundle = await asyncio.to_thread(
            create_bundle,
            self._database,
            name=request.name,
            vehicle_model=request.vehicle_model,
            target_names=list(request.image_target_names),
            version=request.version,
        )
        return bundle_message(bundle)

    async def ListBundles(
        self, request: release_pb2.ListBundlesRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> release_pb2.ListBundlesResponse:
        bundles = await asyncio.to_thread(list_bundles, self._database)
        return release_pb2.ListBundlesResponse(bundles=[bundle_message(b) for b in bundles])

    async def ListImages(
        self, request: release_pb2.ListImagesRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> release_pb2.ListImagesResponse:
        images = await asyncio.to_thread(list_images, self._database)
        return release_pb2.ListImagesResponse(images=[image_message(i) for i in images])
