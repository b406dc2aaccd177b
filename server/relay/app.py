"""The relay process: ``staffel-relay``, one asyncio loop serving HTTP and gRPC.

staffel-relay --upstream URL --upstream-grpc HOST:PORT --cache-dir DIR
              [--grpc-listen HOST:PORT] [--http-listen HOST:PORT] [--ready-file PATH]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import logging
import os
import signal
import sys
import tempfile
from collections.abc import Coroutine, Sequence
from contextlib import AsyncExitStack
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType

import grpc
from aiohttp import web
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from staffel.v1 import relay_pb2_grpc, vehicle_pb2, vehicle_pb2_grpc

from server.logs import configure_logging
from server.observability.tracing import Tracing, otlp_endpoint
from server.relay.access import (
    SitePolicy,
    client_ssl_context,
    grpc_channel_credentials,
    grpc_server_credentials,
    server_ssl_context,
)
from server.relay.cache import ContentCache
from server.relay.config import ListenAddress, RelayConfig, TlsFiles
from server.relay.errors import ListenError, RelayConfigError, RelayError
from server.relay.forwarder import VehicleForwarder
from server.relay.http import create_app
from server.relay.metrics import RelayMetrics
from server.relay.mirror import SiteMirror
from server.relay.outbox import Outbox
from server.relay.staging import RelayForwarder, Stager
from server.relay.uplink import EventUplink
from server.relay.upstream import Upstream

logger = logging.getLogger(__name__)

_VEHICLE_SERVICE = vehicle_pb2.DESCRIPTOR.services_by_name["VehicleService"].full_name


@dataclass(frozen=True)
class RelayAddresses:
    """Where a started relay really listens (ports resolved when 0 was asked for)."""

    grpc: str
    http: str

    def to_json(self) -> str:
        """The ready-file document: ``{"grpc": "HOST:PORT", "http": "http://HOST:PORT"}``."""
        return json.dumps({"grpc": self.grpc, "http": self.http})


class Relay:
    """One relay: its cache, upstream session, HTTP site and gRPC server.

    Build it with ``Relay.from_config``, then ``await relay.start()`` and
    ``await relay.stop()``, or use it as an async context manager. Everything started is owned
    here and released by ``stop`` in reverse order.
    """

    def __init__(
        self,
        *,
        config: RelayConfig,
        metrics: RelayMetrics,
        interceptors: Sequence[grpc.aio.ServerInterceptor[object, object]] = (),
    ) -> None:
        """Prefer ``Relay.from_config``."""
        self.config = config
        self.metrics = metrics
        self._interceptors = list(interceptors)
        self._resources: AsyncExitStack | None = None
        self._addresses: RelayAddresses | None = None
        self._cache: ContentCache | None = None
        self._uplink: EventUplink | None = None
        self._stager: Stager | None = None

    @classmethod
    def from_config(
        cls,
        config: RelayConfig,
        *,
        interceptors: Sequence[grpc.aio.ServerInterceptor[object, object]] = (),
    ) -> Relay:
        """A relay for ``config`` with fresh metrics; nothing is started yet.

        Args:
            config: The relay's configuration.
            interceptors: gRPC server interceptors, outermost first (tracing).
        """
        return cls(config=config, metrics=RelayMetrics.create(), interceptors=interceptors)

    @property
    def addresses(self) -> RelayAddresses:
        """Where the started relay listens.

        Raises:
            RelayError: The relay is not started.
        """
        if self._addresses is None:
            raise RelayError("the relay is not started; call start() first")
        return self._addresses

    @property
    def cache(self) -> ContentCache:
        """The started relay's cache.

        Raises:
            RelayError: The relay is not started.
        """
        if self._cache is None:
            raise RelayError("the relay is not started; call start() first")
        return self._cache

    async def start(self) -> RelayAddresses:
        """Opens the cache and the upstream, then serves HTTP and gRPC.

        Raises:
            CacheError: The cache directory cannot be prepared.
            ListenError: A listen address cannot be bound.
        """
        if self._resources is not None:
            raise RelayError("the relay is already started")
        config = self.config
        resources = AsyncExitStack()
        try:
            client_tls = client_ssl_context(config.tls) if config.tls is not None else None
            upstream = Upstream.open(config, self.metrics, client_tls)
            resources.push_async_callback(upstream.close)
            cache = await ContentCache.open(
                config.cache_dir, budget_bytes=config.cache_budget_bytes, metrics=self.metrics
            )
            resources.push_async_callback(cache.close)
            self._cache = cache
            channel = self._upstream_channel()
            resources.push_async_callback(channel.close, None)
            outbox = await Outbox.open(config.cache_dir / "relay.db")
            resources.push_async_callback(outbox.close)
            uplink = EventUplink(
                outbox=outbox,
                channel=channel,
                deadline=config.rpc_deadline,
                interval=config.flush_interval,
                metrics=self.metrics,
            )
            self._own_task(resources, uplink.run(), "event uplink")
            policy = SitePolicy(site=config.site, enforced=config.tls is not None)
            mirror = SiteMirror(config=config, cache=cache, upstream=upstream, metrics=self.metrics)
            self._stager = Stager(
                config=config, mirror=mirror, channel=channel, metrics=self.metrics
            )
            if config.staging_interval > 0:
                self._own_task(resources, self._stager.run(), "staging")
            http = await self._serve_http(
                resources, create_app(mirror=mirror, metrics=self.metrics, policy=policy)
            )
            forwarder = VehicleForwarder(
                channel=channel,
                upstream=config.upstream_grpc,
                deadline=config.rpc_deadline,
                metrics=self.metrics,
                outbox=outbox,
                uplink=uplink,
                policy=policy,
            )
            self._uplink = uplink
            relays = RelayForwarder(channel=channel, deadline=config.rpc_deadline, policy=policy)
            grpc_address = await self._serve_grpc(resources, forwarder, relays)
        except BaseException:
            await resources.aclose()
            raise
        self._resources = resources
        scheme = "https" if config.tls is not None else "http"
        self._addresses = RelayAddresses(grpc=grpc_address, http=f"{scheme}://{http}")
        return self._addresses

    def _upstream_channel(self) -> grpc.aio.Channel:
        config = self.config
        if config.upstream_tls and config.tls is not None:
            credentials = grpc_channel_credentials(config.tls)
            return grpc.aio.secure_channel(config.upstream_grpc, credentials)
        return grpc.aio.insecure_channel(config.upstream_grpc)

    @staticmethod
    def _own_task(
        resources: AsyncExitStack, work: Coroutine[object, object, None], name: str
    ) -> None:
        """Runs ``work`` in the background until the relay stops."""
        task = asyncio.create_task(work, name=name)

        async def cancel() -> None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task

        resources.push_async_callback(cancel)

    def stager(self) -> Stager:
        """The started relay's staging loop (``stage_once`` runs one round now)."""
        if self._stager is None:
            raise RelayError("the relay is not started; call start() first")
        return self._stager

    async def flush_events(self) -> None:
        """Forwards the queued events now (tests and shutdown); raises when the uplink is down."""
        if self._uplink is None:
            raise RelayError("the relay is not started; call start() first")
        await self._uplink.flush()

    async def stop(self) -> None:
        """Stops serving (gRPC health NOT_SERVING first) and releases everything."""
        resources, self._resources = self._resources, None
        if resources is not None:
            await resources.aclose()

    async def __aenter__(self) -> Relay:
        await self.start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        await self.stop()

    async def _serve_http(self, resources: AsyncExitStack, app: web.Application) -> str:
        listen = self.config.http_listen
        runner = web.AppRunner(app, shutdown_timeout=self.config.shutdown_grace, access_log=None)
        await runner.setup()
        resources.push_async_callback(runner.cleanup)
        tls = server_ssl_context(self.config.tls) if self.config.tls is not None else None
        try:
            await web.TCPSite(runner, listen.host, listen.port, ssl_context=tls).start()
        except OSError as exc:
            raise ListenError(
                f"cannot serve HTTP on {listen}: {exc}; choose another --http-listen"
            ) from exc
        port: int = runner.addresses[0][1]
        return listen.connectable(port)

    async def _serve_grpc(
        self, resources: AsyncExitStack, forwarder: VehicleForwarder, relays: RelayForwarder
    ) -> str:
        listen = self.config.grpc_listen
        server = grpc.aio.server(interceptors=self._interceptors)
        vehicle_pb2_grpc.add_VehicleServiceServicer_to_server(forwarder, server)
        relay_pb2_grpc.add_RelayServiceServicer_to_server(relays, server)
        # grpc-stubs describe only the sync health servicer; the asyncio one is health.aio.
        health_servicer = health.aio.HealthServicer()  # type: ignore[attr-defined]
        health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
        address = str(listen)
        try:
            if self.config.tls is not None:
                port = server.add_secure_port(address, grpc_server_credentials(self.config.tls))
            else:
                port = server.add_insecure_port(address)
        except RuntimeError as exc:
            raise ListenError(
                f"cannot serve gRPC on {address}: {exc}; choose another --grpc-listen"
            ) from exc
        await server.start()

        async def stop_grpc() -> None:
            await health_servicer.enter_graceful_shutdown()
            await server.stop(self.config.shutdown_grace)

        resources.push_async_callback(stop_grpc)
        for service in ("", _VEHICLE_SERVICE):
            await health_servicer.set(service, health_pb2.HealthCheckResponse.SERVING)
        return listen.connectable(port)


def write_ready_file(path: Path, addresses: RelayAddresses) -> None:
    """Writes the ready file atomically (temp file, fsync, rename)."""
    fd, tmp_name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    tmp = Path(tmp_name)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as out:
            out.write(addresses.to_json())
            out.flush()
            os.fsync(out.fileno())
        tmp.replace(path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


async def run(config: RelayConfig, *, otlp: str | None = None) -> None:
    """Serves until SIGTERM or SIGINT, then stops cleanly.

    Args:
        config: The relay's configuration.
        otlp: The OTLP/gRPC collector to send traces of gRPC calls to; None: no tracing.

    Raises:
        RelayError: The relay cannot start.
    """
    loop = asyncio.get_running_loop()
    stopping = asyncio.Event()
    signals = (signal.SIGTERM, signal.SIGINT)
    for signum in signals:
        loop.add_signal_handler(signum, stopping.set)
    tracing = Tracing.start(service_name="staffel-relay", endpoint=otlp)
    try:
        async with Relay.from_config(config, interceptors=tracing.interceptors) as relay:
            if config.ready_file is not None:
                await asyncio.to_thread(write_ready_file, config.ready_file, relay.addresses)
            logger.info(
                "relay serving gRPC on %s and HTTP on %s for upstream %s",
                relay.addresses.grpc,
                relay.addresses.http,
                config.upstream_base,
            )
            await stopping.wait()
            logger.info("relay stopping")
    finally:
        tracing.shutdown()
        for signum in signals:
            loop.remove_signal_handler(signum)


def _parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="staffel-relay",
        description="Edge relay: caches metadata and blobs for a site, forwards vehicle RPCs.",
    )
    parser.add_argument("--upstream", required=True, help="upstream HTTP base URL")
    parser.add_argument("--upstream-grpc", required=True, help="upstream gRPC HOST:PORT")
    parser.add_argument("--cache-dir", required=True, type=Path, help="cache directory")
    parser.add_argument("--grpc-listen", default="127.0.0.1:7001", help="gRPC HOST:PORT")
    parser.add_argument("--http-listen", default="127.0.0.1:7002", help="HTTP HOST:PORT")
    parser.add_argument("--ready-file", type=Path, help="written with the bound addresses")
    parser.add_argument("--log-format", choices=("text", "json"), default="text")
    parser.add_argument("--site", default="", help="the site this relay serves")
    parser.add_argument("--relay-id", default="", help="this relay's name (staging readiness)")
    parser.add_argument("--tls-ca", type=Path, help="fleet CA certificate (enables mTLS)")
    parser.add_argument("--tls-cert", type=Path, help="this relay's certificate (PEM)")
    parser.add_argument("--tls-key", type=Path, help="this relay's private key (PEM)")
    parser.add_argument(
        "--cache-budget-gib", type=float, default=64.0, help="disk budget for blobs, GiB"
    )
    parser.add_argument(
        "--staging-interval", type=float, default=0.0, help="seconds between plan fetches (0: off)"
    )
    parser.add_argument(
        "--resume-window", type=float, default=120.0, help="seconds to resume a cut fetch"
    )
    parser.add_argument(
        "--otlp-endpoint",
        help="export traces of gRPC calls to this OTLP/gRPC collector "
        "(default: $OTEL_EXPORTER_OTLP_ENDPOINT; unset: no tracing)",
    )
    return parser.parse_args(argv)


def _tls_files(args: argparse.Namespace) -> TlsFiles | None:
    given = (args.tls_ca, args.tls_cert, args.tls_key)
    if not any(given):
        return None
    if not all(given):
        raise RelayConfigError("mTLS needs all three of --tls-ca, --tls-cert and --tls-key")
    return TlsFiles(ca_file=args.tls_ca, cert_file=args.tls_cert, key_file=args.tls_key)


def main(argv: list[str] | None = None) -> int:
    """Runs the relay until SIGTERM or SIGINT.

    Returns:
        0 after a clean stop, 1 when the relay cannot start, 2 for a bad command line.
    """
    args = _parse_args(argv)
    configure_logging(args.log_format)
    try:
        config = RelayConfig(
            upstream_url=args.upstream,
            upstream_grpc=args.upstream_grpc,
            cache_dir=args.cache_dir,
            grpc_listen=ListenAddress.parse(args.grpc_listen, option="--grpc-listen"),
            http_listen=ListenAddress.parse(args.http_listen, option="--http-listen"),
            ready_file=args.ready_file,
            site=args.site,
            relay_id=args.relay_id,
            tls=_tls_files(args),
            cache_budget_bytes=int(args.cache_budget_gib * 1024**3),
            staging_interval=args.staging_interval,
            resume_window=args.resume_window,
        )
    except RelayConfigError as exc:
        print(f"staffel-relay: error: {exc}", file=sys.stderr)
        return 2
    try:
        asyncio.run(run(config, otlp=otlp_endpoint(args.otlp_endpoint)))
    except RelayError as exc:
        logger.error("relay cannot run: %s", exc)  # noqa: TRY400 (the message says it all)
        return 1
    return 0
