"""The cache streams a blob while it arrives, resumes cut transfers and keeps within its budget."""

from __future__ import annotations

import asyncio
import hashlib
import os
from collections.abc import Callable
from dataclasses import replace
from typing import TYPE_CHECKING

import aiohttp

from server.relay.app import Relay
from server.relay.config import RelayConfig

if TYPE_CHECKING:
    from tests.server.relay.conftest import UpstreamHTTP


async def _until(predicate: Callable[[], bool], what: str) -> None:
    for _ in range(3000):
        if predicate():
            return
        await asyncio.sleep(0.01)
    raise AssertionError(f"timed out waiting for {what}")


async def test_vehicles_receive_bytes_before_the_upstream_finished(
    relay: Relay, upstream_http: UpstreamHTTP
) -> None:
    data = os.urandom(4 * 1024 * 1024)
    filename = upstream_http.add_blob(data, "ecu-brake-3.0.img")
    path = f"/image/targets/{filename}"
    upstream_http.chunk_delay = 0.01  # 64 chunks of 64 KiB: the transfer takes a while
    url = f"{relay.addresses.http}{path}"
    async with aiohttp.ClientSession() as session, session.get(url) as response:
        assert response.status == 200
        assert response.content_length == len(data)
        first = await response.content.readexactly(64 * 1024)
        # The first bytes are here while the upstream is still sending the rest.
        assert upstream_http.bytes_sent[path] < len(data)
        rest = await response.read()
    assert first + rest == data


async def test_range_request_is_answered_while_the_blob_arrives(
    relay: Relay, upstream_http: UpstreamHTTP
) -> None:
    data = os.urandom(2 * 1024 * 1024)
    filename = upstream_http.add_blob(data, "ecu-seat-1.1.img")
    upstream_http.chunk_delay = 0.005
    url = f"{relay.addresses.http}/image/targets/{filename}"
    async with aiohttp.ClientSession() as session:
        whole = asyncio.create_task(_read(session, url))
        headers = {"Range": "bytes=1000000-1099999"}
        async with session.get(url, headers=headers) as response:
            assert response.status == 206
            assert response.headers["Content-Range"] == f"bytes 1000000-1099999/{len(data)}"
            assert await response.read() == data[1_000_000:1_100_000]
        assert await whole == data
    assert upstream_http.requests[f"/image/targets/{filename}"] == 1


async def _read(session: aiohttp.ClientSession, url: str) -> bytes:
    async with session.get(url) as response:
        assert response.status == 200
        return await response.read()


async def test_cut_upstream_transfer_is_resumed_with_a_range(
    relay: Relay, upstream_http: UpstreamHTTP, metric: Callable[..., float]
) -> None:
    data = os.urandom(3 * 1024 * 1024 + 5)
    filename = upstream_http.add_blob(data, "ecu-gateway-4.0.img")
    path = f"/image/targets/{filename}"
    upstream_http.cut_after[path] = 1024 * 1024
    url = f"{relay.addresses.http}{path}"
    async with aiohttp.ClientSession() as session:
        bodies = await asyncio.gather(*(_read(session, url) for _ in range(5)))
    assert all(body == data for body in bodies)
    assert upstream_http.requests[path] == 2
    assert upstream_http.ranges[path][0] == ""
    resumed_at = int(upstream_http.ranges[path][1].removeprefix("bytes=").rstrip("-"))
    assert 0 < resumed_at <= 1024 * 1024
    assert metric("staffel_relay_upstream_resumes_total") >= 1
    # Two requests, yet one copy: the resumed request sent only the missing bytes.
    assert upstream_http.bytes_sent[path] == len(data)


async def test_waiting_vehicles_get_whole_blobs_when_the_upstream_dies_and_returns(
    relay_config: RelayConfig, upstream_http: UpstreamHTTP
) -> None:
    data = os.urandom(6 * 1024 * 1024)
    filename = upstream_http.add_blob(data, "ecu-engine-9.0.img")
    path = f"/image/targets/{filename}"
    upstream_http.chunk_delay = 0.01
    async with Relay.from_config(relay_config) as relay:
        url = f"{relay.addresses.http}{path}"
        async with aiohttp.ClientSession() as session:
            downloads = [asyncio.create_task(_read(session, url)) for _ in range(10)]
            await _until(lambda: upstream_http.bytes_sent[path] > 1024 * 1024, "1 MiB sent")
            await upstream_http.stop()  # the upstream process dies mid-transfer
            await asyncio.sleep(1.0)  # ... and stays away a while (connections refused)
            upstream_http.chunk_delay = 0.0
            await upstream_http.start()  # same port: the server came back
            bodies = await asyncio.gather(*downloads)
    assert all(hashlib.sha256(body).digest() == hashlib.sha256(data).digest() for body in bodies)
    assert upstream_http.bytes_sent[path] < 2 * len(data)


async def test_partial_blob_of_a_stopped_relay_is_resumed_by_the_next_one(
    relay_config: RelayConfig, upstream_http: UpstreamHTTP
) -> None:
    data = os.urandom(4 * 1024 * 1024)
    filename = upstream_http.add_blob(data, "ecu-radio-7.0.img")
    path = f"/image/targets/{filename}"
    upstream_http.chunk_delay = 0.01
    async with Relay.from_config(relay_config) as relay:
        url = f"{relay.addresses.http}{path}"
        async with aiohttp.ClientSession() as session:
            download = asyncio.create_task(_read(session, url))
            await _until(lambda: upstream_http.bytes_sent[path] > 1024 * 1024, "1 MiB sent")
            # The first relay stops mid-transfer; the vehicle's download breaks.
        download.cancel()
        await asyncio.gather(download, return_exceptions=True)
    partial = relay_config.cache_dir / "partial" / filename
    assert partial.stat().st_size > 0
    upstream_http.chunk_delay = 0.0
    async with Relay.from_config(relay_config) as relay, aiohttp.ClientSession() as session:
        assert await _read(session, f"{relay.addresses.http}{path}") == data
    assert upstream_http.ranges[path][-1].startswith("bytes=")
    assert not partial.exists()


async def test_least_recently_used_unpinned_blobs_are_evicted_within_the_budget(
    relay_config: RelayConfig, upstream_http: UpstreamHTTP
) -> None:
    size = 1024 * 1024
    blobs = [os.urandom(size) for _ in range(4)]
    names = [upstream_http.add_blob(blob, f"ecu-{i}.img") for i, blob in enumerate(blobs)]
    config = replace(relay_config, cache_budget_bytes=3 * size)
    cached = config.cache_dir / "blobs"
    async with Relay.from_config(config) as relay, aiohttp.ClientSession() as session:

        async def get(i: int) -> None:
            assert (
                await _read(session, f"{relay.addresses.http}/image/targets/{names[i]}")
                == (blobs[i])
            )

        relay.cache.pin([names[0][:64]])  # the staging plan needs blob 0
        for i in (0, 1, 2):
            await get(i)
        await get(1)  # blob 2 is now the least recently used unpinned blob
        await get(3)
        assert sorted(p.name for p in cached.iterdir()) == sorted([names[0], names[1], names[3]])
        await get(2)  # blob 1 is the least recently used unpinned one now
        assert sorted(p.name for p in cached.iterdir()) == sorted([names[0], names[2], names[3]])
    assert metric_of(relay, "staffel_relay_cache_evictions_total") == 2
    assert metric_of(relay, "staffel_relay_cache_bytes") == 3 * size


def metric_of(relay: Relay, name: str) -> float:
    """One unlabelled sample of a relay's metrics."""
    value = relay.metrics.registry.get_sample_value(name)
    assert value is not None, name
    return value
