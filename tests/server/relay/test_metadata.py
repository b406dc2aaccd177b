"""TUF metadata through the relay: versioned files kept, timestamp.json always fresh."""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

import aiohttp

from server.relay.app import Relay
from server.relay.http import IMMUTABLE, NO_CACHE

if TYPE_CHECKING:
    from tests.server.relay.conftest import UpstreamHTTP

ROOT = b'{"signed": {"_type": "root", "version": 1}, "signatures": []}'
TIMESTAMP_V1 = b'{"signed": {"_type": "timestamp", "version": 1}, "signatures": []}'
TIMESTAMP_V2 = b'{"signed": {"_type": "timestamp", "version": 2}, "signatures": []}'


async def _get(url: str) -> tuple[int, bytes, dict[str, str]]:
    async with aiohttp.ClientSession() as session, session.get(url) as response:
        return response.status, await response.read(), dict(response.headers)


async def test_versioned_metadata_is_fetched_once_and_immutable(
    relay: Relay, upstream_http: UpstreamHTTP, metric: Callable[..., float]
) -> None:
    upstream_http.files["/image/metadata/1.root.json"] = ROOT
    upstream_http.files["/image/metadata/4.targets.json"] = b'{"targets": 4}'
    upstream_http.files["/image/metadata/7.bins-0a.json"] = b'{"bin": "0a"}'
    for _ in range(3):
        for filename, body in (
            ("1.root.json", ROOT),
            ("4.targets.json", b'{"targets": 4}'),
            ("7.bins-0a.json", b'{"bin": "0a"}'),
        ):
            status, received, headers = await _get(
                f"{relay.addresses.http}/image/metadata/{filename}"
            )
            assert (status, received) == (200, body)
            assert headers["Cache-Control"] == IMMUTABLE
            assert headers["Content-Type"] == "application/json"
    assert upstream_http.requests["/image/metadata/1.root.json"] == 1
    assert upstream_http.requests["/image/metadata/4.targets.json"] == 1
    assert upstream_http.requests["/image/metadata/7.bins-0a.json"] == 1
    assert (relay.config.cache_dir / "metadata" / "image" / "1.root.json").read_bytes() == ROOT
    assert metric("staffel_relay_cache_misses_total") == 3
    assert metric("staffel_relay_cache_hits_total") == 6


async def test_director_root_chain_is_cached_and_nothing_else_is_served(
    relay: Relay, upstream_http: UpstreamHTTP
) -> None:
    upstream_http.files["/director/metadata/1.root.json"] = ROOT
    for _ in range(2):
        status, body, _headers = await _get(f"{relay.addresses.http}/director/metadata/1.root.json")
        assert (status, body) == (200, ROOT)
    assert upstream_http.requests["/director/metadata/1.root.json"] == 1
    for filename in ("1.targets.json", "timestamp.json", "root.json"):
        status, _body, _headers = await _get(f"{relay.addresses.http}/director/metadata/{filename}")
        assert status == 400, filename
    assert upstream_http.requests.keys() == {"/director/metadata/1.root.json"}


async def test_next_root_not_yet_published_is_404_and_not_cached(
    relay: Relay, upstream_http: UpstreamHTTP
) -> None:
    url = f"{relay.addresses.http}/image/metadata/2.root.json"
    assert (await _get(url))[0] == 404
    upstream_http.files["/image/metadata/2.root.json"] = ROOT
    status, body, _headers = await _get(url)
    assert (status, body) == (200, ROOT)
    assert upstream_http.requests["/image/metadata/2.root.json"] == 2


async def test_next_root_with_the_upstream_down_is_404_at_once_and_not_cached(
    relay: Relay, upstream_http: UpstreamHTTP
) -> None:
    # Through an outage the site's vehicles keep their trusted root (the end of the chain).
    await upstream_http.stop()
    for repository in ("image", "director"):
        status, body, _headers = await _get(
            f"{relay.addresses.http}/{repository}/metadata/2.root.json"
        )
        assert status == 404, repository
        assert b"upstream is unreachable" in body
    await upstream_http.start()
    upstream_http.files["/image/metadata/2.root.json"] = ROOT
    status, body, _headers = await _get(f"{relay.addresses.http}/image/metadata/2.root.json")
    assert (status, body) == (200, ROOT)


async def test_timestamp_is_refetched_on_every_request(
    relay: Relay, upstream_http: UpstreamHTTP
) -> None:
    url = f"{relay.addresses.http}/image/metadata/timestamp.json"
    upstream_http.files["/image/metadata/timestamp.json"] = TIMESTAMP_V1
    status, body, headers = await _get(url)
    assert (status, body) == (200, TIMESTAMP_V1)
    assert headers["Cache-Control"] == NO_CACHE
    upstream_http.files["/image/metadata/timestamp.json"] = TIMESTAMP_V2
    for _ in range(2):
        status, body, _headers = await _get(url)
        assert (status, body) == (200, TIMESTAMP_V2)
    assert upstream_http.requests["/image/metadata/timestamp.json"] == 3


async def test_timestamp_is_served_from_cache_while_the_upstream_is_down(
    relay: Relay, upstream_http: UpstreamHTTP, metric: Callable[..., float]
) -> None:
    url = f"{relay.addresses.http}/image/metadata/timestamp.json"
    upstream_http.files["/image/metadata/timestamp.json"] = TIMESTAMP_V1
    assert (await _get(url))[:2] == (200, TIMESTAMP_V1)
    await upstream_http.stop()
    status, body, headers = await _get(url)
    assert (status, body) == (200, TIMESTAMP_V1)
    assert headers["Cache-Control"] == NO_CACHE
    assert metric("staffel_relay_upstream_errors_total") == 1
    assert metric("staffel_relay_cache_hits_total") == 1


async def test_timestamp_with_upstream_down_and_nothing_cached_is_502(
    relay: Relay, upstream_http: UpstreamHTTP
) -> None:
    await upstream_http.stop()
    status, body, _headers = await _get(f"{relay.addresses.http}/image/metadata/timestamp.json")
    assert status == 502
    assert b"cannot fetch" in body


async def test_missing_timestamp_is_404_and_not_cached(
    relay: Relay, upstream_http: UpstreamHTTP
) -> None:
    status, _body, _headers = await _get(f"{relay.addresses.http}/image/metadata/timestamp.json")
    assert status == 404
    assert not (relay.config.cache_dir / "metadata" / "image" / "timestamp.json").exists()


async def test_malformed_metadata_names_are_400(relay: Relay, upstream_http: UpstreamHTTP) -> None:
    for filename in ("0.root.json", "root.json", "1.root.yaml", "1..json", "-1.root.json"):
        status, body, _headers = await _get(f"{relay.addresses.http}/image/metadata/{filename}")
        assert status == 400, filename
        assert b"expected" in body
    assert sum(upstream_http.requests.values()) == 0
