"""Test support for the vehicle client: real TUF repositories (Image and Director) signed
with real keys, and a recording ``VehicleService``."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from http.server import SimpleHTTPRequestHandler
from pathlib import Path
from typing import Any

import grpc
from securesystemslib.signer import CryptoSigner, Signer
from staffel.v1 import vehicle_pb2, vehicle_pb2_grpc
from tuf.api.metadata import (
    Metadata,
    MetaFile,
    Root,
    Snapshot,
    TargetFile,
    Targets,
    Timestamp,
)
from tuf.api.serialization.json import JSONSerializer

from client.uptane import DirectorMetadata

VIN = "WVWZZZ1KZ00000001"
PRIMARY_SERIAL = "gw-0001"
HARDWARE_ID = "gateway-x1"
FACTORY_IMAGE = b"factory image\n" * 100
ROLES = ("root", "targets", "snapshot", "timestamp")


def _expiry(days: int = 7) -> datetime:
    return (datetime.now(UTC) + timedelta(days=days)).replace(microsecond=0)


def _signed_bytes(signed: Any, signer: Signer) -> bytes:
    metadata = Metadata(signed)
    metadata.sign(signer)
    return bytes(metadata.to_bytes(JSONSerializer(compact=False)))


class _Repository:
    """One TUF repository: a key per top-level role and a consistent-snapshot root."""

    def __init__(self, metadata_dir: Path) -> None:
        self.metadata_dir = metadata_dir
        metadata_dir.mkdir(parents=True)
        self.signers = {role: CryptoSigner.generate_ed25519() for role in ROLES}
        root = Root(expires=_expiry(365), consistent_snapshot=True)
        for role, signer in self.signers.items():
            root.add_key(signer.public_key, role)
        self.root_bytes = _signed_bytes(root, self.signers["root"])
        (metadata_dir / "1.root.json").write_bytes(self.root_bytes)


class ImageRepository(_Repository):
    """The Image repository: what software exists."""

    def __init__(self, served_dir: Path) -> None:
        super().__init__(served_dir / "image" / "metadata")
        self.targets_dir = served_dir / "image" / "targets"
        self.targets_dir.mkdir(parents=True)
        self.targets: dict[str, TargetFile] = {}
        self.version = 0
        self.publish()

    def add_image(
        self, name: str, data: bytes, *, hardware_id: str = HARDWARE_ID, release_counter: int = 1
    ) -> TargetFile:
        """Store the blob, sign it into targets and publish a new snapshot."""
        target = TargetFile.from_data(name, data, ["sha256", "sha512"])
        version = name.rsplit("-", 1)[-1]
        target.unrecognized_fields["custom"] = {
            "name": name.rsplit("-", 1)[0],
            "version": version,
            "hardware_ids": [hardware_id],
            "release_counter": release_counter,
        }
        self.targets[name] = target
        self.store_blob(name, data, sha256=target.hashes["sha256"])
        self.publish()
        return target

    def store_blob(self, name: str, data: bytes, *, sha256: str) -> None:
        """Write (or overwrite) the blob the client fetches for ``name``."""
        (self.targets_dir / f"{sha256}.{name}").write_bytes(data)

    def publish(self) -> None:
        """Sign targets, snapshot and timestamp at the next version."""
        self.version += 1
        targets = Targets(version=self.version, expires=_expiry(), targets=dict(self.targets))
        (self.metadata_dir / f"{self.version}.targets.json").write_bytes(
            _signed_bytes(targets, self.signers["targets"])
        )
        snapshot = Snapshot(
            version=self.version,
            expires=_expiry(),
            meta={"targets.json": MetaFile(self.version)},
        )
        (self.metadata_dir / f"{self.version}.snapshot.json").write_bytes(
            _signed_bytes(snapshot, self.signers["snapshot"])
        )
        timestamp = Timestamp(
            version=self.version, expires=_expiry(), snapshot_meta=MetaFile(self.version)
        )
        (self.metadata_dir / "timestamp.json").write_bytes(
            _signed_bytes(timestamp, self.signers["timestamp"])
        )


class DirectorRepository(_Repository):
    """The Director: per-vehicle timestamp, snapshot and targets sharing one root."""

    def __init__(self, served_dir: Path) -> None:
        super().__init__(served_dir / "director" / "metadata")
        self.versions: dict[str, int] = {}

    def metadata_for(
        self,
        images: list[TargetFile],
        *,
        vin: str = VIN,
        serial: str = PRIMARY_SERIAL,
        hardware_id: str = HARDWARE_ID,
        expires: datetime | None = None,
    ) -> DirectorMetadata:
        """Sign this vehicle's Director metadata naming ``images`` for ECU ``serial``."""
        version = self.versions.get(vin, 0) + 1
        self.versions[vin] = version
        expires = expires or _expiry(1)
        director_targets = {}
        for image in images:
            target = TargetFile(image.length, dict(image.hashes), image.path)
            target.unrecognized_fields["custom"] = {"ecus": {serial: {"hardware_id": hardware_id}}}
            director_targets[image.path] = target
        targets = Targets(
            version=version,
            expires=expires,
            targets=director_targets,
            unrecognized_fields={"custom": {"vin": vin}},
        )
        snapshot = Snapshot(
            version=version, expires=expires, meta={"targets.json": MetaFile(version)}
        )
        timestamp = Timestamp(version=version, expires=expires, snapshot_meta=MetaFile(version))
        return DirectorMetadata(
            timestamp=_signed_bytes(timestamp, self.signers["timestamp"]),
            snapshot=_signed_bytes(snapshot, self.signers["snapshot"]),
            targets=_signed_bytes(targets, self.signers["targets"]),
        )


class QuietHandler(SimpleHTTPRequestHandler):
    """Serves the repositories' folder without logging every request."""

    def log_message(self, format: str, *args: Any) -> None:
        """Keep test output clean."""


@dataclass
class Repositories:
    """Both repositories, served over real HTTP on 127.0.0.1."""

    url: str
    image: ImageRepository
    director: DirectorRepository


@dataclass
class RecordingVehicleService(vehicle_pb2_grpc.VehicleServiceServicer):
    """A ``VehicleService`` that offers what the test sets and records what arrives."""

    response: vehicle_pb2.CheckInResponse = field(
        default_factory=lambda: vehicle_pb2.CheckInResponse(
            nothing_to_do=vehicle_pb2.NothingToDo(), next_poll_seconds=60
        )
    )
    check_ins: list[vehicle_pb2.CheckInRequest] = field(default_factory=list)
    events: list[vehicle_pb2.VehicleEvent] = field(default_factory=list)
    refuse_reports: bool = False

    def offer(self, assignment_id: str, director: DirectorMetadata) -> None:
        """Answer the next check-ins with an update offer."""
        self.response = vehicle_pb2.CheckInResponse(
            update=vehicle_pb2.UpdateOffer(
                assignment_id=assignment_id,
                director=vehicle_pb2.DirectorMetadata(
                    timestamp=director.timestamp,
                    snapshot=director.snapshot,
                    targets=director.targets,
                ),
            ),
            next_poll_seconds=30,
        )

    def CheckIn(  # noqa: N802 - gRPC method name
        self, request: vehicle_pb2.CheckInRequest, context: grpc.ServicerContext
    ) -> vehicle_pb2.CheckInResponse:
        """Record the check-in and answer with the configured response."""
        self.check_ins.append(request)
        return self.response

    def ReportEvents(  # noqa: N802 - gRPC method name
        self, request: vehicle_pb2.ReportEventsRequest, context: grpc.ServicerContext
    ) -> vehicle_pb2.ReportEventsResponse:
        """Record new events, counting resent ids as duplicates."""
        if self.refuse_reports:
            context.abort(grpc.StatusCode.UNAVAILABLE, "uplink down")
        seen = {event.event_id for event in self.events}
        fresh = [event for event in request.events if event.event_id not in seen]
        self.events.extend(fresh)
        return vehicle_pb2.ReportEventsResponse(
            accepted=len(fresh), duplicates=len(request.events) - len(fresh)
        )

    def kinds(self) -> list[str]:
        """Return the recorded event kinds without their prefix, in arrival order."""
        return [
            vehicle_pb2.EventKind.Name(event.kind).removeprefix("EVENT_KIND_")
            for event in self.events
        ]


@dataclass
class VehicleServer:
    """The recording service on a real gRPC server."""

    target: str
    service: RecordingVehicleService


@dataclass
class Vehicle:
    """A provisioned vehicle: pinned roots, state and slot folders, a config file."""

    config_path: Path
    state_dir: Path
    slots_dir: Path

    def slot(self, name: str) -> bytes:
        """Return the content of slot ``name``."""
        return (self.slots_dir / f"{name}.img").read_bytes()


def write_config(
    path: Path,
    *,
    grpc_target: str,
    repo_url: str,
    health_command: list[str],
    extra: str = "",
) -> None:
    """Write a client config next to ``image-root.json`` and ``director-root.json``."""
    command = ", ".join(f'"{part}"' for part in health_command)
    path.write_text(
        f"""
vin = "{VIN}"
grpc_target = "{grpc_target}"
repo_url = "{repo_url}"
state_dir = "state"
image_root = "image-root.json"
director_root = "director-root.json"
poll_interval_seconds = 60
network_timeout_seconds = 5
{extra}
[[ecus]]
serial = "{PRIMARY_SERIAL}"
hardware_id = "{HARDWARE_ID}"
primary = true

[slots]
backend = "file"
directory = "slots"
max_tries = 3

[health]
command = [{command}]
timeout_seconds = 10
""",
        encoding="utf-8",
    )


def image_bytes(size: int, seed: bytes = b"app") -> bytes:
    """Return ``size`` deterministic, non-repeating-looking bytes."""
    out = bytearray()
    counter = 0
    while len(out) < size:
        out += hashlib.sha256(seed + counter.to_bytes(8, "big")).digest()
        counter += 1
    return bytes(out[:size])


def write_vehicle(home: Path, repositories: Repositories, grpc_target: str) -> Vehicle:
    """Provision a vehicle in ``home``: pinned roots, factory image in slot A, config."""
    home.mkdir()
    (home / "image-root.json").write_bytes(repositories.image.root_bytes)
    (home / "director-root.json").write_bytes(repositories.director.root_bytes)
    (home / "slots").mkdir()
    (home / "slots" / "A.img").write_bytes(FACTORY_IMAGE)
    write_config(
        home / "client.toml",
        grpc_target=grpc_target,
        repo_url=repositories.url,
        health_command=["/bin/sh", "-c", "exit 0"],
    )
    return Vehicle(
        config_path=home / "client.toml", state_dir=home / "state", slots_dir=home / "slots"
    )
