"""The gRPC link to the relay (or central server): check-in and event reports.

Protobuf and grpc stay on this side of the boundary; the agent sees plain dataclasses
and :class:`~client.errors.ServerError`.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime

import grpc
from google.protobuf.timestamp_pb2 import Timestamp
from staffel.v1 import vehicle_pb2, vehicle_pb2_grpc

from client.errors import HeartbeatRefusedError, ServerError
from client.journal.events import VehicleEvent
from client.uptane.fetcher import DirectorMetadata

NONCE_BYTES = 32
# What the server answers to a heartbeat it cannot or will not take; a signed manifest follows.
_HEARTBEAT_REFUSALS = frozenset(
    {
        grpc.StatusCode.FAILED_PRECONDITION,
        grpc.StatusCode.PERMISSION_DENIED,
        grpc.StatusCode.INVALID_ARGUMENT,
    }
)


@dataclass(frozen=True)
class EcuReport:
    """What one ECU reports at check-in.

    Attributes:
        serial: The ECU's serial.
        hardware_id: The ECU's hardware id.
        installed_sha256: SHA-256 (hex) of the image in its active slot, empty if unknown.
        primary: Whether it is the Uptane primary.
    """

    serial: str
    hardware_id: str
    installed_sha256: str
    primary: bool


@dataclass(frozen=True)
class UpdateOffer:
    """An update the server offers.

    Attributes:
        assignment_id: The assignment the vehicle's events belong to.
        director: The vehicle's signed Director metadata.
        install_not_before: The maintenance window opens (None: no window).
        install_not_after: The maintenance window closes (None: no window).
    """

    assignment_id: str
    director: DirectorMetadata
    install_not_before: datetime | None = None
    install_not_after: datetime | None = None


@dataclass(frozen=True)
class CheckInAnswer:
    """The server's answer to a check-in.

    Attributes:
        offer: The update offered, None when there is nothing to do.
        next_poll_seconds: When to check in next (0 when the server names no interval).
        heartbeat_chain_held: The server holds the heartbeat chain of the manifest sent
            (or of the heartbeat it took): the next check-ins may send heartbeats.
    """

    offer: UpdateOffer | None
    next_poll_seconds: int
    heartbeat_chain_held: bool = False


class VehicleLink:
    """A ``VehicleService`` client over one gRPC channel."""

    def __init__(
        self,
        target: str,
        *,
        timeout_seconds: float,
        credentials: grpc.ChannelCredentials | None = None,
    ) -> None:
        """Open a channel to ``target`` (``host:port``); calls time out after the timeout.

        Args:
            target: The relay's (or server's) gRPC endpoint.
            timeout_seconds: The deadline of each call.
            credentials: TLS credentials (the fleet certificate, see ``client.tls``);
                None for a plain channel.
        """
        self._target = target
        self._timeout = timeout_seconds
        self._channel = (
            grpc.secure_channel(target, credentials)
            if credentials is not None
            else grpc.insecure_channel(target)
        )
        self._stub = vehicle_pb2_grpc.VehicleServiceStub(self._channel)

    def close(self) -> None:
        """Close the channel."""
        self._channel.close()

    def check_in(
        self,
        vin: str,
        ecus: Sequence[EcuReport],
        *,
        manifest: bytes = b"",
        heartbeat: bytes = b"",
    ) -> CheckInAnswer:
        """Report what the ECUs run, with a fresh nonce, and learn whether there is work.

        Args:
            vin: The vehicle.
            ecus: What each ECU runs.
            manifest: The vehicle version manifest signed for this check-in.
            heartbeat: Instead of a manifest: the next link of the heartbeat chain.

        Raises:
            HeartbeatRefusedError: The server did not take the heartbeat.
            ServerError: The call failed.
        """
        request = vehicle_pb2.CheckInRequest(
            vin=vin,
            ecus=[
                vehicle_pb2.EcuVersion(
                    serial=ecu.serial,
                    hardware_id=ecu.hardware_id,
                    installed_sha256=ecu.installed_sha256,
                    primary=ecu.primary,
                )
                for ecu in ecus
            ],
            nonce=os.urandom(NONCE_BYTES),
            manifest=manifest,
            heartbeat=heartbeat,
        )
        try:
            response = self._stub.CheckIn(request, timeout=self._timeout)
        except grpc.RpcError as exc:
            code = getattr(exc, "code", None)
            if heartbeat and callable(code) and code() in _HEARTBEAT_REFUSALS:
                raise HeartbeatRefusedError(
                    f"heartbeat check-in at {self._target} refused: {_describe(exc)}"
                ) from exc
            raise ServerError(f"check-in at {self._target} failed: {_describe(exc)}") from exc
        offer = None
        if response.WhichOneof("outcome") == "update":
            director = response.update.director
            offer = UpdateOffer(
                assignment_id=response.update.assignment_id,
                director=DirectorMetadata(
                    timestamp=director.timestamp,
                    snapshot=director.snapshot,
                    targets=director.targets,
                ),
                install_not_before=_window_edge(response.update, "install_not_before"),
                install_not_after=_window_edge(response.update, "install_not_after"),
            )
        return CheckInAnswer(
            offer=offer,
            next_poll_seconds=response.next_poll_seconds,
            heartbeat_chain_held=response.heartbeat_chain_held,
        )

    def report_events(self, vin: str, events: Sequence[VehicleEvent]) -> None:
        """Send ``events`` in order; returns only when the server acknowledged every one.

        Raises:
            ServerError: The call failed, or the server acknowledged fewer events than sent.
        """
        request = vehicle_pb2.ReportEventsRequest(
            vin=vin, events=[_to_proto(event) for event in events]
        )
        try:
            response = self._stub.ReportEvents(request, timeout=self._timeout)
        except grpc.RpcError as exc:
            raise ServerError(f"event report to {self._target} failed: {_describe(exc)}") from exc
        acknowledged = response.accepted + response.duplicates
        if acknowledged != len(events):
            raise ServerError(
                f"{self._target} acknowledged {acknowledged} of {len(events)} events; "
                "they stay queued"
            )


def _window_edge(offer: vehicle_pb2.UpdateOffer, field: str) -> datetime | None:
    if not offer.HasField(field):  # type: ignore[arg-type]
        return None
    edge: Timestamp = getattr(offer, field)
    return edge.ToDatetime(tzinfo=UTC)


def _to_proto(event: VehicleEvent) -> vehicle_pb2.VehicleEvent:
    occurred_at = Timestamp()
    occurred_at.FromDatetime(event.occurred_at)
    return vehicle_pb2.VehicleEvent(
        event_id=event.event_id,
        assignment_id=event.assignment_id,
        kind=vehicle_pb2.EventKind.Value(f"EVENT_KIND_{event.kind.value}"),
        failure_type=vehicle_pb2.FailureType.Value(f"FAILURE_TYPE_{event.failure_type.value}"),
        detail=event.detail,
        slot=event.slot,
        occurred_at=occurred_at,
    )


def _describe(exc: grpc.RpcError) -> str:
    # The RpcError a stub raises is also a grpc.Call; the stubs cannot express that.
    code, details = getattr(exc, "code", None), getattr(exc, "details", None)
    if callable(code) and callable(details):
        return f"{code().name}: {details()}"
    return str(exc)
