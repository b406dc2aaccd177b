"""Image blobs through the relay: fetched once, kept on disk, served with Range."""

from __future__ import annotations

import asyncio
import os
from collections.abc import Callable
from typing import TYPE_CHECKING

import aiohttp

from server.relay.app import Relay
from server.relay.http import IMMUTABLE

if TYPE_CHECKING:
    from tests.server.relay.conftest import UpstreamHTTP


async def _wait_for(predicate: Callable[[], bool], what: str) -> None:
    for _ in range(500):
        if predicate():
            return
        await asyncio.sleep(0.01)
    raise AssertionError(f"timed out waiting for {what}")


async def test_cold_blob_is_fetched_once_for_twenty_concurrent_vehicles(
    relay: Relay, upstream_http: UpstreamHTTP, metric: Callable[..., float]
) -> None:
    data = os.urandom(3 * 1024 * 1024 + 17)
    filename = upstream_http.add_blob(data, "ecu-brake-2.1.0.img")
    upstream_http.gate = asyncio.Event()
    url = f"{relay.addresses.http}/image/targets/{filename}"

    async with aiohttp.ClientSession() as session:

        async def download() -> tuple[int, bytes]:
            async with session.get(url) as response:
                return response.status, await response.read()

        downloads = [asyncio.create_task(download()) for _ in range(20)]
        # Hold the upstream until every vehicle has missed the cache and waits on the fill.
        await _wait_for(lambda: metric("staffel_relay_cache_misses_total") == 20, "20 misses")
        upstream_http.gate.set()
        results = await asyncio.gather(*downloads)

    assert upstream_http.requests[f"/image/targets/{filename}"] == 1
    assert all(status == 200 for status, _ in results)
    assert all(body == data for _, body in results)
    assert (relay.config.cache_dir / "blobs" / filename).read_bytes() == data
    assert metric("staffel_relay_bytes_fetched_total") == len(data)
    assert metric("staffel_relay_bytes_served_total") == 20 * len(data)


async def test_cached_blob_is_served_after_the_upstream_stopped(
    relay: Relay, upstream_http: UpstreamHTTP, metric: Callable[..., float]
) -> None:
    data = b"engine control firmware" * 1000
    filename = upstream_http.add_blob(data, "ecu-engine-1.0.0.img")
    url = f"{relay.addresses.http}/image/targets/{filename}"
    async with aiohttp.ClientSession() as session:
        async with session.get(url) as first:
            assert first.status == 200
            assert first.headers["Cache-Control"] == IMMUTABLE
            assert first.headers["Content-Type"] == "application/octet-stream"
            assert await first.read() == data
        await upstream_http.stop()
        async with session.get(url) as second:
            assert second.status == 200
            assert await second.read() == data
    assert upstream_http.requests[f"/image/targets/{filename}"] == 1
    assert metric("staffel_relay_cache_hits_total") == 1


async def test_range_request_on_a_cached_blob(
    relay: Relay, upstream_http: UpstreamHTTP, metric: Callable[..., float]
) -> None:
    data = bytes(range(256)) * 64
    filename = upstream_http.add_blob(data, "ecu-gateway-3.0.0.img")
    url = f"{relay.addresses.http}/image/targets/{filename}"
    async with aiohttp.ClientSession() as session:
        async with session.get(url) as response:
            await response.read()
        async with session.get(url, headers={"Range": "bytes=1000-1999"}) as response:
            assert response.status == 206
            assert response.headers["Content-Range"] == f"bytes 1000-1999/{len(data)}"
            assert await response.read() == data[1000:2000]
        async with session.get(url, headers={"Range": "bytes=16000-"}) as response:
            assert response.status == 206
            assert await response.read() == data[16000:]
    assert metric("staffel_relay_bytes_served_total") == len(data) + 1000 + 384


async def test_missing_blob_is_404_and_not_cached(
    relay: Relay, upstream_http: UpstreamHTTP, metric: Callable[..., float]
) -> None:
    filename = f"{'ab' * 32}.ecu-missing-1.0.0.img"
    url = f"{relay.addresses.http}/image/targets/{filename}"
    async with aiohttp.ClientSession() as session:
        for _ in range(2):
            async with session.get(url) as response:
                assert response.status == 404
    assert upstream_http.requests[f"/image/targets/{filename}"] == 2
    assert not (relay.config.cache_dir / "blobs" / filename).exists()
    assert metric("staffel_relay_upstream_errors_total") == 0


async def test_malformed_blob_names_are_rejected_without_asking_upstream(
    relay: Relay, upstream_http: UpstreamHTTP
) -> None:
    sha = "cd" * 32
    bad_names = [
        "ecu-brake-2.1.0.img",  # no hash prefix
        f"{sha[:-1]}.ecu.img",  # 63 hex digits
        f"{sha.upper()}.ecu.img",  # uppercase hex
        f"{sha}.",  # no target name
        f"{sha}.ecu img",  # space
        f"{sha}.%2e%2e%2fsecret",  # encoded traversal
        f"{sha}.{'x' * 300}",  # too long
    ]
    async with aiohttp.ClientSession() as session:
        for name in bad_names:
            url = f"{relay.addresses.http}/image/targets/{name}"
            async with session.get(url) as response:
                assert response.status == 400, name
                assert "SHA256.NAME" in await response.text() or "long" in await response.text()
        traversal = f"{relay.addresses.http}/image/targets/..%2F..%2Fetc%2Fpasswd"
        async with session.get(traversal) as response:
            assert response.status in (400, 404)
    assert sum(upstream_http.requests.values()) == 0


async def test_upstream_error_is_502_and_counted(
    relay: Relay, upstream_http: UpstreamHTTP, metric: Callable[..., float]
) -> None:
    data = b"body"
    filename = upstream_http.add_blob(data, "ecu-body-1.0.0.img")
    upstream_http.failures[f"/image/targets/{filename}"] = 500
    url = f"{relay.addresses.http}/image/targets/{filename}"
    async with aiohttp.ClientSession() as session:
        async with session.get(url) as response:
            assert response.status == 502
            assert "HTTP 500" in await response.text()
        del upstream_http.failures[f"/image/targets/{filename}"]
        async with session.get(url) as response:
            assert response.status == 200
            assert await response.read() == data
    assert metric("staffel_relay_upstream_errors_total") == 1


async def test_blob_whose_bytes_do_not_match_its_name_is_not_cached(
    relay: Relay, upstream_http: UpstreamHTTP
) -> None:
    filename = upstream_http.add_blob(b"the real image", "ecu-seat-1.0.0.img")
    upstream_http.files[f"/image/targets/{filename}"] = b"damaged in transfer"
    url = f"{relay.addresses.http}/image/targets/{filename}"
    async with aiohttp.ClientSession() as session, session.get(url) as response:
        assert response.status == 502
        assert "SHA-256" in await response.text()
    assert not (relay.config.cache_dir / "blobs" / filename).exists()
    assert list((relay.config.cache_dir / "tmp").iterdir()) == []


async def test_cached_blob_that_no_longer_matches_its_hash_is_fetched_again(
    relay: Relay, upstream_http: UpstreamHTTP, metric: Callable[..., float]
) -> None:
    filename = upstream_http.add_blob(b"trusted bytes", "ecu-radio-1.0.0.img")
    url = f"{relay.addresses.http}/image/targets/{filename}"
    async with aiohttp.ClientSession() as session:
        async with session.get(url) as response:
            assert await response.read() == b"trusted bytes"
        (relay.config.cache_dir / "blobs" / filename).write_bytes(b"tampered bytes")
        async with session.get(url) as response:
            assert await response.read() == b"trusted bytes"
    assert metric("staffel_relay_cache_corrupt_total") == 1
    assert upstream_http.requests[f"/image/targets/{filename}"] == 2
    assert (relay.config.cache_dir / "blobs" / filename).read_bytes() == b"trusted bytes"
