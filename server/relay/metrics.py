"""Prometheus metrics of one relay, kept in the relay's own registry."""

from __future__ import annotations

from dataclasses import dataclass

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    generate_latest,
)


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
        upstream_resumes: Upstream transfers resumed with a Range after an interruption.
        cache_corrupt: Cached blobs found not to match their hash (deleted, fetched again).
        cache_evictions: Blobs evicted to stay within the disk budget.
        cache_bytes: Bytes of complete blobs in the cache.
        queue_depth: Vehicle events waiting at the relay to be forwarded upstream.
        events_forwarded: Vehicle events the upstream acknowledged.
        events_rejected: Vehicle events the upstream refused for good (kept aside, logged).
        checkins_from_cache: Check-ins answered from the last upstream answer (uplink down).
        refused: Requests refused by the site policy (wrong site, VIN not the certificate's).
        staging_ready: 1 when every blob of the current staging plan is cached, else 0.
        staging_blobs: Blobs of the current staging plan, by state (total, cached).
    """

    registry: CollectorRegistry
    cache_hits: Counter
    cache_misses: Counter
    bytes_served: Counter
    bytes_fetched: Counter
    upstream_errors: Counter
    forwarded_rpcs: Counter
    upstream_resumes: Counter
    cache_corrupt: Counter
    cache_evictions: Counter
    cache_bytes: Gauge
    queue_depth: Gauge
    events_forwarded: Counter
    events_rejected: Counter
    checkins_from_cache: Counter
    refused: Counter
    staging_ready: Gauge
    staging_blobs: Gauge

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
            upstream_resumes=Counter(
                "staffel_relay_upstream_resumes",
                "Upstream transfers resumed with a Range request after an interruption.",
                registry=registry,
            ),
            cache_corrupt=Counter(
                "staffel_relay_cache_corrupt",
                "Cached blobs whose bytes did not match their SHA-256 (deleted, refetched).",
                registry=registry,
            ),
            cache_evictions=Counter(
                "staffel_relay_cache_evictions",
                "Blobs evicted (least recently used first) to stay within the disk budget.",
                registry=registry,
            ),
            cache_bytes=Gauge(
                "staffel_relay_cache_bytes", "Bytes of complete blobs cached.", registry=registry
            ),
            queue_depth=Gauge(
                "staffel_relay_queue_depth",
                "Vehicle events queued at the relay, waiting for the uplink.",
                registry=registry,
            ),
            events_forwarded=Counter(
                "staffel_relay_events_forwarded",
                "Queued vehicle events acknowledged by the upstream.",
                registry=registry,
            ),
            events_rejected=Counter(
                "staffel_relay_events_rejected",
                "Queued vehicle events the upstream refused for good (kept aside, logged).",
                registry=registry,
            ),
            checkins_from_cache=Counter(
                "staffel_relay_checkins_from_cache",
                "Check-ins answered with the vehicle's last upstream answer (uplink down).",
                registry=registry,
            ),
            refused=Counter(
                "staffel_relay_refused",
                "Requests refused: no valid fleet certificate, other site, or foreign VIN.",
                ["reason"],
                registry=registry,
            ),
            staging_ready=Gauge(
                "staffel_relay_staging_ready",
                "1 when every blob of the current staging plan is cached, else 0.",
                registry=registry,
            ),
            staging_blobs=Gauge(
                "staffel_relay_staging_blobs",
                "Blobs of the current staging plan, by state.",
                ["state"],
                registry=registry,
            ),
        )

    def render(self) -> tuple[bytes, str]:
        """The registry in the Prometheus text format, with its content type."""
        return generate_latest(self.registry), CONTENT_TYPE_LATEST
