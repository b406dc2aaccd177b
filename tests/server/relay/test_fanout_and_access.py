"""Done-when tests of the relay: 200 vehicles on a cold cache, and mTLS by site."""

from __future__ import annotations

import asyncio
import hashlib
import os
import ssl
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING

import aiohttp
import grpc
import pytest
from staffel.v1 import vehicle_pb2, vehicle_pb2_grpc

from keys.fleet_ca import FleetCA
from server.relay.app import Relay
from server.relay.config import RelayConfig, TlsFiles

if TYPE_CHECKING:
    from tests.server.relay.conftest import UpstreamHTTP

SITE = "plant-munich"
VIN = "WSF00000000000071"
OTHER_SITE_VIN = "WSF00000000000072"


async def test_200_vehicles_on_a_cold_cache_get_identical_copies_from_one_upstream_copy(
    relay: Relay, upstream_http: UpstreamHTTP, metric: Callable[..., float]
) -> None:
    data = os.urandom(64 * 1024 * 1024)
    expected = hashlib.sha256(data).hexdigest()
    filename = upstream_http.add_blob(data, "ecu-gateway-64mib.img")
    del data  # every copy is streamed into a hash; none is held in memory
    path = f"/image/targets/{filename}"
    url = f"{relay.addresses.http}{path}"
    connector = aiohttp.TCPConnector(limit=0)
    async with aiohttp.ClientSession(connector=connector) as session:

        async def vehicle() -> tuple[str, int]:
            digest = hashlib.sha256()
            size = 0
            async with session.get(url, timeout=aiohttp.ClientTimeout(total=600)) as response:
                assert response.status == 200
                async for chunk in response.content.iter_chunked(1 << 20):
                    digest.update(chunk)
                    size += len(chunk)
            return digest.hexdigest(), size

        copies = await asyncio.gather(*(vehicle() for _ in range(200)))
    assert {digest for digest, _ in copies} == {expected}
    assert {size for _, size in copies} == {64 * 1024 * 1024}
    # Counted at the upstream server: one request, one copy of the bytes.
    assert upstream_http.requests[path] == 1
    assert upstream_http.bytes_sent[path] == 64 * 1024 * 1024
    assert metric("staffel_relay_bytes_fetched_total") == 64 * 1024 * 1024


@pytest.fixture(scope="module")
def fleet(tmp_path_factory: pytest.TempPathFactory) -> FleetCA:
    """A fleet CA with a relay of SITE and two vehicles, one of another site."""
    ca = FleetCA.create(tmp_path_factory.mktemp("fleet-ca"))
    ca.issue_relay("relay-1", site=SITE, hosts=("127.0.0.1",))
    ca.issue_vehicle(VIN, site=SITE)
    ca.issue_vehicle(OTHER_SITE_VIN, site="plant-leipzig")
    return ca


def _client_context(ca_file: Path, cert: Path | None = None) -> ssl.SSLContext:
    context = ssl.create_default_context(cafile=str(ca_file))
    if cert is not None:
        context.load_cert_chain(cert, cert.with_suffix(".key"))
    return context


async def test_only_vehicles_of_the_site_with_a_fleet_certificate_are_answered(
    relay_config: RelayConfig,
    upstream_http: UpstreamHTTP,
    fleet: FleetCA,
    tmp_path: Path,
) -> None:
    filename = upstream_http.add_blob(b"signed image bytes", "ecu-door-1.0.img")
    config = replace(
        relay_config,
        site=SITE,
        tls=TlsFiles(
            ca_file=fleet.cert_path,
            cert_file=fleet.directory / "relays" / "relay-1.crt",
            key_file=fleet.directory / "relays" / "relay-1.key",
        ),
    )
    stranger = FleetCA.create(tmp_path / "stranger-ca")
    forged = stranger.issue_vehicle(VIN, site=SITE)
    vehicles = fleet.directory / "vehicles"
    async with Relay.from_config(config) as relay:
        url = f"{relay.addresses.http}/image/targets/{filename}"
        assert url.startswith("https://")

        async def fetch(context: ssl.SSLContext) -> int | str:
            try:
                async with (
                    aiohttp.ClientSession() as session,
                    session.get(url, ssl=context) as response,
                ):
                    return response.status
            except aiohttp.ClientError as exc:
                return type(exc).__name__

        assert await fetch(_client_context(fleet.cert_path, vehicles / f"{VIN}.crt")) == 200
        assert await fetch(
            _client_context(fleet.cert_path, vehicles / f"{OTHER_SITE_VIN}.crt")
        ) == (403)
        assert isinstance(await fetch(_client_context(fleet.cert_path)), str)  # no certificate
        assert isinstance(await fetch(_client_context(fleet.cert_path, forged.cert)), str)

        def channel(cert: Path) -> grpc.aio.Channel:
            credentials = grpc.ssl_channel_credentials(
                root_certificates=fleet.cert_path.read_bytes(),
                private_key=cert.with_suffix(".key").read_bytes(),
                certificate_chain=cert.read_bytes(),
            )
            return grpc.aio.secure_channel(relay.addresses.grpc, credentials)

        report = vehicle_pb2.ReportEventsRequest(
            vin=VIN, events=[vehicle_pb2.VehicleEvent(event_id="e-1")]
        )
        async with channel(vehicles / f"{VIN}.crt") as own:
            answer = await vehicle_pb2_grpc.VehicleServiceStub(own).ReportEvents(report, timeout=5)
            assert answer.accepted == 1
            with pytest.raises(grpc.aio.AioRpcError) as foreign:
                await vehicle_pb2_grpc.VehicleServiceStub(own).ReportEvents(
                    vehicle_pb2.ReportEventsRequest(vin=OTHER_SITE_VIN), timeout=5
                )
            assert foreign.value.code() is grpc.StatusCode.PERMISSION_DENIED
        async with channel(vehicles / f"{OTHER_SITE_VIN}.crt") as other:
            with pytest.raises(grpc.aio.AioRpcError) as elsewhere:
                await vehicle_pb2_grpc.VehicleServiceStub(other).ReportEvents(
                    vehicle_pb2.ReportEventsRequest(vin=OTHER_SITE_VIN), timeout=5
                )
            assert elsewhere.value.code() is grpc.StatusCode.PERMISSION_DENIED
            assert "plant-leipzig" in (elsewhere.value.details() or "")
        async with channel(forged.cert) as forged_channel:
            with pytest.raises(grpc.aio.AioRpcError) as handshake:
                await vehicle_pb2_grpc.VehicleServiceStub(forged_channel).ReportEvents(
                    report, timeout=5
                )
            assert handshake.value.code() is grpc.StatusCode.UNAVAILABLE
    refused = relay.metrics.registry.get_sample_value
    assert refused("staffel_relay_refused_total", {"reason": "other_site"}) == 2
    assert refused("staffel_relay_refused_total", {"reason": "foreign_vin"}) == 1
