"""The relay's /metrics and /healthz endpoints, read over HTTP like Prometheus would."""

from __future__ import annotations

from typing import TYPE_CHECKING

import aiohttp

from server.relay.app import Relay

if TYPE_CHECKING:
    from tests.server.relay.conftest import UpstreamHTTP


def _samples(text: str) -> dict[str, float]:
    samples: dict[str, float] = {}
    for line in text.splitlines():
        if line and not line.startswith("#"):
            name, value = line.rsplit(" ", 1)
            samples[name] = float(value)
    return samples


async def test_metrics_show_cache_hits_and_misses(
    relay: Relay, upstream_http: UpstreamHTTP
) -> None:
    filename = upstream_http.add_blob(b"x" * 1000, "ecu-door-1.0.0.img")
    base = relay.addresses.http
    async with aiohttp.ClientSession() as session:

        async def scrape() -> dict[str, float]:
            async with session.get(f"{base}/metrics") as response:
                assert response.status == 200
                assert response.headers["Content-Type"].startswith("text/plain")
                return _samples(await response.text())

        before = await scrape()
        assert before["staffel_relay_cache_hits_total"] == 0
        assert before["staffel_relay_cache_misses_total"] == 0
        for _ in range(3):
            async with session.get(f"{base}/image/targets/{filename}") as response:
                await response.read()
        after = await scrape()
    assert after["staffel_relay_cache_misses_total"] == 1
    assert after["staffel_relay_cache_hits_total"] == 2
    assert after["staffel_relay_bytes_fetched_total"] == 1000
    assert after["staffel_relay_bytes_served_total"] == 3000
    assert after["staffel_relay_upstream_errors_total"] == 0


async def test_healthz_answers_while_serving(relay: Relay) -> None:
    async with (
        aiohttp.ClientSession() as session,
        session.get(f"{relay.addresses.http}/healthz") as response,
    ):
        assert response.status == 200
