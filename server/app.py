"""The central server process: gRPC control plane and HTTP repository in one event loop."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import signal
import sys
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path

import grpc
from aiohttp import web
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_health.v1._async import HealthServicer
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from staffel.v1 import (
    auth_pb2_grpc,
    campaign_pb2_grpc,
    fleet_pb2_grpc,
    relay_pb2_grpc,
    release_pb2_grpc,
    vehicle_pb2_grpc,
)

from keys.keyset import KeySet
from server.api.auth import AuthServicer
from server.api.campaigns import CampaignServicer
from server.api.fleet import FleetServicer
from server.api.releases import ReleaseServicer
from server.api.status import ErrorAndMetricsInterceptor
from server.api.vehicles import VehicleServicer
from server.auth.interceptor import AuthInterceptor
from server.auth.roles import Principal, Role
from server.auth.tokens import create_token
from server.campaigns.engine import RELEASE_BATCH, CampaignEngine
from server.campaigns.offers import QuietVehicles
from server.campaigns.presence import FLUSH_INTERVAL_SECONDS, LastSeenBuffer
from server.campaigns.presign import Presigner, PresignLoop
from server.clock import Clock, system_clock
from server.errors import StaffelError
from server.logs import configure_logging
from server.metrics import ServerMetrics
from server.observability.enginelock import EngineLock
from server.observability.fleetstate import FleetStateCollector
from server.observability.signing import observe_signing
from server.observability.tracing import Tracing, otlp_endpoint
from server.readyfile import split_host_port, write_ready_file
from server.repository.blobs import BlobStore
from server.repository.director import Director
from server.repository.http import add_routes
from server.repository.image_repo import ImageRepository
from server.staging.gate import DEFAULT_WAIT
from server.staging.service import RelayServicer
from server.store import Database
from server.store.migrate import database_url, migrate, migrate_command

log = logging.getLogger("staffel.server")

SERVICES = (
    "staffel.v1.VehicleService",
    "staffel.v1.ReleaseService",
    "staffel.v1.FleetService",
    "staffel.v1.CampaignService",
    "staffel.v1.AuthService",
    "staffel.v1.RelayService",
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
    # Seconds between health NOT_SERVING and closing the listeners, so that load balancers
    # and readiness probes stop sending new calls before the server refuses them.
    shutdown_delay_seconds: float = 0.0
    otlp_endpoint: str | None = None  # OTLP/gRPC collector for traces; None: no tracing
    # Seconds between campaign engine steps; 0 runs no background step (tests step directly).
    engine_interval_seconds: float = 1.0
    # How long a site's relay that has not staged a wave's bundle may hold the wave there.
    staging_wait: timedelta = DEFAULT_WAIT
    # At most this many assignments released by one engine step (a larger wave takes more).
    release_batch: int = RELEASE_BATCH
    # SO_REUSEPORT on both listeners, so one server process per core can share the ports.
    # Off by default: a port that is busy is then an error, not a silent second server.
    reuse_port: bool = False
    presence_flush_seconds: float = FLUSH_INTERVAL_SECONDS  # seconds between last-seen writes
    offer_epoch_seconds: float = 1.0  # seconds between reads of the offer epoch
    # Seconds between rounds of pre-signing released assignments' Director metadata (the
    # engine's leader only, and also right after a step that released some); 0: none.
    presign_interval_seconds: float = 2.0
    # Upgrade the database's schema at start-up; off: a database behind refuses to start.
    auto_migrate: bool = False
    # Threads for the database work of vehicles' calls (check-ins that are not answered
    # from memory, event reports); None: 1 on SQLite, 8 on PostgreSQL (see vehicle_threads).
    vehicle_threads: int | None = None
    # Run that work on the event loop (server/api/database_work.py): on SQLite moving to
    # the threads only when another connection holds the write lock, on PostgreSQL with
    # each statement awaiting the server's answer; off: always threads.
    vehicle_work_on_loop: bool = True


def vehicle_threads(config: ServerConfig, database: Database) -> int:
    """How many threads do vehicles' database work.

    SQLite answers from the local file in microseconds and serializes writers anyway, so
    more threads only contend for the interpreter lock (measured: one thread answers
    repeat offers ~25 % faster than six; by default SQLite's work runs on the event loop
    and the thread takes only what would wait for a lock); PostgreSQL waits on the
    network, where threads overlap the round trips (unless its work awaits on the event
    loop, which overlaps them itself and leaves the thread idle).
    """
    if config.vehicle_threads is not None:
        return config.vehicle_threads
    if database.engine.dialect.name == "sqlite":
        return 1
    return 1 if config.vehicle_work_on_loop and database.awaits_on_loop else 8


class StaffelServer:
    """The running server: owns its store, repositories, gRPC server and HTTP site."""

    def __init__(self, config: ServerConfig, *, clock: Clock = system_clock) -> None:
        self.config = config
        self.clock = clock
        self.metrics = ServerMetrics()
        self.tracing = Tracing()
        if config.auto_migrate:
            log.info("%s", migrate(database_url(config.data_dir, config.database_url)).describe())
        if config.database_url:
            self.database = Database.from_url(config.database_url)
        else:
            self.database = Database.in_data_dir(config.data_dir)
        if config.vehicle_work_on_loop and self.database.answers_without_io_wait:
            # Vehicles' commits run on the event loop: none of them may copy the SQLite
            # log into the file (with an fsync); the epoch reader's thread does that.
            self.database.checkpoint_in_background()
        keys = KeySet.load(config.keys_dir)
        self.blobs = BlobStore(config.data_dir / "blobs")
        self.image_repo = ImageRepository(self.database, keys)
        self.director = Director(self.database, keys, clock=clock)
        self.engine = CampaignEngine(
            self.database,
            clock=clock,
            staging_wait=config.staging_wait,
            release_batch=config.release_batch,
        )
        self.engine_lock = EngineLock(self.database.engine)
        self.image_repo.initialize()
        self.director.initialize()
        self.metrics.registry.register(FleetStateCollector(self.database))
        self._stop_observing_signing = observe_signing(
            lambda repo, role, seconds: self.metrics.signing_latency.labels(repo, role).observe(
                seconds
            )
        )
        self.presence = LastSeenBuffer()
        self.quiet = QuietVehicles()
        self.quiet.watch_local_writes(self.database)
        self.health = HealthServicer()
        self._grpc: grpc.aio.Server | None = None
        self._http: web.AppRunner | None = None
        self._refresher: asyncio.Task[None] | None = None
        self._stepper: asyncio.Task[None] | None = None
        self._presence_flusher: asyncio.Task[None] | None = None
        # The epoch reader and the last-seen flusher get a thread of their own: in the
        # default executor they would queue behind a burst of check-ins, the epoch would
        # age past MAX_EPOCH_AGE_SECONDS, and every check-in would go to the database.
        self._housekeeping = ThreadPoolExecutor(max_workers=1, thread_name_prefix="staffel-epoch")
        self._epoch_reader: asyncio.Task[None] | None = None
        self._leading = False  # whether this process held the engine lock at its last try
        # A thread of its own, so signing never waits behind check-ins nor they behind it.
        self._presign_pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="staffel-sign")
        self.presign = PresignLoop(
            Presigner(self.database, self.director),
            leading=lambda: self._leading,
            executor=self._presign_pool,
            metrics=self.metrics,
            interval=config.presign_interval_seconds,
        )
        self._presigner: asyncio.Task[None] | None = None
        # Vehicles' database work gets threads of its own: sized for the database, and
        # never queued behind an engine step or a management call in the default executor.
        self._vehicle_pool = ThreadPoolExecutor(
            max_workers=vehicle_threads(config, self.database), thread_name_prefix="staffel-vehicle"
        )
        self.grpc_address = ""
        self.http_url = ""

    def _grpc_server(self) -> grpc.aio.Server:
        server = grpc.aio.server(
            # The error interceptor is outermost, so it maps the auth errors too.
            interceptors=[
                *self.tracing.interceptors,  # outermost: a span covers the whole call
                ErrorAndMetricsInterceptor(self.metrics),
                AuthInterceptor(self.database),
            ],
            options=[
                ("grpc.max_receive_message_length", 8 * 1024 * 1024),
                ("grpc.so_reuseport", int(self.config.reuse_port)),
            ],
        )
        vehicle_pb2_grpc.add_VehicleServiceServicer_to_server(
            VehicleServicer(
                database=self.database,
                director=self.director,
                metrics=self.metrics,
                poll_seconds=self.config.poll_seconds,
                clock=self.clock,
                presence=self.presence,
                quiet=self.quiet,
                executor=self._vehicle_pool,
                work_on_loop=self.config.vehicle_work_on_loop,
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
            CampaignServicer(
                database=self.database,
                clock=self.clock,
                release_batch=self.config.release_batch,
            ),
            server,
        )
        auth_pb2_grpc.add_AuthServiceServicer_to_server(
            AuthServicer(database=self.database), server
        )
        relay_pb2_grpc.add_RelayServiceServicer_to_server(
            RelayServicer(database=self.database), server
        )
        health_pb2_grpc.add_HealthServicer_to_server(self.health, server)
        return server

    def _http_app(self) -> web.Application:
        app = web.Application()
        add_routes(app, image_repo=self.image_repo, director=self.director, blobs=self.blobs)

        async def metrics(_request: web.Request) -> web.Response:
            # Off the event loop: campaign and assignment gauges read the store.
            body = await asyncio.to_thread(generate_latest, self.metrics.registry)
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
        self.tracing = Tracing.start(
            service_name="staffel-server", endpoint=self.config.otlp_endpoint
        )
        await asyncio.to_thread(self.quiet.refresh, self.database)
        self._grpc = self._grpc_server()
        try:
            bound = self._grpc.add_insecure_port(f"{grpc_host}:{grpc_port}")
        except RuntimeError:  # grpcio >= 1.5x raises where older ones returned 0
            bound = 0
        if bound == 0:
            raise StaffelError(f"cannot listen for gRPC on {self.config.grpc_listen}")
        await self._grpc.start()
        self.grpc_address = f"{grpc_host}:{bound}"
        self._http = web.AppRunner(self._http_app(), access_log=None)
        await self._http.setup()
        site = web.TCPSite(
            self._http, http_host, http_port, reuse_port=self.config.reuse_port or None
        )
        await site.start()
        actual_port = self._http.addresses[0][1]
        self.http_url = f"http://{http_host}:{actual_port}"
        for service in (*SERVICES, ""):
            await self.health.set(service, health_pb2.HealthCheckResponse.SERVING)
        self._refresher = asyncio.create_task(self._refresh_metadata())
        if self.config.engine_interval_seconds > 0:
            self._stepper = asyncio.create_task(self._step_campaigns())
            if self.config.presign_interval_seconds > 0:
                self._presigner = asyncio.create_task(self.presign.run())
        self._presence_flusher = asyncio.create_task(self._flush_presence())
        self._epoch_reader = asyncio.create_task(self._read_offer_epoch())
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

    async def _step_campaigns(self) -> None:
        """Runs the campaign engine's step on an interval until cancelled."""
        while True:
            try:
                # Among replicas sharing PostgreSQL, only the lock's holder steps.
                leading = await asyncio.to_thread(self.engine_lock.hold)
                self.metrics.engine_leader.set(int(leading))
                self._leading = leading
                if leading:
                    released = await asyncio.to_thread(self._step_and_read_epoch)
                    if released:
                        self.presign.wake()
            except Exception:
                # Logged and retried: one bad step must not stop every campaign for good.
                log.exception("campaign engine step failed; retrying at the next interval")
            await asyncio.sleep(self.config.engine_interval_seconds)

    def _step_and_read_epoch(self) -> int:
        """One engine step; returns how many assignments it released."""
        released = sum(outcome.released for outcome in self.engine.step())
        # A step that released assignments moved the epoch: resume quiet answers at once.
        self.quiet.refresh(self.database)
        return released

    async def _flush_presence(self) -> None:
        """Writes the buffered last-seen moments on an interval until cancelled."""
        while True:
            await asyncio.sleep(self.config.presence_flush_seconds)
            try:
                await asyncio.get_running_loop().run_in_executor(
                    self._housekeeping, self.presence.flush, self.database
                )
            except Exception:
                # Kept in the buffer and written at the next interval.
                log.exception("writing last-seen moments failed; retrying at the next interval")

    async def _read_offer_epoch(self) -> None:
        """Follows the offer epoch, so quiet answers end within a second of any change;
        checkpoints SQLite's write-ahead log after each read (see ``checkpoint_in_background``)."""
        while True:
            await asyncio.sleep(self.config.offer_epoch_seconds)
            loop = asyncio.get_running_loop()
            try:
                await loop.run_in_executor(self._housekeeping, self.quiet.refresh, self.database)
            except Exception:
                # Quiet answers stop by themselves once the epoch is too old.
                log.exception("reading the offer epoch failed; retrying at the next interval")
            try:
                await loop.run_in_executor(self._housekeeping, self.database.checkpoint)
            except Exception:
                log.exception("checkpointing the SQLite log failed; retrying at the next interval")

    async def stop(self) -> None:
        """Graceful stop: health NOT_SERVING first, then drain calls, then close the store."""
        await self.health.enter_graceful_shutdown()
        await asyncio.sleep(self.config.shutdown_delay_seconds)
        tasks = (
            self._refresher,
            self._stepper,
            self._presigner,
            self._presence_flusher,
            self._epoch_reader,
        )
        for task in tasks:
            if task is not None:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
        await asyncio.to_thread(self._presign_pool.shutdown, wait=True)
        await asyncio.to_thread(self._vehicle_pool.shutdown, wait=True)
        await asyncio.to_thread(self.engine_lock.release)
        if self._grpc is not None:
            await self._grpc.stop(self.config.shutdown_grace_seconds)
        await self.database.close_loop_engine()
        if self._http is not None:
            await self._http.cleanup()
        try:
            await asyncio.to_thread(self.presence.flush, self.database)
        except Exception:
            log.exception("writing the last-seen moments at shutdown failed")
        self._housekeeping.shutdown(wait=True)
        self.tracing.shutdown()
        self._stop_observing_signing()
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
    parser.add_argument(
        "--otlp-endpoint",
        help="export traces of gRPC calls to this OTLP/gRPC collector "
        "(default: $OTEL_EXPORTER_OTLP_ENDPOINT; unset: no tracing)",
    )
    parser.add_argument(
        "--shutdown-delay",
        type=float,
        default=0.0,
        help="seconds to answer NOT_SERVING before refusing new calls (Kubernetes: ~10)",
    )
    parser.add_argument(
        "--reuse-port",
        action="store_true",
        help="set SO_REUSEPORT on both listeners, so one server process per core shares "
        "the ports (default off: a busy port is an error)",
    )
    parser.add_argument(
        "--auto-migrate",
        action="store_true",
        help="upgrade the database schema at start-up (as `staffel-server migrate` does); "
        "without it a database at an older revision refuses to start",
    )
    parser.add_argument(
        "--engine-interval",
        type=float,
        default=1.0,
        help="seconds between campaign engine steps (gates, waves, pacing)",
    )
    parser.add_argument(
        "--release-batch",
        type=int,
        default=RELEASE_BATCH,
        help="most assignments one engine step releases; a larger wave opens over "
        f"consecutive steps (default {RELEASE_BATCH:,})",
    )
    parser.add_argument(
        "--vehicle-threads",
        type=int,
        help="threads for vehicles' database work (default: 1 on SQLite, 8 on PostgreSQL)",
    )
    parser.add_argument(
        "--vehicle-work-in-threads",
        action="store_true",
        help="run vehicles' database work in threads rather than on the event loop (the "
        "default runs it on the loop: on SQLite using a thread only when another "
        "connection holds the write lock, on PostgreSQL awaiting each statement)",
    )
    parser.add_argument(
        "--presign-interval",
        type=float,
        default=2.0,
        help="seconds between rounds that sign released assignments' Director metadata ahead "
        "of the vehicles' check-ins (in the engine's process; 0: sign at check-in only)",
    )
    parser.add_argument(
        "--staging-wait",
        type=float,
        default=DEFAULT_WAIT.total_seconds(),
        help="seconds a site's relay that has not staged a wave's bundle may hold the wave "
        "at its site (default: 2 hours)",
    )
    return parser


def _token_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="staffel-server create-token",
        description="Issue a token straight into the store (bootstraps the first admin).",
    )
    parser.add_argument("--data-dir", type=Path, required=True, help="the server's data dir")
    parser.add_argument("--database-url", help="SQLAlchemy URL (default: SQLite in --data-dir)")
    parser.add_argument("--name", required=True, help="who the token is for")
    parser.add_argument("--role", default="admin", help="viewer, release_manager, approver, admin")
    return parser


def create_token_command(argv: list[str]) -> int:
    """``staffel-server create-token``: prints a new token (only the operator sees it)."""
    args = _token_parser().parse_args(argv)
    try:
        role = Role.parse(args.role)
        if args.database_url:
            database = Database.from_url(args.database_url)
        else:
            database = Database.in_data_dir(args.data_dir)
        try:
            operator = Principal(name="server-operator", role=Role.ADMIN)
            print(create_token(database, name=args.name, role=role, created_by=operator))
        finally:
            database.dispose()
    except StaffelError as error:
        print(f"staffel-server: {error}", file=sys.stderr)
        return 1
    return 0


def main(argv: list[str] | None = None) -> int:
    """Entry point of ``staffel-server`` (and of its ``create-token`` and ``migrate``)."""
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["create-token"]:
        return create_token_command(argv[1:])
    if argv[:1] == ["migrate"]:
        return migrate_command(argv[1:])
    args = _parser().parse_args(argv)
    configure_logging(args.log_format)
    if not 1 <= args.poll_seconds <= 86_400:
        print("staffel-server: --poll-seconds must be 1 to 86400", file=sys.stderr)
        return 2
    if args.release_batch < 1:
        print("staffel-server: --release-batch must be at least 1", file=sys.stderr)
        return 2
    config = ServerConfig(
        data_dir=args.data_dir,
        keys_dir=args.keys_dir or args.data_dir / "keys",
        database_url=args.database_url,
        grpc_listen=args.grpc_listen,
        http_listen=args.http_listen,
        poll_seconds=args.poll_seconds,
        engine_interval_seconds=args.engine_interval,
        presign_interval_seconds=args.presign_interval,
        vehicle_threads=args.vehicle_threads,
        vehicle_work_on_loop=not args.vehicle_work_in_threads,
        staging_wait=timedelta(seconds=args.staging_wait),
        release_batch=args.release_batch,
        reuse_port=args.reuse_port,
        auto_migrate=args.auto_migrate,
        shutdown_delay_seconds=args.shutdown_delay,
        otlp_endpoint=otlp_endpoint(args.otlp_endpoint),
    )
    try:
        asyncio.run(serve(config, args.ready_file))
    except (StaffelError, ValueError) as error:
        print(f"staffel-server: {error}", file=sys.stderr)
        return 1
    return 0
