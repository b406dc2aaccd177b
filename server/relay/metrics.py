"""Prometheus metrics of one relay, kept in the relay's own registry."""

from __future__ import annotations

from dataclasses import dataclass

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, generate_latest


@dataclass(frozen=True, kw_only=True)
class RelayMetrics:
    """The relay's counters; one instance per relay, so tests can run several relays.

    Attributes:
        registry: The registry that ``/metrics`` renders.
        cache_hits: Requests answered from the cache (including stale ``timestamp.json``).
        cache_misses: Requests that needed an upstream fetch.
        bytes_served: Body bytes sent to vehicles for metadata and blobs.
        bytes_fetched: Body bytes received from the upstream.
        upstream_errors: Upstream HTTP fetches or gRPC calls that failed (not 404s).
        forwarded_rpcs: gRPC calls forwarded upstream, by method.
    """

    registry: CollectorRegistry
    cache_hits: Counter
    cache_misses: Counter
    bytes_served: Counter
    bytes_fetched: Counter
    upstream_errors: Counter
    forwarded_rpcs: Counter

    @classmethod
    def create(cls) -> RelayMetrics:
        """Makes a fresh registry holding every relay counter at zero."""
        registry = CollectorRegistry()
        return cls(
            registry=registry,
            cache_hits=Counter(
                "staffel_relay_cache_hits",
                "Requests answered from the relay cache.",
                registry=registry,
            ),
            cache_misses=Counter(
                "staffel_relay_cache_misses",
                "Requests that needed a fetch from the upstream.",
                registry=registry,
            ),
            bytes_served=Counter(
                "staffel_relay_bytes_served",
                "Body bytes of metadata and blobs sent to vehicles.",
                registry=registry,
            ),
            bytes_fetched=Counter(
                "staffel_relay_bytes_fetched",
                "Body bytes of metadata and blobs received from the upstream.",
                registry=registry,
            ),
            upstream_errors=Counter(
                "staffel_relay_upstream_errors",
                "Upstream fetches and calls that failed (404 excluded).",
                registry=registry,
            ),
            forwarded_rpcs=Counter(
                "staffel_relay_forwarded_rpcs",
                "Vehicle gRPC calls forwarded to the upstream.",
                ["method"],
                registry=registry,
            ),
        )

    def render(self) -> tuple[bytes, str]:
        """The registry in the Prometheus text format, with its content type."""
        return generate_latest(self.registry), CONTENT_TYPE_LATEST
