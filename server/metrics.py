"""Prometheus metrics of the central server (one registry per process).

Counters and histograms are kept by each process (Prometheus sums them over replicas);
campaign, assignment and wave gauges are read from the shared store at scrape time by
``server.observability.fleetstate``, so every replica reports the same fleet.
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram


class ServerMetrics:
    """The series the server exports at ``/metrics``."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry or CollectorRegistry()
        self.rpc_latency = Histogram(
            "staffel_grpc_server_handling_seconds",
            "Time to handle a gRPC call, by method and status code.",
            ["method", "code"],
            registry=self.registry,
            buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 10),
        )
        self.checkins = Counter(
            "staffel_checkins_total",
            "Vehicle check-ins, by outcome (nothing_to_do, update).",
            ["outcome"],
            registry=self.registry,
        )
        self.heartbeats = Counter(
            "staffel_checkin_heartbeats_total",
            "Heartbeat check-ins (a hash-chain link instead of a signed manifest), by "
            "outcome: accepted, fell_back (this process holds no chain of the vehicle, "
            "or it is used up: the vehicle signs a manifest), refused (a wrong or "
            "replayed link, ECUs that differ from the signed inventory, malformed).",
            ["outcome"],
            registry=self.registry,
        )
        self.vehicle_work_moved = Counter(
            "staffel_vehicle_work_moved_to_thread_total",
            "Vehicles' database steps begun on the event loop (SQLite) that found another "
            "connection's write lock taken and were run in the vehicles' thread instead.",
            registry=self.registry,
        )
        self.checkin_read_batch = Histogram(
            "staffel_checkin_read_batch_size",
            "Check-ins whose reads went to the database in one statement (PostgreSQL: what "
            "concurrent check-ins ask while a read is in flight goes together in the next).",
            buckets=(1, 2, 4, 8, 16, 32, 64, 128, 256),
            registry=self.registry,
        )
        self.vehicle_events = Counter(
            "staffel_vehicle_events_total",
            "Vehicle events recorded, by kind; resends are not counted.",
            ["kind"],
            registry=self.registry,
        )
        self.images_published = Counter(
            "staffel_images_published_total",
            "Images published into the Image repository.",
            registry=self.registry,
        )
        self.signing_latency = Histogram(
            "staffel_signing_seconds",
            "Time to sign one metadata file, by repository (image, director) and role.",
            ["repository", "role"],
            registry=self.registry,
            buckets=(0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1),
        )
        self.engine_leader = Gauge(
            "staffel_engine_leader",
            "1 while this replica holds the campaign-engine lock and runs its steps, else 0.",
            registry=self.registry,
        )
        self.director_presigned = Counter(
            "staffel_director_presigned_total",
            "Vehicles' Director metadata signed ahead of their check-in by the pre-signer.",
            registry=self.registry,
        )
        self.director_presign_waiting = Gauge(
            "staffel_director_presign_waiting",
            "Pending assignments the pre-signer found without matching Director metadata "
            "and has not signed yet (its last round; 0 when it left none).",
            registry=self.registry,
        )
        self.director_presign_rounds = Counter(
            "staffel_director_presign_rounds_total",
            "Pre-signing rounds that scanned the pending assignments.",
            registry=self.registry,
        )
        self.image_bytes_received = Counter(
            "staffel_image_bytes_received_total",
            "Bytes of images received by UploadImage.",
            registry=self.registry,
        )
