"""Real parts around the relay: an upstream HTTP server and an upstream gRPC VehicleService.

Both listen on 127.0.0.1 port 0. The HTTP upstream counts requests and bytes per path,
answers Range requests, can hold its answers behind a gate, stream slowly, cut a transfer
after some bytes and fail chosen paths; the gRPC upstream records what it received
and rejects chosen requests with real status codes.
"""

from __future__ import annotations

import asyncio
import hashlib
from collections import Counter
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import grpc
import pytest
from aiohttp import web
from staffel.v1 import vehicle_pb2, vehicle_pb2_grpc

from server.relay.app import Relay
from server.relay.config import ListenAddress, RelayConfig

REJECTED_VIN = "WVWZZZREJECTED0001"
UNKNOWN_ASSIGNMENT = "assignment-unknown"


def blob_filename(data: bytes, name: str) -> str:
    """The content-addressed file name of a blob, as ngclient asks for it."""
    return f"{hashlib.sha256(data).hexdigest()}.{name}"


class UpstreamHTTP:
    """A tiny stand-in for the central server's HTTP side.

    Attributes:
        files: Body by URL path; other paths answer 404.
        requests: How often each path was asked for.
        failures: HTTP status to answer for a path instead of its file.
        gate: When set, every answer waits until the gate opens.
        ranges: The Range header of each request, by path ("" for none).
        bytes_sent: Body bytes sent, by path.
        chunk_delay: Seconds to pause after each 64 KiB of a body (a slow uplink).
        cut_after: Close the connection after sending this many body bytes of a path (once).
    """

    def __init__(self, port: int = 0) -> None:
        self.files: dict[str, bytes] = {}
        self.requests: Counter[str] = Counter()
        self.ranges: dict[str, list[str]] = {}
        self.bytes_sent: Counter[str] = Counter()
        self.failures: dict[str, int] = {}
        self.gate: asyncio.Event | None = None
        self.chunk_delay = 0.0
        self.cut_after: dict[str, int] = {}
        self.port = port
        self.url = ""
        self._runner: web.AppRunner | None = None

    def add_blob(self, data: bytes, name: str) -> str:
        """Serves ``data`` as an image blob; returns its file name."""
        filename = blob_filename(data, name)
        self.files[f"/image/targets/{filename}"] = data
        return filename

    async def _answer(self, request: web.Request) -> web.StreamResponse:
        self.requests[request.path] += 1
        self.ranges.setdefault(request.path, []).append(request.headers.get("Range", ""))
        if self.gate is not None:
            await self.gate.wait()
        if request.path in self.failures:
            return web.Response(status=self.failures[request.path], text="upstream broke\n")
        body = self.files.get(request.path)
        if body is None:
            return web.Response(status=404, text="no such file\n")
        first = 0
        if request.headers.get("Range", "").startswith("bytes="):
            first = int(request.headers["Range"].removeprefix("bytes=").split("-")[0])
            if first >= len(body):
                return web.Response(status=416, headers={"Content-Range": f"bytes */{len(body)}"})
        response = web.StreamResponse(status=206 if first else 200)
        response.content_length = len(body) - first
        if first:
            response.headers["Content-Range"] = f"bytes {first}-{len(body) - 1}/{len(body)}"
        await response.prepare(request)
        cut = self.cut_after.pop(request.path, None)
        position = first
        while position < len(body):
            chunk = body[position : position + 64 * 1024]
            if cut is not None and position - first + len(chunk) > cut:
                assert request.transport is not None
                request.transport.abort()  # a broken uplink, mid-transfer
                return response
            await response.write(chunk)
            self.bytes_sent[request.path] += len(chunk)
            position += len(chunk)
            if self.chunk_delay:
                await asyncio.sleep(self.chunk_delay)
        await response.write_eof()
        return response

    async def start(self) -> None:
        """Listens on a free loopback port."""
        app = web.Application()
        app.router.add_get("/{tail:.*}", self._answer)
        self._runner = web.AppRunner(app, shutdown_timeout=0.5, access_log=None)
        await self._runner.setup()
        await web.TCPSite(self._runner, "127.0.0.1", self.port).start()
        self.port = self._runner.addresses[0][1]
        self.url = f"http://127.0.0.1:{self.port}"

    async def stop(self) -> None:
        """Stops listening; the relay then finds its upstream unreachable."""
        if self._runner is not None:
            if self.gate is not None:
                self.gate.set()
            await self._runner.cleanup()
            self._runner = None


class RecordingVehicleService(vehicle_pb2_grpc.VehicleServiceServicer):
    """The upstream VehicleService: records requests, rejects a few on purpose."""

    def __init__(self) -> None:
        self.check_ins: list[vehicle_pb2.CheckInRequest] = []
        self.reports: list[vehicle_pb2.ReportEventsRequest] = []

    async def CheckIn(  # noqa: N802 (the method name comes from the proto)
        self,
        request: vehicle_pb2.CheckInRequest,
        context: grpc.aio.ServicerContext[vehicle_pb2.CheckInRequest, vehicle_pb2.CheckInResponse],
    ) -> vehicle_pb2.CheckInResponse:
        self.check_ins.append(request)
        if request.vin == REJECTED_VIN:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, f"vin {request.vin} unknown")
        return vehicle_pb2.CheckInResponse(
            nothing_to_do=vehicle_pb2.NothingToDo(), next_poll_seconds=300
        )

    async def ReportEvents(  # noqa: N802 (the method name comes from the proto)
        self,
        request: vehicle_pb2.ReportEventsRequest,
        context: grpc.aio.ServicerContext[
            vehicle_pb2.ReportEventsRequest, vehicle_pb2.ReportEventsResponse
        ],
    ) -> vehicle_pb2.ReportEventsResponse:
        self.reports.append(request)
        if any(event.assignment_id == UNKNOWN_ASSIGNMENT for event in request.events):
            await context.abort(grpc.StatusCode.NOT_FOUND, "assignment-unknown does not exist")
        return vehicle_pb2.ReportEventsResponse(accepted=len(request.events))


class UpstreamGRPC:
    """A grpc.aio server on a free loopback port running ``RecordingVehicleService``."""

    def __init__(self, service: RecordingVehicleService | None = None, port: int = 0) -> None:
        self.service = service or RecordingVehicleService()
        self.server = grpc.aio.server()
        vehicle_pb2_grpc.add_VehicleServiceServicer_to_server(self.service, self.server)
        self.port = self.server.add_insecure_port(f"127.0.0.1:{port}")
        self.address = f"127.0.0.1:{self.port}"

    async def stop(self) -> None:
        """Stops serving at once."""
        await self.server.stop(None)

    async def restart(self) -> None:
        """Serves again on the same port with the same recording service."""
        await self.stop()
        again = UpstreamGRPC(self.service, self.port)
        await again.server.start()
        self.server = again.server


@pytest.fixture
async def upstream_http() -> AsyncIterator[UpstreamHTTP]:
    """A started upstream HTTP server, empty until a test adds files."""
    upstream = UpstreamHTTP()
    await upstream.start()
    yield upstream
    await upstream.stop()


@pytest.fixture
async def upstream_grpc() -> AsyncIterator[UpstreamGRPC]:
    """A started upstream gRPC VehicleService."""
    upstream = UpstreamGRPC()
    await upstream.server.start()
    yield upstream
    await upstream.stop()


@pytest.fixture
def relay_config(
    upstream_http: UpstreamHTTP, upstream_grpc: UpstreamGRPC, tmp_path: Path
) -> RelayConfig:
    """A relay configuration on free ports with short timeouts, pointing at the upstreams."""
    return RelayConfig(
        upstream_url=upstream_http.url,
        upstream_grpc=upstream_grpc.address,
        cache_dir=tmp_path / "cache",
        grpc_listen=ListenAddress(host="127.0.0.1", port=0),
        http_listen=ListenAddress(host="127.0.0.1", port=0),
        connect_timeout=2.0,
        read_timeout=5.0,
        timestamp_timeout=1.0,
        rpc_deadline=3.0,
        shutdown_grace=0.5,
    )


@pytest.fixture
async def relay(relay_config: RelayConfig) -> AsyncIterator[Relay]:
    """A relay started in this test's event loop; stopped afterwards."""
    async with Relay.from_config(relay_config) as started:
        yield started


@pytest.fixture
def metric(relay: Relay) -> Callable[..., float]:
    """Reads one sample of the relay's metrics: ``metric(NAME, **LABELS)``."""

    def read(name: str, **labels: str) -> float:
        value = relay.metrics.registry.get_sample_value(name, labels)
        assert value is not None, f"no sample {name} {labels}"
        return value

    return read
