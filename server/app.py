"""The central server process: gRPC control plane and HTTP repository in one event loop."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import signal
import sys
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path

import grpc
from aiohttp import web
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_health.v1._async import HealthServicer
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from staffel.v1 import campaign_pb2_grpc, fleet_pb2_grpc, release_pb2_grpc, vehicle_pb2_grpc

from keys.keyset import KeySet
from server.api.campaigns import CampaignServicer
from server.api.fleet import FleetServicer
from server.api.releases import ReleaseServicer
from server.api.status import ErrorAndMetricsInterceptor
from server.api.vehicles import VehicleServicer
from server.errors import StaffelError
from server.logs import configure_logging
from server.metrics import ServerMetrics
from server.readyfile import split_host_port, write_ready_file
from server.repository.blobs import BlobStore
from server.repository.director import Director
from server.repository.http import add_routes
from server.repository.image_repo import ImageRepository
from server.store import Database

log = logging.getLogger("staffel.server")

SERVICES = (
    "staffel.v1.VehicleService",
    "staffel.v1.ReleaseService",
    "staffel.v1.FleetService",
    "staffel.v1.CampaignService",
)


@dataclass(frozen=True)
class ServerConfig:
    """Everything the server process needs to start."""

    data_dir: Path
    keys_dir: Path
    database_url: str | None = None
    grpc_listen: str = "127.0.0.1:50051"
    http_listen: str = "127.0.0.1:8080"
    poll_seconds: int = 300  # seconds between check-ins a vehicle is told
    max_image_bytes: int = 8 * 1024**3  # bytes
    refresh_interval: timedelta = timedelta(minutes=10)
    refresh_margin: timedelta = timedelta(hours=6)
    shutdown_grace_seconds: float = 5.0


class StaffelServer:
    """The running server: owns its store, repositories, gRPC server and HTTP site."""

    def __init__(self, config: ServerConfig) -> None:
        self.config = config
        self.metrics = ServerMetrics()
        if config.database_url:
            self.database = Database.from_url(config.database_url)
        else:
            self.database = Database.in_data_dir(config.data_dir)
        keys = KeySet.load(config.keys_dir)
        self.blobs = BlobStore(config.data_dir / "blobs")
        self.image_repo = ImageRepository(self.database, keys)
        self.director = Director(self.database, keys)
        self.image_repo.initialize()
        self.director.initialize()
        self.health = HealthServicer()
        self._grpc: grpc.aio.Server | None = None
        self._http: web.AppRunner | None = None
        self._refresher: asyncio.Task[None] | None = None
        self.grpc_address = ""
        self.http_url = ""

    def _grpc_server(self) -> grpc.aio.Server:
        server = grpc.aio.server(
            interceptors=[ErrorAndMetricsInterceptor(self.metrics)],
            options=[
                ("grpc.max_receive_message_length", 8 * 1024 * 1024),
                ("grpc.so_reuseport", 0),
            ],
        )
        vehicle_pb2_grpc.add_VehicleServiceServicer_to_server(
            VehicleServicer(
                database=self.database,
                director=self.director,
                metrics=self.metrics,
                poll_seconds=self.config.poll_seconds,
            ),
            server,
        )
        release_pb2_grpc.add_ReleaseServiceServicer_to_server(
            ReleaseServicer(
                database=self.database,
                image_repo=self.image_repo,
                blobs=self.blobs,
                metrics=self.metrics,
                max_image_bytes=self.config.max_image_bytes,
            ),
            server,
        )
        fleet_pb2_grpc.add_FleetServiceServicer_to_server(
            FleetServicer(
                database=self.database, image_repo=self.image_repo, director=self.director
            ),
            server,
        )
        campaign_pb2_grpc.add_CampaignServiceServicer_to_server(
            CampaignServicer(database=self.database), server
        )
        health_pb2_grpc.add_HealthServicer_to_server(self.health, server)
        return server

    def _http_app(self) -> web.Application:
        app = web.Application()
        add_routes(app, image_repo=self.image_repo, director=self.director, blobs=self.blobs)

        async def metrics(_request: web.Request) -> web.Response:
            body = generate_latest(self.metrics.registry)
            return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE_LATEST})

        async def healthz(_request: web.Request) -> web.Response:
            return web.Response(text="ok\n")

        app.router.add_get("/metrics", metrics)
        app.router.add_get("/healthz", healthz)
        return app

    async def start(self) -> None:
        """Binds both listeners and marks every service SERVING."""
        grpc_host, grpc_port = split_host_port(self.config.grpc_listen)
        http_host, http_port = split_host_port(self.config.http_listen)
        self._grpc = self._grpc_server()
        bound = self._grpc.add_insecure_port(f"{grpc_host}:{grpc_port}")
        if bound == 0:
            raise StaffelError(f"cannot listen for gRPC on {self.config.grpc_listen}")
        await self._grpc.start()
        self.grpc_address = f"{grpc_host}:{bound}"
        self._http = web.AppRunner(self._http_app(), access_log=None)
        await self._http.setup()
        site = web.TCPSite(self._http, http_host, http_port)
        await site.start()
        actual_port = self._http.addresses[0][1]
        self.http_url = f"http://{http_host}:{actual_port}"
        for service in (*SERVICES, ""):
            await self.health.set(service, health_pb2.HealthCheckResponse.SERVING)
        self._refresher = asyncio.create_task(self._refresh_metadata())
        log.info("serving gRPC on %s and HTTP on %s", self.grpc_address, self.http_url)

    async def _refresh_metadata(self) -> None:
        """Re-signs snapshot and timestamp before they expire, with no operator action."""
        while True:
            try:
                renewed = await asyncio.to_thread(
                    self.image_repo.refresh_expiring, self.config.refresh_margin
                )
                if renewed:
                    log.info("re-signed Image repository snapshot and timestamp")
            except StaffelError:
                log.exception("re-signing the Image repository failed; retrying later")
            await asyncio.sleep(self.config.refresh_interval.total_seconds())

    async def stop(self) -> None:
        """Graceful stop: health NOT_SERVING first, then drain calls, then close the store."""
        await self.health.enter_graceful_shutdown()
        if self._refresher is not None:
            self._refresher.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._refresher
        if self._grpc is not None:
            await self._grpc.stop(self.config.shutdown_grace_seconds)
        if self._http is not None:
            await self._http.cleanup()
        self.database.dispose()


async def serve(config: ServerConfig, ready_file: Path | None) -> None:
    """Runs the server until SIGTERM or SIGINT."""
    server = StaffelServer(config)
    await server.start()
    if ready_file is not None:
        write_ready_file(ready_file, grpc_address=server.grpc_address, http_url=server.http_url)
    stopping = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stopping.set)
    await stopping.wait()
    log.info("stopping")
    await server.stop()


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="staffel-server", description="Staffel central server (gRPC + HTTP)."
    )
    parser.add_argument("--data-dir", type=Path, required=True, help="blobs and the SQLite store")
    parser.add_argument("--database-url", help="SQLAlchemy URL (default: SQLite in --data-dir)")
    parser.add_argument("--keys-dir", type=Path, help="key set (default: DATA_DIR/keys)")
    parser.add_argument("--grpc-listen", default="127.0.0.1:50051", help="HOST:PORT for gRPC")
    parser.add_argument("--http-listen", default="127.0.0.1:8080", help="HOST:PORT for HTTP")
    parser.add_argument("--poll-seconds", type=int, default=300, help="vehicles' poll interval")
    parser.add_argument("--ready-file", type=Path, help="write bound addresses here once serving")
    parser.add_argument("--log-format", choices=("text", "json"), default="text")
    return parser


def main(argv: list[str] | None = None) -> int:
    """Entry point of ``staffel-server``."""
    args = _parser().parse_args(argv)
    configure_logging(args.log_format)
    if not 1 <= args.poll_seconds <= 86_400:
        print("staffel-server: --poll-seconds must be 1 to 86400", file=sys.stderr)
        return 2
    config = ServerConfig(
        data_dir=args.data_dir,
        keys_dir=args.keys_dir or args.data_dir / "keys",
        database_url=args.database_url,
        grpc_listen=args.grpc_listen,
        http_listen=args.http_listen,
        poll_seconds=args.poll_seconds,
    )
    try:
        asyncio.run(serve(config, args.ready_file))
    except (StaffelError, ValueError) as error:
        print(f"staffel-server: {error}", file=sys.stderr)
        return 1
    return 0
